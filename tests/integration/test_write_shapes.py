"""Every shape of write in rules/README.md ("Which writes are checked"): each write of a
protected table is counted exactly once, checked or unverified{reason}; a table with
`unverified: reject` refuses every shape that cannot be checked, so no lost update slips by."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.locking import SCHEMA, make_database, write_rules
from tests.support.promtext import scrape
from tests.support.promtext import text_string_to_metric_families as families

EXTRA_SCHEMA = """
CREATE FUNCTION bump_accounts() RETURNS void LANGUAGE sql
  AS 'UPDATE accounts SET balance = balance + 1 WHERE id = 3';
CREATE PROCEDURE bump_proc() LANGUAGE sql AS 'UPDATE accounts SET balance = balance + 1 WHERE id = 3';
CREATE FUNCTION set_counter(k int, v int) RETURNS void LANGUAGE sql
  AS 'UPDATE counters SET n = n + v WHERE id = k';
"""

RULES = """
version: 1
tables:
  - table: accounts
    version_column: version
  - table: counters
    version_column: version
    unverified: reject
"""

LENIENT_RULES = RULES.replace("    unverified: reject\n", "")

A = "public.accounts"
C = "public.counters"

# (statement, the one series it counts: (table, reason or "checked"), or None: no write).
# The rows of accounts were all read first; the table is in rules/README.md.
SHAPES = [
    ("UPDATE accounts SET owner = 'a' WHERE id = 1", (A, "checked")),
    ("UPDATE accounts SET owner = 'b' WHERE id IN (1, 2)", (A, "checked")),
    ("DELETE FROM accounts WHERE id = 99", (A, "not_read")),
    ("UPDATE accounts SET owner = 'd' WHERE id IN (1, 99)", (A, "not_read")),
    ("UPDATE accounts SET balance = balance + 0 WHERE owner = 'zz'", (A, "no_key_pin")),
    ("UPDATE accounts SET owner = 'e' WHERE id = ANY('{1,2}')", (A, "checked")),
    ("UPDATE accounts SET owner = 'e' WHERE id = ANY('[1:2]={1,2}')", (A, "key_array")),
    ("INSERT INTO accounts VALUES (10, 'N', 1, 1)", (A, "checked")),
    ("INSERT INTO accounts VALUES (10, 'N', 1) ON CONFLICT DO NOTHING", (A, "checked")),
    (
        "INSERT INTO accounts VALUES (10, 'N', 1) ON CONFLICT (id) DO UPDATE SET owner = 'u'",
        (A, "checked"),  # row 10 is known: the session inserted it
    ),
    (
        "INSERT INTO accounts VALUES (30, 'N', 1) ON CONFLICT (id) DO UPDATE SET owner = 'u'",
        (A, "upsert"),  # a row never read
    ),
    (
        "INSERT INTO accounts VALUES (10, 'N', 1) ON CONFLICT ON CONSTRAINT accounts_pkey "
        "DO UPDATE SET owner = 'u'",
        (A, "upsert"),  # which row conflicts is not the key's to say
    ),
    (
        "MERGE INTO accounts a USING (VALUES (1)) v(id) ON a.id = v.id "
        "WHEN MATCHED THEN UPDATE SET owner = 'm'",
        (A, "merge"),
    ),
    (
        "MERGE INTO accounts a USING (SELECT 1) s ON a.id = 3 "
        "WHEN MATCHED THEN UPDATE SET owner = 'm' WHEN NOT MATCHED THEN INSERT VALUES (3, 'M', 0)",
        (A, "checked"),  # the ON pins the key: row 3 is checked (and then forgotten)
    ),
    (
        "MERGE INTO accounts a USING (VALUES (20)) v(id) ON a.id = v.id "
        "WHEN NOT MATCHED THEN INSERT VALUES (v.id, 'M', 0, 1)",
        (A, "checked"),
    ),
    (
        "WITH w AS (UPDATE accounts SET owner = 'w' WHERE id = 2 RETURNING id) SELECT * FROM w",
        (A, "checked"),  # the CTE pins the key: row 2 is checked (and then forgotten)
    ),
    (
        "WITH w AS (DELETE FROM accounts WHERE id = 98 RETURNING id) SELECT * FROM w",
        (A, "not_read"),
    ),
    ("SELECT * FROM accounts", None),  # read again what the checked MERGE and WITH forgot
    (
        "WITH s AS (SELECT 3 AS k) UPDATE accounts SET owner = 't' FROM s WHERE accounts.id = 3",
        (A, "checked"),  # the WITH statement's main statement writes
    ),
    (
        "WITH w AS (UPDATE accounts SET owner = 'w' WHERE owner = 'zz' RETURNING id) SELECT 1",
        (A, "with_clause"),  # no key pin
    ),
    (
        "WITH w AS (INSERT INTO accounts VALUES (10, 'N', 1) ON CONFLICT (id) "
        "DO UPDATE SET owner = 'u' RETURNING id) SELECT * FROM w",
        (A, "with_clause"),
    ),
    ("SELECT * FROM accounts", None),
    (
        # each write of a protected table counts once: one checked per statement at most
        "WITH a AS (UPDATE accounts SET owner = 'x' WHERE id = 1), "
        "c AS (UPDATE counters SET n = n WHERE id = 1) SELECT 1",
        {(A, "checked"): 1, (C, "with_clause"): 1},
    ),
    (
        # two writes of one table see one snapshot, not each other: neither is checked
        "WITH a AS (UPDATE accounts SET owner = 'x' WHERE id = 1), "
        "b AS (UPDATE accounts SET owner = 'y' WHERE id = 2) SELECT 1",
        {(A, "with_clause"): 2},
    ),
    ("DO $$ BEGIN PERFORM 1; END $$", ("*", "server_code")),
    ("CALL bump_proc()", ("*", "server_code")),
    ("SELECT bump_accounts()", ("*", "server_code")),
    ("SELECT now(), count(*), coalesce(max(owner), 'x') FROM accounts", None),
    ("PREPARE pw(int) AS UPDATE accounts SET owner = 'p' WHERE id = $1", None),
    # a simple EXECUTE with a literal key is checked; the extended protocol's Parse of an
    # EXECUTE (its key a parameter of the outer statement) and an expression key are not
    ("EXECUTE pw(1)", {"simple": (A, "checked"), "extended": (A, "sql_prepare")}),
    ("EXECUTE pw(0 + 1)", (A, "sql_prepare")),
    ("EXECUTE pw(99)", {"simple": (A, "not_read"), "extended": (A, "sql_prepare")}),
    ("DEALLOCATE pw", None),
    ("EXECUTE pw(1)", "error"),  # deallocated: the server says so, nothing is counted
]


def write_counts(url: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in families(scrape(url)):
        for s in family.samples:
            if s.name == "optimist_checked_writes_total":
                out[(s.labels["table"], "checked")] = s.value
            elif s.name == "optimist_unverified_writes_total":
                out[(s.labels["table"], s.labels["reason"])] = s.value
    return out


@pytest.fixture
def shapes(pg, proxy_factory, tmp_path, request):
    # server-side code may write any table: with a strict table it is refused outright
    rules = RULES if getattr(request, "param", "strict") == "strict" else LENIENT_RULES
    db = make_database(pg.dsn, SCHEMA + EXTRA_SCHEMA)
    proxy = proxy_factory(rules=write_rules(tmp_path, rules), metrics=True)
    direct = pg.dsn.rsplit("/", 1)[0] + "/" + db
    return proxy, proxy.dsn_for(db), direct


def execute(conn, sql: str, protocol: str):
    # psycopg sends a statement without parameters as a simple Query, unless prepare=True:
    # then Parse/Bind/Execute of a server-side prepared statement
    return conn.execute(sql, prepare=True if protocol == "extended" else None)


@pytest.mark.parametrize("shapes", ["lenient"], indirect=True)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_every_shape_counts_exactly_once(shapes, protocol):
    proxy, dsn, _ = shapes
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql, shape_series in SHAPES:
            per_protocol = isinstance(shape_series, dict) and protocol in shape_series
            series = shape_series[protocol] if per_protocol else shape_series  # type: ignore[index]
            # read afresh: a bulk write or a MERGE before made the session forget what it read
            execute(conn, "SELECT * FROM accounts", protocol).fetchall()
            before = write_counts(proxy.metrics_url)
            if series == "error":
                with pytest.raises(psycopg.Error):
                    execute(conn, sql, protocol)
            else:
                try:
                    execute(conn, sql, protocol)
                except psycopg.errors.InternalError_:
                    raise AssertionError(sql + proxy.stderr_text()[-3000:]) from None
            after = write_counts(proxy.metrics_url)
            moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k)}
            expected = (
                {}
                if series in (None, "error")
                else series
                if isinstance(series, dict)
                else {series: 1}
            )
            assert moved == expected, (sql, protocol)


# Shapes that cannot be checked, each writing counters row 1 over a change it never saw.
STRICT_SHAPES = {
    "bulk": ("UPDATE counters SET n = n + 10 WHERE n >= 0", "no_key_pin"),
    # an array literal with dimension decorations is not read: its keys stay unknown
    "key_array": ("UPDATE counters SET n = n + 10 WHERE id = ANY('[1:2]={1,2}')", "key_array"),
    "upsert": (
        "INSERT INTO counters VALUES (1, 0), (2, 0) ON CONFLICT (id) "
        "DO UPDATE SET n = counters.n + 10",
        "upsert",
    ),
    "merge": (
        "MERGE INTO counters c USING (VALUES (1)) v(id) ON c.id = v.id "
        "WHEN MATCHED THEN UPDATE SET n = c.n + 10",
        "merge",
    ),
    "with_clause": (
        "WITH w AS (UPDATE counters SET n = n + 10 WHERE id + 0 = 1 RETURNING id) SELECT * FROM w",
        "with_clause",
    ),
    "do_block": ("DO $$ BEGIN UPDATE counters SET n = n + 10 WHERE id = 1; END $$", "server_code"),
    "function": ("SELECT set_counter(1, 10)", "server_code"),
    # a key the proxy cannot know (`EXECUTE bump(1)` is checked: tests/integration/
    # test_sql_prepared.py)
    "sql_prepare": ("EXECUTE bump(0 + 1)", "sql_prepare"),
}


def _race(dsn: str, sql: str, protocol: str, expect_refusal: bool) -> None:
    """a reads row 1, b changes it, a writes with `sql` (what a last-writer-wins shape does)."""
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("PREPARE bump(int) AS UPDATE counters SET n = n + 10 WHERE id = $1")
        assert execute(a, "SELECT * FROM counters WHERE id = 1", protocol).fetchall()
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        if expect_refusal:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
                execute(a, sql, protocol)
            assert "unverified: reject" in str(err.value)
        else:
            execute(a, sql, protocol)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("shape", list(STRICT_SHAPES))
def test_strict_table_refuses_what_cannot_be_checked(shapes, shape, protocol):
    proxy, dsn, direct = shapes
    sql, reason = STRICT_SHAPES[shape]
    # directly against PostgreSQL the shape overwrites b's change it never saw
    _race(direct, sql, protocol, expect_refusal=False)
    with psycopg.connect(direct, autocommit=True) as c:
        assert c.execute("SELECT n FROM counters WHERE id = 1").fetchone()[0] == 17
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id = 1")
    label = "*" if reason == "server_code" else C
    before = write_counts(proxy.metrics_url).get((label, reason), 0)
    _race(dsn, sql, protocol, expect_refusal=True)
    with psycopg.connect(direct, autocommit=True) as c:
        assert c.execute("SELECT n FROM counters WHERE id = 1").fetchone()[0] == 7  # b's change
    assert write_counts(proxy.metrics_url).get((label, reason), 0) == before + 1


def test_strict_table_lets_checked_and_harmless_statements_through(shapes):
    proxy, dsn, direct = shapes
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM counters WHERE id = 2").fetchall()
        a.execute("SELECT now(), count(*) FROM counters").fetchall()
        a.execute("UPDATE accounts SET owner = 'bulk' WHERE owner = 'nobody'")  # not strict
        a.execute("UPDATE counters SET n = 1 WHERE id = 2")  # checked
        b.execute("SELECT * FROM counters WHERE id = 2").fetchall()
        a.execute("UPDATE counters SET n = 2 WHERE id = 2")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE counters SET n = 3 WHERE id = 2")
    with psycopg.connect(direct) as c:
        assert c.execute("SELECT n FROM counters WHERE id = 2").fetchone()[0] == 2


def test_strict_table_checks_a_literal_sql_execute_and_refuses_the_others(shapes):
    proxy, dsn, direct = shapes
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("PREPARE bump(int) AS UPDATE counters SET n = n + 10 WHERE id = $1")
        a.execute("SELECT * FROM counters WHERE id IN (1, 2)").fetchall()
        a.execute("EXECUTE bump(2)")  # read, fresh: checked, allowed
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("EXECUTE bump(1)")  # checked: the conflict, not a refusal
        for unverifiable in ("EXECUTE bump(3)", "EXECUTE bump(0 + 2)"):  # not read / unknown
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                a.execute(unverifiable)
    with psycopg.connect(direct) as c:
        rows = c.execute("SELECT n FROM counters WHERE id IN (1, 2, 3) ORDER BY id").fetchall()
    assert rows == [(7,), (10,), (0,)]
