"""Wiring: settings -> rules, metrics, enforcement and the listening server."""
from __future__ import annotations

import asyncio
import logging

from proxy.config import Settings
from proxy.server import ProxyServer

log = logging.getLogger("optimist")


class ProxyApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listen = settings.listen_endpoint
        self.upstream = settings.upstream_endpoint
        self.enforcement = None
        if settings.rules:
            from proxy.enforcement import Enforcement
            self.enforcement = Enforcement.from_settings(settings)
        self.server = ProxyServer(
            self.listen, self.upstream,
            enforcer_factory=self.enforcement.enforcer_for if self.enforcement else None,
            drain_timeout=settings.drain_timeout)

    async def run(self, on_ready=None) -> None:
        await self.server.start()
        if self.enforcement is not None:
            self.enforcement.start_watching()
        log.info("optimist listening on %s, forwarding to %s", self.listen, self.upstream)
        log.info("connect with: psql \"postgresql://postgres@%s:%d/postgres\"",
                 self.listen.host, self.listen.port)
        if on_ready is not None:
            on_ready(self)
        await self.server.serve_until_stopped()
        log.info("optimist stopped")
