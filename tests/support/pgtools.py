"""Running PostgreSQL's own client programs (psql, pgbench) against a DSN."""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from proxy.embedded import _system_bin_dirs, pg_tool

__all__ = ["PsqlResult", "run_psql", "run_pgbench", "psql_with_ssl", "client_env"]


@dataclass
class PsqlResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> PsqlResult:
        assert self.returncode == 0, (
            f"{self.args} failed ({self.returncode}):\n{self.stderr}\n{self.stdout}"
        )
        return self

    @property
    def outcome(self) -> tuple[int, str, str]:
        """What a "behaves identically" comparison looks at."""
        return self.returncode, self.stdout, self.stderr


def client_env(**extra: str) -> dict[str, str]:
    """The environment for libpq programs: no stray PG* settings, C locale, bounded connects."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", PGCONNECT_TIMEOUT="10", PSQLRC=os.devnull, PAGER="cat")
    env.update(extra)
    return env


def run_psql(
    dsn: str,
    *args: str,
    input: str | None = None,
    on_error_stop: bool = True,
    timeout: float = 60,
    psql: str | None = None,
    env: dict[str, str] | None = None,
    binary: bool = False,
) -> PsqlResult:
    """``psql "dsn" -X -v ON_ERROR_STOP=1 ARGS`` with stdout/stderr/exit code captured.

    ``input`` is fed on stdin (use ``-f -`` or no ``-c`` to run it as a script);
    ``binary=True``: stdout/stderr (and input) are bytes."""
    cmd = [
        psql or pg_tool("psql"),
        dsn,
        "-X",
        "-v",
        f"ON_ERROR_STOP={1 if on_error_stop else 0}",
        *args,
    ]
    res = subprocess.run(
        cmd,
        input=input,
        capture_output=True,
        text=not binary,
        timeout=timeout,
        env=env or client_env(),
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    return PsqlResult(cmd, res.returncode, res.stdout, res.stderr)


def run_pgbench(
    dsn: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> PsqlResult:
    """``pgbench ARGS "dsn"`` (the DSN is pgbench's dbname argument)."""
    cmd = [pg_tool("pgbench"), *args, dsn]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or client_env(),
        stdin=subprocess.DEVNULL,
    )
    return PsqlResult(cmd, res.returncode, res.stdout, res.stderr)


@functools.cache
def psql_with_ssl() -> str | None:
    """A psql whose libpq has SSL support (the embedded wheel's has none), or None."""
    candidates = []
    try:
        candidates.append(pg_tool("psql"))
    except Exception:
        pass
    candidates += [str(d / "psql") for d in _system_bin_dirs()]
    candidates.append("/usr/bin/psql")
    for p in candidates:
        if not Path(p).exists():
            continue
        try:
            res = subprocess.run(
                [
                    p,
                    "host=127.0.0.1 port=1 sslmode=require connect_timeout=2",
                    "-X",
                    "-c",
                    "select",
                ],
                capture_output=True,
                text=True,
                timeout=10,
                env=client_env(),
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "not compiled in" not in res.stderr and "invalid" not in res.stderr:
            return p
    return None
