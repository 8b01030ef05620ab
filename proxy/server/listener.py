"""ProxyServer: accept clients (one Relay each), enforce the connection limit and the
authentication/idle/query timeouts, drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.config import ConfigError, Endpoint, Settings
from proxy.server.cancel import cancel_packet, send_cancel
from proxy.server.relay import ClientProtocol, Relay
from proxy.session.info import SessionInfo
from proxy.session.machine import Locking
from proxy.wire.startup import CancelRequest

if TYPE_CHECKING:
    from proxy.admin.gate import AdminGate

log = logging.getLogger("optimist.server")


class ProxyServer:
    def __init__(
        self,
        listen: Endpoint,
        upstream: Endpoint,
        *,
        locking_for: Callable[[SessionInfo], Locking] | None = None,
        drain_timeout: float = 30.0,
        metrics=None,
        limits: Settings | None = None,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.limits = limits or Settings()
        self.server: asyncio.AbstractServer | None = None
        self.bytes_tally = metrics.bytes_tally if metrics else None
        self.client_tls: ssl.SSLContext | None = None
        self.tls_required = False
        self.upstream_tls: ssl.SSLContext | None = None
        self.upstream_tls_mode = "disable"
        self.load_tls()
        # a session's locking logic, given what it knows of its connection (None: no rules)
        self.locking_for = locking_for
        self.drain_timeout = drain_timeout
        self.metrics = metrics
        self.relays: set[Relay] = set()
        self.tasks: set[asyncio.Task] = set()
        self.upstream_reachable = True
        self.stopping = asyncio.Event()
        # the admin console (proxy.admin.gate.AdminGate), None when disabled
        self.admin: AdminGate | None = None
        # PAUSE: relays holding a client's next transaction until RESUME
        self.paused = False
        self.paused_relays: set[Relay] = set()

    def load_tls(self) -> bool:
        """(Re)load certificates; on failure the contexts in force stay (SIGHUP reloads)."""
        from proxy.tls import client_context, upstream_context

        limits = self.limits
        try:
            client = None
            if limits.client_tls != "disable":
                client = client_context(limits.tls_cert, limits.tls_key)
            upstream = upstream_context(limits.upstream_tls, limits.upstream_tls_ca)
        except ConfigError as exc:
            if self.server is None:
                raise
            log.error("TLS reload refused, keeping the certificates in force: %s", exc)
            return False
        self.client_tls = client
        self.tls_required = limits.client_tls == "require"
        self.upstream_tls = upstream
        self.upstream_tls_mode = limits.upstream_tls
        return True

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def relay_opened(self, relay: Relay) -> None:
        self.relays.add(relay)
        if self.metrics:
            self.metrics.client_connected()

    def relay_closed(self, relay: Relay) -> None:
        self.paused_relays.discard(relay)
        if relay in self.relays:
            self.relays.discard(relay)
            if self.metrics:
                self.metrics.client_disconnected()

    def set_upstream_reachable(self, ok: bool) -> None:
        self.upstream_reachable = ok
        if self.metrics:
            self.metrics.upstream_up.set(1 if ok else 0)

    def server_connected(self) -> None:
        if self.metrics:
            self.metrics.server_connections.inc()
            self.metrics.server_connections_total.inc()

    def server_disconnected(self) -> None:
        if self.metrics:
            self.metrics.server_connections.dec()

    def observe_latency(self, seconds: float) -> None:
        if self.metrics:
            self.metrics.query_duration.observe(seconds)

    # ---------------------------------------------------------------- PAUSE / RESUME

    def pause(self) -> None:
        if not self.paused:
            log.info("paused: new transactions wait until RESUME")
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            log.info("resumed: %d held session(s) go on", len(self.paused_relays))
        self.paused = False
        waiting, self.paused_relays = self.paused_relays, set()
        for relay in waiting:
            relay.release_paused()

    # ---------------------------------------------------------------- cancel

    def forward_cancel(self, request: CancelRequest) -> None:
        """A client's CancelRequest, unchanged (see proxy.server.cancel)."""
        self.spawn(send_cancel(self.upstream, request.raw))

    def cancel_backend(self, pid: int, secret: bytes | None) -> None:
        """Cancel on the proxy's own behalf: a client gone mid-query, query_timeout."""
        if secret is None:
            return
        self.spawn(send_cancel(self.upstream, cancel_packet(pid, secret)))

    # ---------------------------------------------------------------- life cycle

    async def start(self, reuse_port: bool = False) -> None:
        """Listen. `reuse_port`: several worker processes bind the same port and the kernel
        spreads new connections across them (SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()

        def factory():
            return ClientProtocol(self)

        self.server = await loop.create_server(
            factory,
            self.listen.host,
            self.listen.port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )

    async def serve_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stopping.set)
            except (NotImplementedError, RuntimeError):
                pass
        watchdog = loop.create_task(self.enforce_timeouts())
        await self.stopping.wait()
        watchdog.cancel()
        await self.drain()

    async def enforce_timeouts(self, interval: float = 0.5) -> None:
        """Authentication, idle and query timeouts, checked twice a second."""
        limits = self.limits
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for relay in list(self.relays):
                session = relay.session
                if session is None or not session.authenticated:
                    if limits.auth_timeout and now - relay.opened_at > limits.auth_timeout:
                        relay.fail("optimist: authentication timeout", sqlstate="08P01")
                elif session.busy:
                    key = session.backend_key
                    if (
                        limits.query_timeout
                        and relay.busy_since
                        and key is not None
                        and time.perf_counter() - relay.busy_since > limits.query_timeout
                        and not relay.cancel_sent
                    ):
                        relay.cancel_sent = True
                        self.cancel_backend(*key)
                elif (
                    limits.idle_timeout
                    and session.transaction_status == b"I"
                    and now - relay.last_activity > limits.idle_timeout
                ):
                    relay.fail(
                        "terminating connection due to idle-session timeout", sqlstate="57P05"
                    )

    async def drain(self) -> None:
        """Stop accepting, give open sessions `drain_timeout` seconds to finish, then close."""
        if self.server is not None:
            self.server.close()
        if self.relays:
            log.info("draining %d session(s) for up to %.0fs", len(self.relays), self.drain_timeout)
        deadline = asyncio.get_running_loop().time() + self.drain_timeout
        while self.relays and asyncio.get_running_loop().time() < deadline:
            # a session between transactions has finished its work: close it now rather than
            # wait for a connection pool that never lets go
            for relay in list(self.relays):
                if relay.idle():
                    relay.fail(
                        "terminating connection due to administrator command", sqlstate="57P01"
                    )
            await asyncio.sleep(0.05)
        for relay in list(self.relays):
            relay.fail("terminating connection due to administrator command", sqlstate="57P01")
        for task in list(self.tasks):
            task.cancel()
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except TimeoutError:
                pass
