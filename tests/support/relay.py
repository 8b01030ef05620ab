"""A dumb TCP byte relay with the proxy's command line, to develop the harness against.

``python -m tests.support.relay serve --listen H:P --upstream H:P [--drain-timeout S] [...]``
Unknown options are ignored.  SIGTERM: stop listening, wait up to the drain timeout for
sessions to end, close the rest, exit 0.  Not a proxy: it looks at no byte.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("command")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--drain-timeout", type=float, default=5.0)
    args, _ = ap.parse_known_args(argv)
    lh, lp = args.listen.rsplit(":", 1)
    uh, up = args.upstream.rsplit(":", 1)
    sessions: set[asyncio.Task] = set()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(uh, int(up))
        except OSError:
            cw.close()
            return
        await asyncio.gather(_pipe(cr, uw), _pipe(ur, cw))

    async def track(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        t = asyncio.current_task()
        sessions.add(t)
        t.add_done_callback(sessions.discard)
        await handle(cr, cw)

    server = await asyncio.start_server(track, lh, int(lp))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    if sessions:
        await asyncio.wait(set(sessions), timeout=args.drain_timeout)
    for t in list(sessions):
        t.cancel()
    await asyncio.sleep(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
