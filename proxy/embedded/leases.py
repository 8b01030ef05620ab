"""Which optimist processes use the server of a shared data directory.

Each process sharing the server holds a lease, a file ``optimist-leases/<pid>.<n>`` (``n``
tells apart several instances in one process) holding the process' start time (so a recycled pid does not pass for the old process); leases of dead
processes are ignored.  ``optimist-leases/started`` records the postmaster an optimist
process started itself: only such a server is ever stopped, by the last lease holder to
leave.  Every read-modify-decide runs under an exclusive ``flock`` on
``optimist-leases/.lock``, so two processes exiting (or starting) at once cannot both think
the other still holds a lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

LEASE_DIR = "optimist-leases"
STARTED = "started"
LOCK = ".lock"

_instances = itertools.count(1)


def process_identity(pid: int) -> str | None:
    """``<pid>:<start time>`` of a live, non-zombie process, else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"{pid}:?"  # no /proc: the pid alone
    if fields[0] == "Z":
        return None
    return f"{pid}:{fields[19]}"  # field 22 of stat: start time in clock ticks since boot


class Leases:
    """The lease directory of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / LEASE_DIR
        self._mine: Path | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[Leases]:
        self.dir.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # releases the lock

    def take(self) -> None:
        pid = os.getpid()
        self._mine = self.dir / f"{pid}.{next(_instances)}"
        self._mine.write_text(process_identity(pid) or "")

    def drop(self) -> None:
        if self._mine is not None:
            self._mine.unlink(missing_ok=True)
            self._mine = None

    def holders(self) -> list[int]:
        """Pids of the live processes holding a lease; stale lease files are removed."""
        live = []
        for path in self.dir.iterdir():
            pid_text = path.name.split(".")[0]
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            try:
                recorded = path.read_text()
            except OSError:
                continue
            if process_identity(pid) == recorded:
                live.append(pid)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return live

    def mark_started(self, postmaster_pid: int) -> None:
        (self.dir / STARTED).write_text(process_identity(postmaster_pid) or "")

    def started_by_optimist(self, postmaster_pid: int) -> bool:
        try:
            return (self.dir / STARTED).read_text() == process_identity(postmaster_pid)
        except OSError:
            return False
