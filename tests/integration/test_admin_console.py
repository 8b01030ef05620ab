"""The admin console through a real proxy: psql (simple protocol), psycopg (extended
protocol, unnamed statements), asyncpg (`optimist status`/`reload`), refusals, PAUSE/RESUME,
RELOAD of an edited rule file, SHOW CONFLICTS after a real conflict, SHUTDOWN."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from proxy import build
from tests.support.locking import VERSION_RULES, make_database, write_rules
from tests.support.pgtools import run_psql
from tests.support.pgutil import connect, wait_until
from tests.support.proxyproc import REPO

ADMIN = ("--admin-users", "postgres,ops")


@pytest.fixture
def db(pg):
    return make_database(pg.dsn)


@pytest.fixture
def console(pg, proxy_factory, tmp_path, db):
    with connect(pg.dsn) as c:
        c.execute(
            "DO $$ BEGIN CREATE ROLE app_user LOGIN; EXCEPTION WHEN duplicate_object THEN END $$"
        )
    rules = write_rules(tmp_path, VERSION_RULES)
    return proxy_factory(*ADMIN, rules=rules)


def admin(proxy, **kw):
    return psycopg.connect(proxy.dsn_for("optimist"), autocommit=True, prepare_threshold=None, **kw)


def rows(proxy, command):
    with admin(proxy) as c:
        cur = c.execute(command)
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def startup_error(proxy, user, database) -> dict[str, str]:
    """The ErrorResponse fields the proxy answers a StartupMessage with."""
    body = (
        b"".join(
            k.encode() + b"\0" + v.encode() + b"\0"
            for k, v in (("user", user), ("database", database))
        )
        + b"\0"
    )
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", len(body) + 8, 3 << 16) + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    while data[:1] != b"E":  # PostgreSQL's AuthenticationOk may come first
        assert data, "no ErrorResponse"
        data = data[1 + struct.unpack("!I", data[1:5])[0] :]
    return {f[:1].decode(): f[1:].decode() for f in data[5:].split(b"\0") if f}


def edit_unnoticed(path, text: str) -> None:
    """Rewrite a rule file keeping its mtime, so that the proxy's once-a-second file watch
    cannot be what picks the change up: only RELOAD can."""
    before = path.stat()
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def optimist(*args):
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )


def test_psql_reads_every_show_command(console, db):
    with psycopg.connect(console.dsn_for(db), autocommit=True) as app:
        app.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        res = run_psql(
            console.dsn_for("optimist"),
            "-A",
            "-F",
            "|",
            "-c",
            "SHOW RULES",
            "-c",
            "show  sessions;",
            "-c",
            "SHOW STATS",
            "-c",
            "SHOW CONFIG",
            "-c",
            "SHOW HELP",
        ).check()
    out = res.stdout
    assert "version|database|table|mode|strategy|state|reason" in out
    assert f"|{db}|public.accounts|enforce|version|protected|" in out
    assert "client|user|database|application|state|rows_remembered|connected_seconds" in out
    # the application session: idle, one row remembered; the console itself listed too
    assert any(
        line.split("|")[2] == db and line.split("|")[4] == "idle" and line.split("|")[5] == "1"
        for line in out.splitlines()
        if line.count("|") == 6
    ), out
    assert "|postgres|optimist|psql|console|" in out
    assert "setting|value" in out and "admin_users|postgres,ops" in out
    assert f"build|{build()}" in out  # which hot path this proxy runs (issue 12)
    assert "SHUTDOWN|drain and stop, as SIGTERM" in out


def test_rule_errors_are_shown_with_the_reason(pg, proxy_factory, tmp_path, db):
    rules = write_rules(
        tmp_path,
        VERSION_RULES
        + """
  - table: items
    strategy: version
    version_column: no_such_column
""",
    )
    proxy = proxy_factory(*ADMIN, rules=rules)
    pending = rows(proxy, "SHOW RULES")
    assert {r["state"] for r in pending} == {"pending"} and pending[0]["database"] is None
    with psycopg.connect(proxy.dsn_for(db), autocommit=True) as app:
        app.execute("SELECT 1")
        by_table = {r["table"]: r for r in rows(proxy, "SHOW RULES") if r["database"] == db}
    assert by_table["public.accounts"]["state"] == "protected"
    assert by_table["public.items"]["state"] == "error"
    assert "no_such_column" in by_table["public.items"]["reason"]


def test_non_admins_are_refused_and_disabled_console_is_a_missing_database(
    console, pg, proxy_factory
):
    res = run_psql(console.dsn_for("optimist", user="app_user"), "-c", "SHOW RULES")
    assert res.returncode == 2
    assert 'role "app_user" may not use the admin console' in res.stderr
    # psql prints no SQLSTATE and psycopg keeps none for a failed connection: raw bytes
    assert startup_error(console, "app_user", "optimist")["C"] == "28000"
    # an admin PostgreSQL does not know is refused by PostgreSQL itself
    refused = startup_error(console, "ops", "optimist")
    assert refused["C"] == "28000" and refused["M"] == 'role "ops" does not exist'
    with pytest.raises(psycopg.OperationalError, match='role "ops" does not exist'):
        psycopg.connect(console.dsn_for("optimist", user="ops"))
    # app_user may still use real databases through the same proxy
    with psycopg.connect(console.dsn_for("postgres", user="app_user")) as c:
        assert c.execute("SELECT current_user").fetchone() == ("app_user",)
    plain = proxy_factory()
    missing = startup_error(plain, "postgres", "optimist")
    assert missing["C"] == "3D000" and missing["M"] == 'database "optimist" does not exist'


def test_startup_looks_like_postgresqls_and_errors_keep_the_connection(console):
    with admin(console) as c:
        info = c.info
        assert info.parameter_status("server_version")
        assert info.parameter_status("client_encoding") == "UTF8"
        assert info.backend_pid
        with pytest.raises(psycopg.errors.SyntaxError) as err:
            c.execute("SELECT * FROM accounts")
        assert "unknown command" in str(err.value)
        assert c.execute("SHOW CONFIG").fetchall()  # the connection goes on
        assert c.execute("").pgresult.status == psycopg.pq.ExecStatus.EMPTY_QUERY


def test_show_conflicts_after_a_real_conflict(console, db):
    dsn = console.dsn_for(db, application_name="writer_b")
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
        b.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
        a.execute("UPDATE accounts SET balance = 1 WHERE id = 2")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE accounts SET balance = 2 WHERE id = 2")
    found = rows(console, "SHOW CONFLICTS")
    assert len(found) == 1
    c = found[0]
    assert c["table"] == "public.accounts" and c["kind"] == "modified"
    assert c["key"] == '{"id": 2}' and c["columns"] == "version"
    assert c["audit"] == "no" and c["database"] == db and c["application"] == "writer_b"
    assert c["client"].startswith("127.0.0.1:")
    stats = {r["table"]: r for r in rows(console, "SHOW STATS")}
    assert stats["public.accounts"]["conflicts"] == 1
    assert stats["public.accounts"]["checked"] >= 2


def test_stats_count_unverified_writes_by_reason(console, db):
    with psycopg.connect(console.dsn_for(db), autocommit=True) as a:
        a.execute("UPDATE counters SET n = 1 WHERE id = 1")  # never read
        a.execute("UPDATE accounts SET balance = balance + 1 WHERE balance > 0")  # no key pin
    stats = {r["table"]: r for r in rows(console, "SHOW STATS")}
    assert stats["public.counters"]["unverified"] == 1
    assert stats["public.counters"]["unverified_reasons"] == "not_read=1"
    assert stats["public.accounts"]["unverified_reasons"] == "no_key_pin=1"


def test_pause_then_resume_releases_the_waiting_session(console, db):
    dsn = console.dsn_for(db)
    with admin(console) as ops, psycopg.connect(dsn, autocommit=True) as inside:
        inside.execute("BEGIN")
        inside.execute("SELECT 1")
        ops.execute("PAUSE")
        inside.execute("UPDATE accounts SET owner = 'in' WHERE id = 3")
        inside.execute("COMMIT")
        done = {}

        def second():
            try:
                with psycopg.connect(dsn, autocommit=True) as c:
                    started = time.monotonic()
                    done["row"] = c.execute("SELECT owner FROM accounts WHERE id = 3").fetchone()
                    done["waited"] = time.monotonic() - started
            except Exception as exc:
                done["error"] = exc

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        wait_until(
            lambda: any(r["state"] == "paused" for r in rows(console, "SHOW SESSIONS")),
            what="a paused session",
        )
        thread.join(1.0)  # the second connection times out waiting...
        assert thread.is_alive() and not done, done
        ops.execute("RESUME")  # ...and proceeds once resumed
        thread.join(10)
        assert done["row"] == ("in",) and done["waited"] >= 0.5


def test_reload_picks_up_an_edited_rule_file_and_refuses_a_broken_one(console, db, tmp_path):
    before = rows(console, "SHOW RULES")[0]["version"]
    path = tmp_path / "rules.yaml"
    edit_unnoticed(
        path,
        path.read_text().replace(
            "  - table: pairs",
            "  - table: docs\n    strategy: version\n    version_column: rev\n  - table: pairs",
        ),
    )
    with admin(console) as c:
        ((version, result),) = c.execute("RELOAD").fetchall()
        assert result == "reloaded" and version != before
        assert c.execute("RELOAD").fetchall() == [(version, "unchanged")]
        edit_unnoticed(path, "version: 1\ntables:\n  - table: accounts\n    strategy: nonsense\n")
        with pytest.raises(psycopg.errors.ConfigFileError) as err:
            c.execute("RELOAD")
        assert "keeping version " + version in str(err.value)
        assert "nonsense" in (err.value.diag.message_detail or "")
    assert "public.docs" in {r["table"] for r in rows(console, "SHOW RULES")}


def test_optimist_status_and_reload_against_the_running_proxy(console, db, tmp_path):
    listen = f"--listen={console.host}:{console.port}"
    with psycopg.connect(console.dsn_for(db), autocommit=True) as app:
        app.execute("SELECT * FROM accounts").fetchall()
        res = optimist("status", listen, "--user", "postgres")
    assert res.returncode == 0, res.stderr
    assert "rules version: " in res.stdout and "client sessions: 1" in res.stdout
    assert "public.accounts" in res.stdout and "protected" in res.stdout
    path = tmp_path / "rules.yaml"
    edit_unnoticed(
        path, path.read_text() + "  - table: docs\n    strategy: version\n    version_column: rev\n"
    )
    res = optimist("reload", listen, "--user", "postgres")
    assert res.returncode == 0 and "reloaded" in res.stdout, res.stderr
    edit_unnoticed(path, "version: 1\ntables: [")
    res = optimist("reload", listen, "--user", "postgres")
    assert res.returncode == 1 and "refused" in res.stderr
    res = optimist("status", listen, "--user", "app_user")
    assert res.returncode == 1 and "may not use the admin console" in res.stderr


def test_shutdown_drains_like_sigterm(console, db):
    with psycopg.connect(console.dsn_for(db), autocommit=True) as app:
        app.execute("BEGIN")
        with admin(console) as c:
            c.execute("SHUTDOWN")
        time.sleep(0.3)
        assert console.alive  # the open transaction may finish
        app.execute("COMMIT")
    assert console.wait(10) == 0
