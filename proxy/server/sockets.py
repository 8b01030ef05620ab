"""Socket options shared by both sides of a relay."""

from __future__ import annotations

import asyncio
import socket


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small protocol messages go out at once (no Nagle delay); TCP only."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
