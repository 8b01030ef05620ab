"""Wiring: settings -> rules, metrics, locking and the listening server."""

from __future__ import annotations

import asyncio
import logging
import signal

from proxy import build
from proxy.config import Settings, cannot_listen, parse_hostport
from proxy.http_endpoint import MetricsServer
from proxy.metrics import Metrics
from proxy.server import ProxyServer
from proxy.upstream_probe import readiness, upstream_ready

log = logging.getLogger("optimist")


class ProxyApp:
    """One proxy process. `serve_metrics=False` for a worker whose supervisor serves them."""

    def __init__(
        self, settings: Settings, *, serve_metrics: bool = True, reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.listen = settings.listen_endpoint
        self.upstream = settings.upstream_endpoint
        self.serve_metrics = serve_metrics
        self.reuse_port = reuse_port
        self.metrics = Metrics()
        self.locking = None
        if settings.rules:
            from proxy.locking import LockingService

            self.locking = LockingService.from_settings(settings, self.metrics)
        self.server = ProxyServer(
            self.listen,
            self.upstream,  # type: ignore[arg-type]  # serve set one (embedded or given) first
            locking_for=self.locking.locking_for if self.locking else None,
            drain_timeout=settings.drain_timeout,
            metrics=self.metrics,
            limits=settings,
        )
        self.metrics_server: MetricsServer | None = None
        if settings.admin_users:
            from proxy.admin.gate import AdminGate
            from proxy.admin.operations import ProxyOperations

            self.server.admin = AdminGate(
                settings.admin_database,
                settings.admin_auth_database,
                frozenset(settings.admin_users),
                ProxyOperations(self),
            )

    def reload(self, reason: str) -> None:
        """SIGHUP: rules and TLS certificates, each kept as it was if its new version is bad."""
        if self.locking is not None:
            self.locking.reload(reason)
        self.server.load_tls()

    def _before_scrape(self) -> None:
        self.metrics.publish()
        if self.locking is not None:
            self.metrics.sample_state(self.locking.budget, self.locking.cache)

    async def _sample(self) -> None:
        """Once a second: copy locking counters into metrics and reload changed rule files;
        every 5 s: probe the upstream, so optimist_upstream_up also moves when no client is
        connecting."""
        tick = 0
        while True:
            self._before_scrape()
            if self.locking is not None and self.locking.rules_changed():
                self.locking.reload("file change")
            if tick % 5 == 0:
                ok, _ = await upstream_ready(self.upstream)
                self.server.set_upstream_reachable(ok)
            tick += 1
            await asyncio.sleep(1.0)

    async def run(self, on_ready=None) -> None:
        # the metrics port first: a failure then leaves nothing listening behind it
        if self.settings.metrics and self.serve_metrics:
            endpoint = parse_hostport(self.settings.metrics, 9187)
            self.metrics_server = MetricsServer(
                self.metrics.registry,
                lambda: readiness(self.upstream, plain_relay=self.locking is None),
                self._before_scrape,
            )
            try:
                await self.metrics_server.start(endpoint.host, endpoint.port)
            except OSError as exc:
                raise cannot_listen(endpoint, exc, "--metrics") from None
        try:
            await self.server.start(reuse_port=self.reuse_port)
        except OSError as exc:
            if self.metrics_server is not None:
                await self.metrics_server.close()
            raise cannot_listen(self.listen, exc, "--listen") from None
        if self.metrics_server is not None:
            log.info("metrics on http://%s:%d/metrics", endpoint.host, endpoint.port)
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        except (NotImplementedError, RuntimeError):
            pass
        sampler = asyncio.get_running_loop().create_task(self._sample())
        log.info(
            "optimist listening on %s, forwarding to %s (%s)", self.listen, self.upstream, build()
        )
        log.info(
            "connect with: psql \"postgresql://postgres@%s:%d/postgres\"",
            self.listen.host,
            self.listen.port,
        )
        if on_ready is not None:
            on_ready(self)
        await self.server.serve_until_stopped()
        sampler.cancel()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        log.info("optimist stopped")
