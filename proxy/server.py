"""The asyncio layer: accept clients, open one server connection each, move bytes.

All protocol knowledge lives in `proxy.session`; this module only feeds it bytes, writes what it
returns, applies back-pressure (a side whose peer cannot keep up stops being read) and handles
connection life cycles.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable

from proxy.config import ConfigError, Endpoint, Settings
from proxy.session import Session
from proxy.session.info import SessionInfo
from proxy.session.machine import Locking
from proxy.wire import messages as m
from proxy.wire.framing import ProtocolViolation
from proxy.wire.startup import (GSSENC_REQUEST, SSL_REQUEST, CancelRequest, StartupPacket,
                                packet_length, parse_startup)

log = logging.getLogger("optimist.server")

CONNECT_TIMEOUT = 10.0
SSL_REQUEST_PACKET = struct.pack("!ii", 8, SSL_REQUEST)


class Relay:
    """One client connection and its server connection."""

    def __init__(self, proxy: "ProxyServer") -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.session: Session | None = None
        self.startup_buffer = bytearray()
        self.closed = False
        self.peer = ""
        self.busy_since = 0.0
        self.opened_at = time.monotonic()
        self.last_activity = self.opened_at
        self.tls = False
        self.upgrading = False
        self.server_handshake = False
        self.cancel_sent = False
        self.client_protocol: asyncio.Protocol | None = None

    # ---------------------------------------------------------------- startup phase

    def startup_bytes(self, data: bytes) -> None:
        buf = self.startup_buffer
        buf += data
        while not self.upgrading:
            try:
                length = packet_length(buf)
            except ProtocolViolation as exc:
                self.fail(str(exc))
                return
            if length is None or len(buf) < length:
                return
            packet = bytes(buf[:length])
            del buf[:length]
            try:
                parsed = parse_startup(packet)
            except ProtocolViolation as exc:
                self.fail(str(exc))
                return
            if isinstance(parsed, CancelRequest):
                self.proxy.forward_cancel(parsed)
                self.close()
                return
            if parsed.code == SSL_REQUEST and self.proxy.client_tls is not None and not self.tls:
                if buf:
                    # bytes sent before the handshake would be trusted as if encrypted
                    self.fail("received unencrypted data after SSL request")
                    return
                # stop reading first: the ClientHello may follow the 'S' at once, and it
                # belongs to the TLS layer, not to this plaintext buffer
                self.client.pause_reading()
                self.client.write(b"S")
                self.upgrading = True
                self.proxy.spawn(self.start_client_tls())
                return
            if parsed.code in (SSL_REQUEST, GSSENC_REQUEST):
                self.client.write(b"N")  # not offered; the client may go on in plaintext
                continue
            if self.proxy.tls_required and not self.tls:
                self.fail("optimist: this proxy accepts TLS connections only (use sslmode=require)",
                          sqlstate="28000")
                return
            rest = bytes(buf)
            buf.clear()
            self.begin(parsed, rest)
            return

    async def start_client_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # no task between resuming and start_tls taking the transport over (wait_for
            # would start one): the ClientHello can only reach the TLS layer
            async with asyncio.timeout(self.proxy.limits.auth_timeout or None):
                self.client.resume_reading()
                transport = await loop.start_tls(self.client, self.client_protocol,
                                                 self.proxy.client_tls, server_side=True)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake with %s failed: %s", self.peer, exc or "timeout")
            self.close()
            return
        if transport is None or self.closed:
            self.close()
            return
        self.client = transport
        self.tls = True
        self.upgrading = False

    def begin(self, startup: StartupPacket, rest: bytes) -> None:
        self.session = Session(startup, locking_for=self.proxy.locking_for,
                               max_message=self.proxy.limits.max_message_size, peer=self.peer,
                               count_statement=self.proxy.metrics.statement
                               if self.proxy.metrics else None)
        self.client.pause_reading()
        self.proxy.spawn(self.connect(startup, rest))

    async def connect(self, startup: StartupPacket, rest: bytes) -> None:
        loop = asyncio.get_running_loop()
        target = self.proxy.upstream
        protocol = UpstreamProtocol(self)
        try:
            if target.unix_socket:
                path = f"{target.unix_socket}/.s.PGSQL.{target.port}"
                coro = loop.create_unix_connection(lambda: protocol, path)
            else:
                coro = loop.create_connection(lambda: protocol, target.host, target.port)
            await asyncio.wait_for(coro, CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("upstream %s unreachable: %s", target, exc or "timeout")
            self.proxy.set_upstream_reachable(False)
            self.fail(f"optimist: could not connect to the PostgreSQL server at {target}",
                      sqlstate="08006")
            return
        self.proxy.set_upstream_reachable(True)
        self.proxy.server_connected()
        if self.closed:
            self.server.close()
            return
        if self.proxy.upstream_tls is not None and not target.unix_socket:
            if not await self.start_server_tls(protocol, target):
                return
        self.server.write(startup.raw)
        if rest:
            self.from_client(rest)
        if not self.closed:
            self.client.resume_reading()

    async def start_server_tls(self, protocol: "UpstreamProtocol", target) -> bool:
        """SSLRequest to PostgreSQL; on 'S' a TLS handshake, on 'N' plaintext if allowed."""
        loop = asyncio.get_running_loop()
        protocol.negotiation = loop.create_future()
        self.server.write(SSL_REQUEST_PACKET)
        try:
            answer = await asyncio.wait_for(protocol.negotiation, CONNECT_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            self.fail(f"optimist: no answer to the SSL request from {target}: {exc or 'timeout'}",
                      sqlstate="08006")
            return False
        if answer == b"S":
            self.server_handshake = True  # a failed handshake also closes the connection
            try:
                transport = await asyncio.wait_for(loop.start_tls(
                    self.server, protocol, self.proxy.upstream_tls,
                    server_hostname=target.host), CONNECT_TIMEOUT)
            except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
                log.warning("TLS to %s failed: %s", target, exc or "timeout")
                self.fail(f"optimist: TLS to the PostgreSQL server failed: {exc or 'timeout'}",
                          sqlstate="08006")
                return False
            finally:
                self.server_handshake = False
            self.server = transport
            return True
        if answer == b"N" and self.proxy.upstream_tls_mode == "prefer":
            return True
        if answer == b"N":
            self.fail(f"optimist: the PostgreSQL server at {target} does not accept TLS "
                      f"(upstream_tls is {self.proxy.upstream_tls_mode})", sqlstate="08006")
        else:
            self.fail("optimist: invalid answer to the SSL request", sqlstate="08P01")
        return False

    # ---------------------------------------------------------------- relaying

    def from_client(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        session = self.session
        was_idle = not session.busy
        try:
            session.client_data(data)
        except ProtocolViolation as exc:
            self.fail(f"invalid frontend message: {exc}", sqlstate="08P01")
            return
        except Exception:
            log.exception("internal error handling client data")
            self.fail("optimist: internal error", sqlstate="XX000")
            return
        if was_idle and session.busy:
            self.busy_since = time.perf_counter()
            self.cancel_sent = False
        self.flush()
        if session.closing:
            self.close()

    def from_server(self, data: bytes) -> None:
        session = self.session
        busy = session.busy
        try:
            session.server_data(data)
        except ProtocolViolation as exc:
            log.error("invalid message from the server: %s", exc)
            self.fail("optimist: invalid message from the server", sqlstate="08P01")
            return
        except Exception:
            log.exception("internal error handling server data")
            self.fail("optimist: internal error", sqlstate="XX000")
            return
        if busy and not session.busy and self.busy_since:
            self.proxy.observe_latency(time.perf_counter() - self.busy_since)
            self.busy_since = 0.0
        self.flush()

    def flush(self) -> None:
        to_server, to_client = self.session.take_output()
        tally = self.proxy.bytes_tally
        if to_server and self.server is not None:
            self.server.writelines(to_server)
            if tally is not None:
                tally["client_to_server"] += sum(map(len, to_server))
        if to_client and self.client is not None:
            self.client.writelines(to_client)
            if tally is not None:
                tally["server_to_client"] += sum(map(len, to_client))

    # ---------------------------------------------------------------- endings

    def fail(self, message: str, sqlstate: str = "08P01") -> None:
        """Tell the client why (FATAL, as PostgreSQL does) and close both sides."""
        if self.client is not None and not self.client.is_closing():
            self.client.write(m.error_response(sqlstate, message, severity="FATAL"))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.session is not None:
            self.session.close()
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            session = self.session
            key = session.backend_key if session is not None and session.busy else None
            if key is not None:
                # a query may still run server-side: cancel it so the backend notices at once
                self.proxy.cancel_backend(*key)
            if not self.server.is_closing():
                self.server.write(m.TERMINATE)
            self.server.close()
        self.proxy.relay_closed(self)

    def idle(self) -> bool:
        session = self.session
        if session is None:
            return self.server is None
        return session.between_transactions()

    def client_lost(self) -> None:
        self.client = None
        self.close()

    def server_lost(self, exc: Exception | None) -> None:
        self.server = None
        self.proxy.server_disconnected()
        if self.closed or self.server_handshake:
            return  # the handshake's own failure tells the client why
        if self.session is not None and self.session.server_fatal:
            self.close()  # the server already told the client why (e.g. 57P01 on shutdown)
        else:
            self.fail("optimist: the connection to the PostgreSQL server was lost",
                      sqlstate="08006")


class ClientProtocol(asyncio.Protocol):
    def __init__(self, proxy: "ProxyServer") -> None:
        self.relay = Relay(proxy)
        self.relay.client_protocol = self

    def connection_made(self, transport) -> None:
        relay = self.relay
        relay.client = transport
        peer = transport.get_extra_info("peername")
        relay.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        relay.proxy.relay_opened(relay)
        limit = relay.proxy.limits.max_client_connections
        if limit and len(relay.proxy.relays) > limit:
            relay.fail("sorry, too many clients already", sqlstate="53300")

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay.session is None:
            relay.startup_bytes(data)
        else:
            relay.from_client(data)

    def connection_lost(self, exc) -> None:
        self.relay.client_lost()

    def pause_writing(self) -> None:
        if self.relay.server is not None:
            self.relay.server.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.server is not None and not self.relay.server.is_closing():
            self.relay.server.resume_reading()


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        # set while waiting for the one-byte answer to our SSLRequest
        self.negotiation: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.relay.server = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        waiting = self.negotiation
        if waiting is not None:
            self.negotiation = None
            if not waiting.done():
                # more than the one byte would be unencrypted data smuggled before the handshake
                waiting.set_result(data if len(data) == 1 else b"?")
            return
        self.relay.from_server(data)

    def connection_lost(self, exc) -> None:
        waiting = self.negotiation
        if waiting is not None and not waiting.done():
            waiting.set_exception(ConnectionError("connection closed"))
        self.relay.server_lost(exc)

    def pause_writing(self) -> None:
        if self.relay.client is not None:
            self.relay.client.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.client is not None and not self.relay.client.is_closing():
            self.relay.client.resume_reading()


class ProxyServer:
    def __init__(self, listen: Endpoint, upstream: Endpoint, *,
                 locking_for: Callable[[SessionInfo], Locking] | None = None,
                 drain_timeout: float = 30.0, metrics=None, limits: Settings | None = None) -> None:
        self.listen = listen
        self.upstream = upstream
        self.limits = limits or Settings()
        self.server: asyncio.AbstractServer | None = None
        self.bytes_tally = metrics.bytes_tally if metrics else None
        self.client_tls = None
        self.tls_required = False
        self.upstream_tls = None
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

    # ---------------------------------------------------------------- cancel

    def forward_cancel(self, request: CancelRequest) -> None:
        """Keys are the server's own (BackendKeyData is relayed unchanged), so the request goes
        straight to the server, whichever proxy process received it."""
        self.spawn(self._send_cancel(request.raw))

    def cancel_backend(self, pid: int, secret: bytes | None) -> None:
        if secret is None:
            return
        import struct
        body = struct.pack("!ii", 80877102, pid) + secret
        self.spawn(self._send_cancel(struct.pack("!i", len(body) + 4) + body))

    async def _send_cancel(self, packet: bytes) -> None:
        target = self.upstream
        try:
            if target.unix_socket:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(
                    f"{target.unix_socket}/.s.PGSQL.{target.port}"), CONNECT_TIMEOUT)
            else:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(target.host, target.port), CONNECT_TIMEOUT)
            writer.write(packet)
            await writer.drain()
            await asyncio.wait_for(reader.read(), CONNECT_TIMEOUT)  # the server just closes
            writer.close()
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("could not forward a cancel request: %s", exc)

    # ---------------------------------------------------------------- life cycle

    async def start(self, reuse_port: bool = False) -> None:
        """Listen. `reuse_port`: several worker processes bind the same port and the kernel
        spreads new connections across them (SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()
        factory = lambda: ClientProtocol(self)  # noqa: E731
        self.server = await loop.create_server(
            factory, self.listen.host, self.listen.port, reuse_address=True,
            reuse_port=reuse_port or None, backlog=1024)

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
                    if limits.query_timeout and relay.busy_since and key is not None and \
                            time.perf_counter() - relay.busy_since > limits.query_timeout \
                            and not relay.cancel_sent:
                        relay.cancel_sent = True
                        self.cancel_backend(*key)
                elif limits.idle_timeout and session.transaction_status == b"I" and \
                        now - relay.last_activity > limits.idle_timeout:
                    relay.fail("terminating connection due to idle-session timeout",
                               sqlstate="57P05")

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
                    relay.fail("terminating connection due to administrator command",
                               sqlstate="57P01")
            await asyncio.sleep(0.05)
        for relay in list(self.relays):
            relay.fail("terminating connection due to administrator command", sqlstate="57P01")
        for task in list(self.tasks):
            task.cancel()
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
