"""Is PostgreSQL reachable? A bare connect, for /readyz and optimist_upstream_up."""

from __future__ import annotations

import asyncio


async def upstream_ready(target) -> tuple[bool, str]:
    """Can a TCP (or Unix socket) connection to PostgreSQL be opened right now?"""
    try:
        if target.unix_socket:
            conn = asyncio.open_unix_connection(f"{target.unix_socket}/.s.PGSQL.{target.port}")
        else:
            conn = asyncio.open_connection(target.host, target.port)
        _, writer = await asyncio.wait_for(conn, 2.0)
        writer.close()
    except (TimeoutError, OSError) as exc:
        return False, f"upstream {target} unreachable: {exc or 'timeout'}"
    return True, "ready"


async def readiness(target, plain_relay: bool) -> tuple[bool, str]:
    """/readyz: the upstream answers; the body also says when no rules protect anything."""
    ok, why = await upstream_ready(target)
    if ok and plain_relay:
        return ok, f"{why} (no rules loaded: plain relay)"
    return ok, why
