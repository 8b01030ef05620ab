"""The connection to PostgreSQL: TCP or Unix socket, then TLS if configured (upstream_tls)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from typing import TYPE_CHECKING

from proxy.config import Endpoint
from proxy.server.sockets import set_nodelay
from proxy.wire.startup import SSL_REQUEST

if TYPE_CHECKING:
    from proxy.server.relay import Relay

log = logging.getLogger("optimist.server")

CONNECT_TIMEOUT = 10.0
SSL_REQUEST_PACKET = struct.pack("!ii", 8, SSL_REQUEST)


class UpstreamFailed(Exception):
    """The server connection could not be set up; `message` is what the client is told."""

    def __init__(self, message: str, sqlstate: str = "08006") -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class UpstreamProtocol(asyncio.Protocol):
    """The server side of one relay: bytes go to the relay, back-pressure to the client."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        # set while waiting for the one-byte answer to our SSLRequest
        self.negotiation: asyncio.Future | None = None
        # during the TLS handshake a lost connection is reported by the handshake itself
        self.handshaking = False

    def connection_made(self, transport) -> None:
        self.relay.server = transport
        set_nodelay(transport)

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
        self.relay.server_lost(exc, during_handshake=self.handshaking)

    def pause_writing(self) -> None:
        if self.relay.client is not None:
            self.relay.client.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.client is not None and not self.relay.client.is_closing():
            self.relay.client.resume_reading()


async def open_connection(target: Endpoint, protocol: UpstreamProtocol) -> None:
    """Connect `protocol` to the server; raises OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    if target.unix_socket:
        path = f"{target.unix_socket}/.s.PGSQL.{target.port}"
        coro = loop.create_unix_connection(lambda: protocol, path)
    else:
        coro = loop.create_connection(lambda: protocol, target.host, target.port)
    await asyncio.wait_for(coro, CONNECT_TIMEOUT)


async def negotiate_tls(
    transport: asyncio.Transport,
    protocol: UpstreamProtocol,
    target: Endpoint,
    context: ssl.SSLContext,
    mode: str,
) -> asyncio.Transport | None:
    """SSLRequest to PostgreSQL; on 'S' a TLS handshake, on 'N' plaintext if `mode` is
    prefer. Returns the transport to use; raises UpstreamFailed."""
    loop = asyncio.get_running_loop()
    protocol.negotiation = loop.create_future()
    transport.write(SSL_REQUEST_PACKET)
    try:
        answer = await asyncio.wait_for(protocol.negotiation, CONNECT_TIMEOUT)
    except (TimeoutError, ConnectionError) as exc:
        raise UpstreamFailed(
            f"optimist: no answer to the SSL request from {target}: {exc or 'timeout'}"
        ) from None
    if answer == b"S":
        protocol.handshaking = True
        try:
            return await asyncio.wait_for(
                loop.start_tls(transport, protocol, context, server_hostname=target.host),
                CONNECT_TIMEOUT,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            log.warning("TLS to %s failed: %s", target, exc or "timeout")
            raise UpstreamFailed(
                f"optimist: TLS to the PostgreSQL server failed: {exc or 'timeout'}"
            ) from None
        finally:
            protocol.handshaking = False
    if answer == b"N" and mode == "prefer":
        return transport
    if answer == b"N":
        raise UpstreamFailed(
            f"optimist: the PostgreSQL server at {target} does not accept TLS "
            f"(upstream_tls is {mode})"
        )
    raise UpstreamFailed("optimist: invalid answer to the SSL request", sqlstate="08P01")
