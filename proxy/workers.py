"""`--workers N`: N proxy processes on one port, one supervisor serving their metrics.

Each worker binds the listen port with SO_REUSEPORT, so the kernel spreads connections over
them. Cancel requests need no routing: the proxy relays PostgreSQL's own BackendKeyData, so
whichever worker receives a CancelRequest forwards it straight to the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile

from proxy.config import ConfigError, Settings, cannot_listen, parse_hostport
from proxy.event_loop import run_loop

log = logging.getLogger("optimist.workers")

# a worker that cannot start (e.g. its port is taken) exits so; restarting it would not help
EXIT_CANNOT_START = 2


def run_workers(settings: Settings, count: int) -> int:
    """Fork `count` workers, supervise them, serve the aggregated metrics; returns an exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="optimist-metrics-")
    # prometheus-client picks its storage when first imported: set the directory before
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _supervise(settings, count)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _fork_worker(settings: Settings, index: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        from proxy.app import ProxyApp

        app = ProxyApp(settings, serve_metrics=False, reuse_port=True)
        log.info("worker %d (pid %d) starting", index, os.getpid())
        run_loop(app.run())
    except ConfigError as exc:
        log.error("%s", exc)
        code = EXIT_CANNOT_START
    except BaseException:  # a worker must never fall back into the supervisor's code
        log.exception("worker %d failed", index)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _supervise(settings: Settings, count: int) -> int:
    workers = {_fork_worker(settings, i): i for i in range(count)}
    state = {"stopping": False, "failed": False}

    async def supervise() -> None:
        from prometheus_client import multiprocess

        from proxy.http_endpoint import MetricsServer
        from proxy.metrics import multiprocess_registry
        from proxy.upstream_probe import readiness

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def forward(sig: int) -> None:
            if sig in (signal.SIGTERM, signal.SIGINT):
                state["stopping"] = True
                stop.set()
            for pid in list(workers):
                try:
                    os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)
                except ProcessLookupError:
                    pass

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, forward, sig)
        server = None
        if settings.metrics:
            endpoint = parse_hostport(settings.metrics, 9187)
            server = MetricsServer(
                multiprocess_registry(),
                lambda: readiness(settings.upstream_endpoint, plain_relay=not settings.rules),
            )
            try:
                await server.start(endpoint.host, endpoint.port)
            except OSError as exc:
                log.error("%s", cannot_listen(endpoint, exc, "--metrics"))
                state["failed"] = True
                forward(signal.SIGTERM)
                server = None
            else:
                log.info(
                    "aggregated metrics of %d workers on http://%s:%d/metrics",
                    count,
                    endpoint.host,
                    endpoint.port,
                )
        while workers:
            await asyncio.sleep(0.2)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if not pid:
                    break
                index = workers.pop(pid, None)
                if index is None:
                    continue
                multiprocess.mark_process_dead(pid)
                code = os.waitstatus_to_exitcode(status)
                if state["stopping"]:
                    state["failed"] |= code != 0
                    continue
                if code == EXIT_CANNOT_START:
                    state["failed"] = True
                    forward(signal.SIGTERM)
                    continue
                log.error("worker %d (pid %d) exited with %s; starting a new one", index, pid, code)
                workers[_fork_worker(settings, index)] = index
        if server is not None:
            await server.close()

    run_loop(supervise())
    return 1 if state["failed"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(2)
