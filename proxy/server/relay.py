"""Relay: the I/O pump of one client connection and its server connection."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING

from proxy.server import upstream
from proxy.server.sockets import set_nodelay
from proxy.session import Session
from proxy.wire import messages as m
from proxy.wire.framing import ProtocolViolation
from proxy.wire.handshake import (
    Answer,
    Cancel,
    Close,
    Decision,
    Forward,
    Handshake,
    Refuse,
    StartTls,
)
from proxy.wire.startup import StartupPacket

if TYPE_CHECKING:
    from proxy.admin import Console
    from proxy.server.listener import ProxyServer

log = logging.getLogger("optimist.server")


class Relay:
    """The I/O pump of one client<->server connection pair.

    It owns the two transports, the timestamps the timeout watchdog reads, back-pressure and
    the connection life cycle, and nothing of the protocol state: the startup handshake is
    decided by `Handshake`, everything after it by `Session`; the relay feeds them bytes and
    carries out what they return.
    """

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.handshake = Handshake(
            tls_offered=proxy.client_tls is not None, tls_required=proxy.tls_required
        )
        self.session: Session | None = None
        self.closed = False
        self.peer = ""
        self.busy_since = 0.0
        self.opened_at = time.monotonic()
        self.last_activity = self.opened_at
        self.cancel_sent = False
        self.client_protocol: asyncio.Protocol | None = None
        # the admin console: authenticating through PostgreSQL, then served by the proxy
        self.console_pending = False
        self.console: Console | None = None
        # client bytes held while the proxy is paused (PAUSE .. RESUME)
        self.paused_input: list[bytes] = []

    # ---------------------------------------------------------------- startup phase

    def startup_bytes(self, data: bytes) -> None:
        for decision in self.handshake.feed(data):
            self.carry_out(decision)

    def carry_out(self, decision: Decision) -> None:
        assert self.client is not None  # the handshake runs on a connected client
        if isinstance(decision, Answer):
            self.client.write(decision.byte)
        elif isinstance(decision, StartTls):
            # stop reading first: the ClientHello may follow the 'S' at once, and it
            # belongs to the TLS layer, not to the handshake's plaintext buffer
            self.client.pause_reading()
            self.client.write(b"S")
            self.proxy.spawn(self.start_client_tls())
        elif isinstance(decision, Forward):
            self.begin(decision.startup, decision.rest)
        elif isinstance(decision, Cancel):
            self.proxy.forward_cancel(decision.request)
            self.close()
        elif isinstance(decision, Refuse):
            log.info("refusing the connection from %s: %s", self.peer, decision.message)
            if not self.client.is_closing():
                self.client.write(decision.reply())
            self.close()
        elif isinstance(decision, Close):
            # PostgreSQL's way with a communication error: no reply, a log line
            log.info("closing the connection from %s: %s", self.peer, decision.reason)
            self.close()

    async def start_client_tls(self) -> None:
        assert self.client is not None and self.client_protocol is not None
        assert self.proxy.client_tls is not None  # StartTls only where TLS is configured
        loop = asyncio.get_running_loop()
        try:
            # no task between resuming and start_tls taking the transport over (wait_for
            # would start one): the ClientHello can only reach the TLS layer
            async with asyncio.timeout(self.proxy.limits.auth_timeout or None):
                self.client.resume_reading()
                transport = await loop.start_tls(
                    self.client, self.client_protocol, self.proxy.client_tls, server_side=True
                )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            log.info("TLS handshake with %s failed: %s", self.peer, exc or "timeout")
            self.close()
            return
        if transport is None or self.closed:
            self.close()
            return
        self.client = transport
        self.handshake.tls_started()

    def begin(self, startup: StartupPacket, rest: bytes) -> None:
        admin = self.proxy.admin
        if admin is not None and admin.wants(startup):
            refusal = admin.refusal(startup)
            if refusal is not None:
                self.carry_out(refusal)
                return
            # PostgreSQL authenticates console users; the session relays just that
            startup = admin.auth_startup(startup)
            self.console_pending = True
        self.session = Session(
            startup,
            locking_for=None if self.console_pending else self.proxy.locking_for,
            max_message=self.proxy.limits.max_message_size,
            peer=self.peer,
            count_statement=(
                self.proxy.metrics.statement
                if self.proxy.metrics and not self.console_pending
                else None
            ),
        )
        assert self.client is not None
        self.client.pause_reading()
        self.proxy.spawn(self.connect(startup, rest))

    async def connect(self, startup: StartupPacket, rest: bytes) -> None:
        target = self.proxy.upstream
        protocol = upstream.UpstreamProtocol(self)
        try:
            await upstream.open_connection(target, protocol)
        except (TimeoutError, OSError) as exc:
            log.warning("upstream %s unreachable: %s", target, exc or "timeout")
            self.proxy.set_upstream_reachable(False)
            self.fail(
                f"optimist: could not connect to the PostgreSQL server at {target}",
                sqlstate="08006",
            )
            return
        self.proxy.set_upstream_reachable(True)
        self.proxy.server_connected()
        assert self.server is not None  # connection_made has run
        if self.closed:
            self.server.close()
            return
        if self.proxy.upstream_tls is not None and not target.unix_socket:
            try:
                self.server = await upstream.negotiate_tls(
                    self.server,
                    protocol,
                    target,
                    self.proxy.upstream_tls,
                    self.proxy.upstream_tls_mode,
                )
            except upstream.UpstreamFailed as exc:
                self.fail(exc.message, sqlstate=exc.sqlstate)
                return
        assert self.server is not None and self.client is not None
        self.server.write(startup.raw)
        if rest:
            self.from_client(rest)
        if not self.closed:
            self.client.resume_reading()

    # ---------------------------------------------------------------- relaying

    def from_client(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.console is not None:
            self.console_bytes(data)
            return
        session = self.session
        assert session is not None and self.client is not None
        if self.proxy.paused and (self.paused_input or session.awaiting_transaction()):
            # PAUSE: a new transaction waits; one already open goes on to its end
            self.paused_input.append(data)
            self.client.pause_reading()
            self.proxy.paused_relays.add(self)
            return
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
        assert session is not None
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
        if self.console_pending and session.authenticated:
            self.start_console()

    # ---------------------------------------------------------------- admin console

    def start_console(self) -> None:
        """PostgreSQL has authenticated the console user (its AuthenticationOk,
        ParameterStatus, BackendKeyData and ReadyForQuery went to the client): let that
        server connection go and answer from the proxy."""
        from proxy.admin import Console

        assert self.session is not None and self.proxy.admin is not None
        self.console_pending = False
        self.console = Console(self.proxy.admin.ops, self.session.info.encoding)
        if self.server is not None and not self.server.is_closing():
            self.server.write(m.TERMINATE)
            self.server.close()
        log.info("admin console opened by %s from %s", self.session.info.user, self.peer)

    def console_bytes(self, data: bytes) -> None:
        assert self.console is not None
        try:
            out = self.console.feed(data)
        except ProtocolViolation as exc:
            self.fail(f"invalid frontend message: {exc}", sqlstate="08P01")
            return
        if out and self.client is not None:
            self.client.writelines(out)
        if self.console.closing:
            self.close()

    def release_paused(self) -> None:
        """RESUME: what the client sent meanwhile goes on as if it had just arrived."""
        held, self.paused_input = self.paused_input, []
        if self.closed or self.client is None:
            return
        self.client.resume_reading()
        if held:
            self.from_client(b"".join(held))

    def flush(self) -> None:
        assert self.session is not None
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
        if self.session is None and (reason := self.handshake.incomplete()):
            log.info("the client at %s left: %s", self.peer, reason)
        self.client = None
        self.close()

    def server_lost(self, exc: Exception | None, during_handshake: bool = False) -> None:
        self.server = None
        self.proxy.server_disconnected()
        if self.closed or during_handshake or self.console is not None:
            return  # the handshake's own failure tells the client why
        if self.session is not None and self.session.server_fatal:
            self.close()  # the server already told the client why (e.g. 57P01 on shutdown)
        else:
            self.fail(
                "optimist: the connection to the PostgreSQL server was lost", sqlstate="08006"
            )


class ClientProtocol(asyncio.Protocol):
    """The client side of one relay: bytes go to the relay, back-pressure to the server."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.relay = Relay(proxy)
        self.relay.client_protocol = self

    def connection_made(self, transport) -> None:
        relay = self.relay
        relay.client = transport
        peer = transport.get_extra_info("peername")
        relay.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        set_nodelay(transport)
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
