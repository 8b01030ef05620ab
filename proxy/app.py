"""Wiring: settings -> rules, metrics, enforcement and the listening server."""
from __future__ import annotations

import asyncio
import logging

from proxy.config import Settings, parse_hostport
from proxy.metrics import Metrics, MetricsServer
from proxy.server import ProxyServer

log = logging.getLogger("optimist")


class ProxyApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listen = settings.listen_endpoint
        self.upstream = settings.upstream_endpoint
        self.metrics = Metrics()
        self.enforcement = None
        if settings.rules:
            from proxy.enforcement import Enforcement
            self.enforcement = Enforcement.from_settings(settings, self.metrics)
        self.server = ProxyServer(
            self.listen, self.upstream,
            enforcer_factory=self.enforcement.enforcer_for if self.enforcement else None,
            drain_timeout=settings.drain_timeout, metrics=self.metrics)
        self.metrics_server = None

    async def upstream_ready(self) -> tuple[bool, str]:
        target = self.upstream
        try:
            if target.unix_socket:
                conn = asyncio.open_unix_connection(f"{target.unix_socket}/.s.PGSQL.{target.port}")
            else:
                conn = asyncio.open_connection(target.host, target.port)
            _, writer = await asyncio.wait_for(conn, 2.0)
            writer.close()
        except (OSError, asyncio.TimeoutError) as exc:
            return False, f"upstream {target} unreachable: {exc or 'timeout'}"
        return True, "ready"

    def _before_scrape(self) -> None:
        if self.enforcement is not None:
            budget = self.enforcement.budget
            self.metrics.snapshot_entries.set(budget.used)
            self.metrics.snapshot_evictions.set(budget.evictions)
            cache = self.enforcement.cache
            self.metrics.rewrite_cache.labels("hit")._value.set(cache.hits)
            self.metrics.rewrite_cache.labels("miss")._value.set(cache.misses)

    async def run(self, on_ready=None) -> None:
        await self.server.start()
        if self.enforcement is not None:
            self.enforcement.start_watching()
        if self.settings.metrics:
            endpoint = parse_hostport(self.settings.metrics, 9187)
            self.metrics_server = MetricsServer(self.metrics, self.upstream_ready,
                                                self._before_scrape)
            await self.metrics_server.start(endpoint.host, endpoint.port)
            log.info("metrics on http://%s:%d/metrics", endpoint.host, endpoint.port)
        log.info("optimist listening on %s, forwarding to %s", self.listen, self.upstream)
        log.info("connect with: psql \"postgresql://postgres@%s:%d/postgres\"",
                 self.listen.host, self.listen.port)
        if on_ready is not None:
            on_ready(self)
        await self.server.serve_until_stopped()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        log.info("optimist stopped")
