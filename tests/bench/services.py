"""The processes a benchmark needs: PostgreSQL, PgBouncer, optimist, all on loopback.

Every service is started by `Services`, which stops everything it started (in reverse order)
when its `with` block ends, on an error, on Ctrl-C and on SIGTERM/SIGHUP (turned into
KeyboardInterrupt by `install_signal_handlers`). Children also get a parent-death signal, so
even a SIGKILLed benchmark leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from proxy.embedded import SYSTEM_USER, EmbeddedPostgres, free_port, pg_tool
from tests.support.proxyproc import wait_for_port

REPO = Path(__file__).resolve().parents[2]

#: Server settings of the benchmark cluster. fsync, synchronous_commit and full_page_writes are
#: off (EmbeddedPostgres(fast=True)): a throw-away cluster, and the proxy is what is measured.
#: Checkpoints are pushed out of the measured runs.
PG_SETTINGS = {
    "shared_buffers": "256MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "on",
}
PG_MAX_CONNECTIONS = 200


def _set_pdeathsig(sig: int) -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def client_env(**extra: str) -> dict[str, str]:
    """Environment for libpq programs: no stray PG* settings, C locale, bounded connects."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", PGCONNECT_TIMEOUT="10", PSQLRC=os.devnull, PAGER="cat")
    env.update(extra)
    return env


def dsn(host: str, port: int, dbname: str, user: str = "postgres") -> str:
    return f"postgresql://{user}@{host}:{port}/{dbname}"


def psql(url: str, sql: str, timeout: float = 300) -> str:
    """Run SQL with psql (ON_ERROR_STOP), return its stdout (-At: unaligned, tuples only)."""
    cmd = [pg_tool("psql"), url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=client_env(),
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(f"psql failed ({res.returncode}) on {sql!r}:\n{res.stderr}")
    return res.stdout.strip()


class Managed:
    """A child process with its own log file, stopped with a signal, killed if it lingers."""

    name = "process"
    stop_signal = signal.SIGTERM

    def __init__(
        self, cmd: list[str], logdir: Path, *, env=None, cwd=None, user=None, group=None
    ) -> None:
        self.cmd = cmd
        self.log_path = logdir / f"{self.name}.out"
        self.env = env
        self.cwd = cwd
        self.user = user
        self.group = group
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        kwargs = {}
        if self.user is not None:
            kwargs.update(user=self.user, group=self.group, extra_groups=[])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=lambda: _set_pdeathsig(signal.SIGKILL),
                **kwargs,
            )

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode


class Optimist(Managed):
    """`python -m proxy serve --listen 127.0.0.1:PORT --upstream 127.0.0.1:PG [--rules F]`,
    exactly as a user runs it (uvloop, the default)."""

    stop_signal = signal.SIGINT  # optimist drains and exits 0 on SIGINT

    def __init__(
        self,
        label: str,
        upstream_port: int,
        logdir: Path,
        rules: Path | None = None,
        *,
        python: str = sys.executable,
        prefix: list[str] | None = None,
        checkout: Path | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.name = f"optimist-{label}"
        self.label = label
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.rules = rules
        cmd = [
            python,
            "-m",
            "proxy",
            "serve",
            "--listen",
            f"{self.host}:{self.port}",
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            "--log-level",
            "warning",
            "--drain-timeout",
            "5",
        ]
        if rules is not None:
            cmd += ["--rules", str(rules)]
        cmd += extra or []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for k in list(env):
            if k.startswith("OPTIMIST_"):
                del env[k]
        if python != sys.executable and checkout is None:
            # another interpreter's installed optimist (e.g. the compiled wheel in another
            # venv): the repo root, the cwd, must not come first on its sys.path
            env["PYTHONSAFEPATH"] = "1"
        # `checkout`: another commit's tree (python -m proxy imports the proxy of its cwd)
        super().__init__((prefix or []) + cmd, logdir, env=env, cwd=str(checkout or REPO))

    def start(self, timeout: float = 30.0) -> Optimist:
        self.spawn()
        if not wait_for_port(self.host, self.port, timeout, self.proc):
            self.stop(5)
            raise RuntimeError(f"{self.name} did not come up:\n{self.log_tail()}")
        return self


class PgBouncer(Managed):
    """PgBouncer (session mode unless told; the tests use transaction mode), trust auth with an auth_file, on a free loopback port.

    PgBouncer refuses to run as root: when root, it runs as the embedded server's system user,
    which owns the config directory."""

    name = "pgbouncer"
    stop_signal = signal.SIGINT  # "safe shutdown": the benchmark is over, clients are gone

    def __init__(
        self,
        upstream_port: int,
        workdir: Path,
        *,
        user: str = "postgres",
        pool_size: int = 20,
        pool_mode: str = "session",
        round_robin: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
        (workdir / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port={upstream_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / 'userlist.txt'}
pool_mode = {pool_mode}
server_round_robin = {int(round_robin)}
max_client_conn = 200
default_pool_size = {pool_size}
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
logfile = {workdir / 'pgbouncer.log'}
pidfile = {workdir / 'pgbouncer.pid'}
log_connections = 0
log_disconnections = 0
stats_period = 3600
""")
        run_as = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            for p in (workdir, *workdir.iterdir()):
                os.chown(p, entry.pw_uid, entry.pw_gid)
            run_as = dict(user=entry.pw_uid, group=entry.pw_gid)
            # the embedded server's user must be able to reach the work dir
            for parent in workdir.resolve().parents:
                mode = parent.stat().st_mode
                if mode & 0o011 != 0o011:
                    parent.chmod((mode | 0o011) & 0o7777)
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        super().__init__(
            [binary, str(workdir / "pgbouncer.ini")], workdir, cwd=str(workdir), **run_as
        )

    def start(self, timeout: float = 20.0) -> PgBouncer:
        self.spawn()
        if not wait_for_port(self.host, self.port, timeout, self.proc):
            self.stop(5)
            log = Path(self.log_path).parent / "pgbouncer.log"
            extra = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"pgbouncer did not come up:\n{self.log_tail()}\n{extra[-3000:]}")
        return self


def start_postgres(workdir: Path) -> EmbeddedPostgres:
    pg = EmbeddedPostgres(
        workdir / "pgdata",
        fast=True,
        max_connections=PG_MAX_CONNECTIONS,
        config=PG_SETTINGS,
        die_with_parent=True,
    )
    return pg.start()


class Interrupted(KeyboardInterrupt):
    pass


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP end the benchmark through every `finally` (SIGINT also when
    the shell started it in the background with SIGINT ignored)."""

    def handler(signum, frame):
        raise Interrupted(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class Services:
    """Starts what is asked, stops all of it on exit (reverse order), removes its files."""

    def __init__(self, keep: bool = False, optimist_python: str | None = None) -> None:
        # the interpreter every optimist target runs with (--optimist-python); None: this one
        self.optimist_python = optimist_python
        # directly under /tmp: the embedded server's user must be able to traverse it
        self.workdir = Path(tempfile.mkdtemp(prefix="optimist-bench-"))
        self.workdir.chmod(0o755)
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir()
        self.keep = keep
        self.pg: EmbeddedPostgres | None = None
        self.started: list[Managed] = []

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def postgres(self) -> EmbeddedPostgres:
        self.pg = start_postgres(self.workdir)
        return self.pg

    def pgbouncer(self) -> PgBouncer:
        bouncer = PgBouncer(self.pg.port, self.workdir / "pgbouncer")
        self.started.append(bouncer)
        return bouncer.start()

    def optimist(self, label: str, rules: Path | None = None, **kwargs) -> Optimist:
        if self.optimist_python is not None and "checkout" not in kwargs:
            kwargs.setdefault("python", self.optimist_python)
        proxy = Optimist(label, self.pg.port, self.logdir, rules, **kwargs)
        self.started.append(proxy)
        return proxy.start()

    def close(self) -> None:
        # Ctrl-C twice must not leave servers behind: finish stopping whatever happens
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for service in reversed(self.started):
                try:
                    code = service.stop()
                    if code not in (0, None, -signal.SIGINT, -signal.SIGTERM):
                        print(f"note: {service.name} exited with {code}", file=sys.stderr)
                except Exception as exc:  # keep stopping the others
                    print(f"could not stop {service.name}: {exc}", file=sys.stderr)
            self.started.clear()
            if self.pg is not None:
                try:
                    self.pg.stop(timeout=30)
                except Exception as exc:
                    print(f"could not stop PostgreSQL: {exc}", file=sys.stderr)
                self.pg = None
        finally:
            signal.signal(signal.SIGINT, old)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- environment


def _version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return out.splitlines()[0].strip() if out else "unavailable"


def environment(pg: EmbeddedPostgres | None = None) -> dict[str, str]:
    env: dict[str, str] = {}
    env["cpus"] = str(os.cpu_count())
    try:
        model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        env["cpu model"] = model.group(1).strip() if model else platform.processor()
    except OSError:
        env["cpu model"] = platform.processor()
    try:
        mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
        env["memory"] = f"{int(mem.group(1)) / 1048576:.1f} GiB" if mem else "?"
    except OSError:
        pass
    env["kernel"] = platform.release()
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        env["optimist commit"] = head + (" (proxy/ has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    env["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    try:
        import uvloop

        env["uvloop"] = uvloop.__version__
    except ImportError:
        env["uvloop"] = "not installed (asyncio)"
    try:
        import sqlglot

        env["sqlglot"] = sqlglot.__version__
    except ImportError:
        pass
    if pg is not None:
        try:
            env["postgresql"] = psql(pg.dsn, "select version()")
        except Exception:
            env["postgresql"] = _version_of([pg_tool("postgres"), "--version"])
    env["pgbench"] = _version_of([pg_tool("pgbench"), "--version"])
    env["pgbouncer"] = _version_of([shutil.which("pgbouncer") or "pgbouncer", "--version"])
    return env
