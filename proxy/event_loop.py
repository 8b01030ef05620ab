"""The event loop every optimist process runs on: uvloop where available."""

from __future__ import annotations

import asyncio


def run_loop(coro) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(coro)
    else:
        uvloop.run(coro)
