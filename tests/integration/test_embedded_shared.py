"""Several `optimist serve` processes on one embedded data directory share its PostgreSQL:
none stops it while another still uses it, the last one to leave stops it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from proxy.embedded import EmbeddedPostgres, free_port
from tests.support import wait_until
from tests.support.proxyproc import port_accepts, wait_for_port

REPO = Path(__file__).resolve().parents[2]


class Serve:
    """``python -m proxy serve --data-dir DATA --listen 127.0.0.1:PORT`` (no upstream: embedded)."""

    def __init__(self, data: Path, port: int | None = None):
        self.port = port or free_port()
        fd, log = tempfile.mkstemp(prefix="optimist-serve-", suffix=".log")
        self.log = Path(log)
        with os.fdopen(fd, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "serve",
                    "--data-dir",
                    str(data),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                cwd=str(REPO),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self) -> Serve:
        assert wait_for_port("127.0.0.1", self.port, 90, self.proc), (
            f"serve did not listen:\n{self.output()}"
        )
        return self

    def select_one(self) -> tuple:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=10
        ) as c:
            return c.execute("select 1").fetchone()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.unlink(missing_ok=True)


def postmaster(data: Path) -> tuple[int, int] | None:
    """(pid, port) of the postmaster running on `data`, from postmaster.pid."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None


def assert_stopped(data: Path, pid: int, port: int) -> None:
    wait_until(lambda: not (data / "postmaster.pid").exists(), 30, what="postmaster.pid to go")
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, what="the postmaster to exit")
    assert not port_accepts("127.0.0.1", port)


@pytest.fixture
def data():
    root = Path(tempfile.mkdtemp(prefix="optimist-test-shared-"))
    serves: list[Serve] = []
    yield root / "pgdata", serves
    for s in serves:
        s.close()
    EmbeddedPostgres(root / "pgdata").stop()
    shutil.rmtree(root, ignore_errors=True)


def test_the_last_serve_to_leave_stops_the_shared_server(data):
    data, serves = data
    first = Serve(data)
    serves.append(first)
    first.wait_listening()
    pid, port = postmaster(data)
    second = Serve(data)
    serves.append(second)
    second.wait_listening()
    assert postmaster(data) == (pid, port), "the second serve must reuse the running server"
    assert second.select_one() == (1,)

    assert first.terminate() == 0, first.output()
    assert postmaster(data) == (pid, port), "the first serve stopped a server the second still uses"
    assert second.select_one() == (1,)

    assert second.terminate() == 0, second.output()
    assert_stopped(data, pid, port)


def test_a_serve_that_fails_to_start_leaves_the_server_to_the_others(data):
    data, serves = data
    first = Serve(data)
    serves.append(first)
    first.wait_listening()
    pid, port = postmaster(data)

    clash = Serve(data, port=first.port)  # its listen port is taken: it must exit
    serves.append(clash)
    clash.proc.wait(60)
    assert clash.proc.returncode != 0, clash.output()
    assert postmaster(data) == (pid, port), (
        f"the failed serve stopped the server:\n{clash.output()}"
    )
    assert first.select_one() == (1,)

    assert first.terminate() == 0, first.output()
    assert_stopped(data, pid, port)


def test_the_lease_of_a_killed_serve_does_not_keep_the_server_running(data):
    data, serves = data
    killed = Serve(data)
    serves.append(killed)
    killed.wait_listening()
    pid, port = postmaster(data)
    killed.proc.kill()  # no clean exit: its lease stays behind
    killed.proc.wait(10)

    survivor = Serve(data)
    serves.append(survivor)
    survivor.wait_listening()
    assert postmaster(data) == (pid, port)
    assert survivor.select_one() == (1,)
    assert survivor.terminate() == 0, survivor.output()
    assert_stopped(data, pid, port)
