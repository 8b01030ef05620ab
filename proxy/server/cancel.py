"""CancelRequest forwarding.

The proxy relays PostgreSQL's own BackendKeyData unchanged, so a cancel key is the server's:
whichever proxy process (worker) receives a CancelRequest sends it straight to the server on a
new connection, with no routing between workers. The proxy also cancels on its own behalf (a
client gone mid-query, query_timeout).
"""

from __future__ import annotations

import asyncio
import logging
import struct

from proxy.config import Endpoint
from proxy.server.upstream import CONNECT_TIMEOUT
from proxy.wire.startup import CANCEL_REQUEST

log = logging.getLogger("optimist.server")


def cancel_packet(pid: int, secret: bytes) -> bytes:
    body = struct.pack("!ii", CANCEL_REQUEST, pid) + secret
    return struct.pack("!i", len(body) + 4) + body


async def send_cancel(target: Endpoint, packet: bytes) -> None:
    """One connection, the packet, then wait for the server to close (it answers nothing)."""
    try:
        if target.unix_socket:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(f"{target.unix_socket}/.s.PGSQL.{target.port}"),
                CONNECT_TIMEOUT,
            )
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), CONNECT_TIMEOUT
            )
        writer.write(packet)
        await writer.drain()
        await asyncio.wait_for(reader.read(), CONNECT_TIMEOUT)  # the server just closes
        writer.close()
    except (TimeoutError, OSError) as exc:
        log.warning("could not forward a cancel request: %s", exc)
