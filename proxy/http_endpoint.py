"""The small HTTP endpoint: /metrics, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("optimist.metrics")


class MetricsServer:
    """/metrics, /healthz (the process is up) and /readyz (the upstream answers)."""

    def __init__(self, registry, ready_check, before_scrape=None) -> None:
        self.registry = registry
        self.ready_check = ready_check
        self.before_scrape = before_scrape
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].decode("latin-1") if b" " in request else "/"
            path = path.split("?", 1)[0]
            if path == "/metrics":
                if self.before_scrape is not None:
                    self.before_scrape()
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                ok, why = await self.ready_check()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain", (why + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: "
                f"{len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
