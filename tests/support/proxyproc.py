"""The proxy under test, run as a subprocess exactly as a user would run it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy.embedded import free_port

__all__ = ["ProxyProcess", "wait_for_port", "port_accepts"]

REPO = Path(__file__).resolve().parents[2]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if port_accepts(host, port):
            return True
        time.sleep(0.05)
    return False


class ProxyProcess:
    """``python -m proxy serve --listen 127.0.0.1:PORT --upstream HOST:PGPORT [...]``.

    ``module`` is ``proxy`` (the real one) or ``tests.support.relay`` (a dumb byte relay used
    to develop the harness; select it with ``OPTIMIST_TEST_PROXY=relay``)."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        rules: str | os.PathLike[str] | None = None,
        metrics: bool = False,
        drain_timeout: float | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        module: str | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 15.0,
        host: str = "127.0.0.1",
        port: int | None = None,
    ):
        self.host = host
        self.port = port or free_port(host)
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.module = module or (
            "tests.support.relay" if os.environ.get("OPTIMIST_TEST_PROXY") == "relay" else "proxy"
        )
        self.metrics_port = None
        while metrics and self.metrics_port in (None, self.port):
            # the OS may hand the just-released listen port out again: never use it twice
            self.metrics_port = free_port(host)
        args = [
            "--listen",
            f"{self.host}:{self.port}",
            "--upstream",
            f"{upstream_host}:{upstream_port}",
        ]
        if rules is not None:
            args += ["--rules", str(rules)]
        if self.metrics_port is not None:
            args += ["--metrics", f"{self.host}:{self.metrics_port}"]
        if drain_timeout is not None:
            args += ["--drain-timeout", str(drain_timeout)]
        args += list(extra_args)
        self.cmd = [sys.executable, "-m", self.module, "serve", *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.start_timeout = start_timeout
        self._logdir = tempfile.mkdtemp(prefix="optimist-proxy-")
        self._stdout_path = Path(self._logdir) / "stdout.log"
        self._stderr_path = Path(self._logdir) / "stderr.log"
        self.proc: subprocess.Popen | None = None

    # -- addresses
    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str, user: str = "postgres", **params: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}" + (f"?{q}" if q else "")

    @property
    def metrics_url(self) -> str | None:
        return (
            None if self.metrics_port is None else f"http://{self.host}:{self.metrics_port}/metrics"
        )

    # -- output
    def stderr_text(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self._stdout_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self, tail: int = 60) -> str:
        err = "\n".join(self.stderr_text().splitlines()[-tail:])
        out = "\n".join(self.stdout_text().splitlines()[-tail:])
        code = None if self.proc is None else self.proc.poll()
        return f"proxy {' '.join(self.cmd)}\nexit code: {code}\n--- stderr (tail) ---\n{err}\n--- stdout (tail) ---\n{out}"

    # -- life cycle
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ProxyProcess:
        with open(self._stdout_path, "ab") as out, open(self._stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=str(REPO),
            )
        if not wait_for_port(self.host, self.port, self.start_timeout, self.proc):
            why = (
                "exited"
                if self.proc.poll() is not None
                else f"did not listen within {self.start_timeout}s"
            )
            self.kill()
            raise RuntimeError(f"proxy {why}\n{self.describe()}")
        return self

    def terminate(self) -> None:
        """Send SIGTERM (a graceful, draining shutdown) without waiting."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL after ``timeout`` (then the exit code is negative)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill()
                return -signal.SIGKILL
        return self.proc.returncode

    def cleanup(self) -> None:
        """Remove the captured stdout/stderr (call after :meth:`stop`)."""
        shutil.rmtree(self._logdir, ignore_errors=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __repr__(self) -> str:
        return f"ProxyProcess({self.host}:{self.port} -> {self.upstream_host}:{self.upstream_port}, module={self.module})"
