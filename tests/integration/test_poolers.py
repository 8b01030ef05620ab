"""optimist with a real PgBouncer in transaction mode, on both sides.

In front (client -> optimist -> PgBouncer -> PostgreSQL): each transaction may run on another
server connection, so pg_temp guard functions are unusable (the first test shows it breaking);
`pooler_mode = transaction` uses the functions `optimist install` put in a schema of their own,
or passes writes unverified (guards_unavailable) when there are none.

Behind (client -> PgBouncer -> optimist -> PostgreSQL): optimist sees PgBouncer's server
connections as its sessions; reads and writes of one client land on different ones, so
`scope: user` is what keeps the check.

PgBouncer runs with server_round_robin, and each test first opens several server connections
at once, so consecutive transactions do land on different ones (asserted through
pg_backend_pid()).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from proxy.locking import installed
from tests.bench.services import PgBouncer
from tests.support.locking import VERSION_RULES, make_database, write_rules
from tests.support.pgutil import connect, query_direct, wait_until
from tests.support.promtext import sample_sum, scrape

REPO = Path(__file__).resolve().parents[2]
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

pytestmark = pytest.mark.skipif(
    not Path(PGBOUNCER).exists(),
    reason="pgbouncer is not installed (.ci/run installs the Debian package)",
)

TEMP_GUARDS = (
    "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname LIKE 'pg_temp%' AND p.proname LIKE 'optimist%'"
)


@pytest.fixture
def bouncer(pg):
    workdir = Path(tempfile.mkdtemp(prefix="optimist-test-pgbouncer-"))
    b = PgBouncer(pg.port, workdir, pool_mode="transaction", round_robin=True, pool_size=4)
    with open(workdir / "userlist.txt", "a") as users:
        users.write('"alice" ""\n"bob" ""\n')
    b.start()
    try:
        yield b
    finally:
        b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def db(pg) -> str:
    return make_database(pg.dsn)


def direct(pg, db: str) -> str:
    return pg.dsn.rsplit("/", 1)[0] + "/" + db


def client(dsn: str) -> psycopg.Connection:
    # what a client of a transaction pooler must do: no named prepared statements
    return connect(dsn, prepare_threshold=None)


def spread(dsn: str, n: int = 3) -> None:
    """Make the pooler open n server connections: n transactions open at once (directly
    through the pooler: sessions of the proxy would leave guard functions on them)."""
    conns = [client(dsn) for _ in range(n)]
    for c in conns:
        c.execute("BEGIN")
        c.execute("SELECT 1")
    for c in conns:
        c.execute("COMMIT")
        c.close()


def backends(conn: psycopg.Connection, n: int = 6) -> set[int]:
    return {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(n)}


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )


# items: every column checked, `modified_at` (timestamptz) compared as printed, through the
# optimist_text / optimist_value functions
RULES = (
    VERSION_RULES
    + """  - table: items
    strategy: columns
    check: any
"""
)


def in_front(proxy_factory, bouncer, tmp_path, db: str, *args: str, env=None):
    rules = write_rules(tmp_path, RULES)
    spread(f"postgresql://postgres@{bouncer.host}:{bouncer.port}/{db}")
    return proxy_factory(
        *args, rules=rules, metrics=True, upstream=(bouncer.host, bouncer.port), env=env
    )


def lost_update_attempt(dsn: str, row: int) -> None:
    """A reads row, B changes it, A writes its stale version: a lost update unless refused."""
    a, b = client(dsn), client(dsn)
    try:
        a.execute("SELECT * FROM accounts WHERE id = %s", (row,)).fetchall()
        b.execute("SELECT * FROM accounts WHERE id = %s", (row,)).fetchall()
        b.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (row,))
        a.execute("UPDATE accounts SET balance = 0 WHERE id = %s", (row,))
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- in front


def test_pg_temp_guards_break_in_front_of_a_transaction_pooler(
    proxy_factory, bouncer, db, tmp_path
):
    """Why pooler_mode exists: the session's pg_temp functions are on one server connection,
    its next transactions run on others."""
    p = in_front(proxy_factory, bouncer, tmp_path, db)
    dsn = p.dsn_for(db)
    failures = []
    with client(dsn) as c:
        assert len(backends(c)) > 1
        for _ in range(6):
            c.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
            try:
                c.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
            except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as exc:
                # no pg_temp schema at all on that connection, or one without our functions
                failures.append(exc)
    assert failures and ("optimist_" in str(failures[0]) or "pg_temp" in str(failures[0]))


def test_uninstalled_database_passes_writes_unverified(proxy_factory, bouncer, db, tmp_path, pg):
    p = in_front(proxy_factory, bouncer, tmp_path, db, "--pooler-mode", "transaction")
    dsn = p.dsn_for(db)
    with client(dsn) as c:
        c.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        c.execute("UPDATE accounts SET balance = 150 WHERE id = 1")
        c.execute("UPDATE accounts SET balance = %s WHERE id = %s", (151, 1))
    assert query_direct(direct(pg, db), "SELECT balance FROM accounts WHERE id = 1") == [(151,)]
    wait_until(
        lambda: (
            sample_sum(
                scrape(p.metrics_url),
                "optimist_unverified_writes_total",
                table="public.accounts",
                reason="guards_unavailable",
            )
            == 2
        ),
        what="two guards_unavailable writes",
    )
    assert "no usable guard functions in schema optimist" in p.stderr_text()
    assert "optimist install" in p.stderr_text()
    assert query_direct(direct(pg, db), TEMP_GUARDS) == [(0,)]


def stale_write(dsn: str, row: int) -> None:
    """A reads `row`, B reads and changes it, A writes what it read: a lost update unless
    refused. Each statement its own transaction, so on whichever server connection."""
    with client(dsn) as a, client(dsn) as b:
        a.execute("SELECT * FROM accounts WHERE id = %s", (row,)).fetchall()
        b.execute("SELECT * FROM accounts WHERE id = %s", (row,)).fetchall()
        b.execute("UPDATE accounts SET balance = %s WHERE id = %s", (111, row))
        a.execute("UPDATE accounts SET balance = %s WHERE id = %s", (0, row))


def test_installed_guards_check_writes_across_server_connections(
    proxy_factory, bouncer, db, tmp_path, pg
):
    # the race is real through the pooler without optimist: A's stale write is applied
    through_pooler = f"postgresql://postgres@{bouncer.host}:{bouncer.port}/{db}"
    stale_write(through_pooler, 3)
    assert query_direct(direct(pg, db), "SELECT balance FROM accounts WHERE id = 3") == [(0,)]

    done = install("--upstream", direct(pg, db))
    assert done.returncode == 0, done.stderr
    assert "guard functions installed in schema optimist" in done.stdout
    p = in_front(proxy_factory, bouncer, tmp_path, db, "--pooler-mode", "transaction")
    dsn = p.dsn_for(db)

    # the simple protocol: a stale write is refused, nothing of it applied
    with client(dsn) as a, client(dsn) as b:
        assert len(backends(a)) > 1
        a.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        b.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        b.execute("UPDATE accounts SET balance = 111 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
    assert query_direct(direct(pg, db), "SELECT balance, version FROM accounts WHERE id = 1") == [
        (111, 2)
    ]

    # the extended protocol: the checked form is prepared at each Bind, on the connection
    # that runs it, so it works on whichever server connection the transaction gets
    with pytest.raises(psycopg.errors.SerializationFailure):
        stale_write(dsn, 2)
    assert query_direct(direct(pg, db), "SELECT balance FROM accounts WHERE id = 2") == [(111,)]

    # fresh writes pass, on whatever server connection each lands: no false conflicts,
    # also for values compared as printed (items.modified_at: timestamptz), read under a
    # TimeZone PgBouncer keeps per client
    with client(dsn) as a:
        a.execute("SET TimeZone = 'Asia/Kolkata'")
        for n in range(6):
            a.execute("SELECT * FROM accounts WHERE id = %s", (2,)).fetchall()
            a.execute("UPDATE accounts SET balance = %s WHERE id = %s", (200 + n, 2))
            a.execute("SELECT * FROM items WHERE id = 1").fetchall()
            a.execute("UPDATE items SET qty = %s, modified_at = now() WHERE id = 1", (n,))
            a.execute(f"UPDATE items SET name = 'mug{n}' WHERE id = 1")
        # and in an explicit transaction, several checked writes on one connection
        a.execute("SELECT * FROM accounts WHERE id IN (1, 2)").fetchall()
        with a.transaction():
            a.execute("UPDATE accounts SET balance = %s WHERE id = %s", (1, 1))
            a.execute("UPDATE accounts SET balance = %s WHERE id = %s", (2, 2))
    rows = query_direct(direct(pg, db), "SELECT id, balance FROM accounts WHERE id IN (1, 2)")
    assert sorted(rows) == [(1, 1), (2, 2)]
    assert query_direct(direct(pg, db), "SELECT name, qty FROM items WHERE id = 1") == [("mug5", 5)]

    # a stale write of a printed value is refused too
    with client(dsn) as a, client(dsn) as b:
        a.execute("SELECT * FROM items WHERE id = 2").fetchall()
        b.execute("SELECT * FROM items WHERE id = 2").fetchall()
        b.execute("UPDATE items SET modified_at = '2024-01-01 00:00+00' WHERE id = 2")
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("UPDATE items SET qty = 0 WHERE id = 2")
    assert query_direct(direct(pg, db), "SELECT qty FROM items WHERE id = 2") == [(5,)]

    text = scrape(p.metrics_url)
    for table in ("public.accounts", "public.items"):
        assert sample_sum(text, "optimist_unverified_writes_total", table=table) == 0
    assert sample_sum(text, "optimist_checked_writes_total", table="public.accounts") >= 10
    assert sample_sum(text, "optimist_checked_writes_total", table="public.items") >= 12
    # the installed functions did the checking: none was created in pg_temp
    assert query_direct(direct(pg, db), TEMP_GUARDS) == [(0,)]
    assert "using the guard functions installed in schema optimist" in p.stderr_text()


def test_install_is_idempotent_versioned_and_picked_up_without_a_restart(
    proxy_factory, bouncer, db, tmp_path, pg
):
    # functions of another conflict SQLSTATE are not this proxy's: detected, reported
    done = install("--upstream", direct(pg, db), "--conflict-sqlstate", "40P01")
    assert done.returncode == 0, done.stderr
    # an older release's function of another signature: an upgrade drops it
    with connect(direct(pg, db)) as c:
        c.execute(
            "CREATE FUNCTION optimist.optimist_modified(text) RETURNS boolean"
            " LANGUAGE sql AS 'SELECT true'"
        )
    p = in_front(
        proxy_factory,
        bouncer,
        tmp_path,
        db,
        "--pooler-mode",
        "transaction",
        env={"OPTIMIST_CATALOG_CHECK_INTERVAL": "0.5"},
    )
    with client(p.dsn_for(db)) as c:
        c.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        c.execute("UPDATE accounts SET balance = 1 WHERE id = 1")
    assert "this proxy needs" in p.stderr_text()
    assert "run `optimist install` again" in p.stderr_text()

    done = install("--upstream", direct(pg, db))
    assert done.returncode == 0, done.stderr
    assert "replaced version" in done.stdout
    assert "dropped optimist.optimist_modified(text)" in done.stdout
    again = install("--upstream", direct(pg, db))
    assert again.returncode == 0 and "unchanged" in again.stdout, again
    functions = query_direct(
        direct(pg, db),
        "SELECT count(*), count(DISTINCT obj_description(p.oid, 'pg_proc')) FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'optimist'",
    )
    assert functions == [(len(installed.FUNCTIONS), 1)]

    # the running proxy notices the install at its next catalog check: writes are checked
    def checked_once() -> bool:
        with client(p.dsn_for(db)) as c:
            c.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
            c.execute("UPDATE accounts SET balance = 2 WHERE id = 1")
        return (
            sample_sum(
                scrape(p.metrics_url), "optimist_checked_writes_total", table="public.accounts"
            )
            > 0
        )

    wait_until(checked_once, what="the installed functions in use")
    with pytest.raises(psycopg.errors.SerializationFailure):
        stale_write(p.dsn_for(db), 3)

    done = install("--upstream", direct(pg, db), "--uninstall")
    assert done.returncode == 0, done.stderr
    assert query_direct(
        direct(pg, db), "SELECT count(*) FROM pg_namespace WHERE nspname = 'optimist'"
    ) == [(0,)]

    refused = install("--upstream", "127.0.0.1:1")
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("optimist install: cannot install in schema optimist")
    assert "Traceback" not in refused.stderr


def test_install_needs_create_on_the_database_or_on_the_schema(db, pg):
    with connect(direct(pg, db)) as c:
        c.execute("DROP ROLE IF EXISTS installer")
        c.execute("CREATE ROLE installer LOGIN")
        c.execute("REVOKE CREATE ON DATABASE " + db + " FROM PUBLIC")
    as_installer = direct(pg, db).replace("postgres@", "installer@")

    refused = install("--upstream", as_installer)
    assert refused.returncode == 1, refused
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("optimist install: cannot install: role installer may not create")
    assert f"GRANT CREATE ON DATABASE {db} TO installer" in line
    assert query_direct(
        direct(pg, db), "SELECT count(*) FROM pg_namespace WHERE nspname = 'optimist'"
    ) == [(0,)]

    # a schema someone else created, with CREATE granted on it: that is enough
    with connect(direct(pg, db)) as c:
        c.execute("CREATE SCHEMA guards")
    refused = install("--upstream", as_installer, "--schema", "guards")
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "GRANT CREATE ON SCHEMA guards TO installer" in line
    with connect(direct(pg, db)) as c:
        c.execute("GRANT CREATE, USAGE ON SCHEMA guards TO installer")
        c.execute("GRANT USAGE ON SCHEMA guards TO PUBLIC")
    done = install("--upstream", as_installer, "--schema", "guards")
    assert done.returncode == 0, done.stderr
    assert "schema guards is not installer's" in done.stdout
    owners = query_direct(
        direct(pg, db),
        "SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'guards'",
    )
    assert owners == [("installer",)]
    # removing keeps the schema that is not the installer's
    done = install("--upstream", as_installer, "--schema", "guards", "--uninstall")
    assert done.returncode == 0 and "schema guards kept" in done.stdout, done
    with connect(direct(pg, db)) as c:
        c.execute("DROP SCHEMA guards")
        c.execute("DROP OWNED BY installer")
        c.execute("DROP ROLE installer")


# --------------------------------------------------------------------------- behind


USER_SCOPE_RULES = """
version: 1
tables:
  - table: accounts
    strategy: version
    version_column: version
    scope: user
"""


def test_behind_a_transaction_pooler_user_scope_checks(proxy_factory, db, tmp_path, pg):
    with connect(direct(pg, db)) as c:
        for role in ("alice", "bob"):
            c.execute(f"DROP ROLE IF EXISTS {role}")
            c.execute(f"CREATE ROLE {role} LOGIN")
            c.execute(f"GRANT SELECT, UPDATE ON accounts TO {role}")
    # the race is real without optimist
    lost = direct(pg, db).replace("postgres@", "alice@")
    with client(lost) as a, client(lost.replace("alice@", "bob@")) as b:
        a.execute("SELECT * FROM accounts WHERE id = 3").fetchall()
        b.execute("UPDATE accounts SET balance = 333 WHERE id = 3")
        a.execute("UPDATE accounts SET balance = 0 WHERE id = 3")
    assert query_direct(direct(pg, db), "SELECT balance FROM accounts WHERE id = 3") == [(0,)]

    p = proxy_factory(rules=write_rules(tmp_path, USER_SCOPE_RULES), metrics=True)
    workdir = Path(tempfile.mkdtemp(prefix="optimist-test-pgbouncer-"))
    bouncer = PgBouncer(p.port, workdir, pool_mode="transaction", round_robin=True, pool_size=4)
    with open(workdir / "userlist.txt", "a") as users:
        users.write('"alice" ""\n"bob" ""\n')
    bouncer.start()
    try:
        base = f"postgresql://%s@{bouncer.host}:{bouncer.port}/{db}"
        spread(base % "alice")
        with client(base % "alice") as a, client(base % "bob") as b:
            assert len(backends(a)) > 1
            a.execute("SELECT * FROM accounts WHERE id = %s", (1,)).fetchall()
            b.execute("SELECT * FROM accounts WHERE id = %s", (1,)).fetchall()
            b.execute("UPDATE accounts SET balance = %s WHERE id = %s", (111, 1))
            with pytest.raises(psycopg.errors.SerializationFailure):
                a.execute("UPDATE accounts SET balance = %s WHERE id = %s", (0, 1))
            # after reading again, the write goes through, checked, on any connection
            a.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
            a.execute("UPDATE accounts SET balance = 5 WHERE id = 1")
    finally:
        bouncer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert query_direct(direct(pg, db), "SELECT balance FROM accounts WHERE id = 1") == [(5,)]
    text = scrape(p.metrics_url)
    assert sample_sum(text, "optimist_unverified_writes_total", table="public.accounts") == 0
