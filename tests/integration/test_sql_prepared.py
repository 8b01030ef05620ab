"""SQL-level PREPARE / EXECUTE of a write of a protected table (issue 10, case 6), in the
simple protocol as psql and hand-written scripts send them. At `EXECUTE p(<literal key>)` the
proxy runs a hidden SQL statement of the checked form with the read values as extra
arguments: a stale EXECUTE fails with 40001 and applies nothing, a fresh one passes and
teaches the session the row's new version. An EXECUTE whose key the proxy cannot know (an
expression) runs unchecked, counted `sql_prepare`. Each race also runs directly against
PostgreSQL to show the lost update is real there."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.test_write_shapes import write_counts
from tests.support.locking import SCHEMA, make_database, write_rules

RULES = """
version: 1
tables:
  - table: counters
    version_column: version
  - table: accounts
    version_column: version
  - table: pairs
    version_column: v
  - table: items
    strategy: columns
    check: any
"""

C = "public.counters"


@pytest.fixture(scope="module")
def sql_proxy(session_proxy_factory, tmp_path_factory):
    return session_proxy_factory(
        rules=write_rules(tmp_path_factory.mktemp("sql_prepared"), RULES), metrics=True
    )


@pytest.fixture
def dbs(pg, sql_proxy):
    db = make_database(pg.dsn, SCHEMA)
    return sql_proxy, sql_proxy.dsn_for(db), pg.dsn.rsplit("/", 1)[0] + "/" + db


def _n(direct: str, key: int = 1) -> int:
    with psycopg.connect(direct) as c:
        return c.execute("SELECT n FROM counters WHERE id = %s", (key,)).fetchone()[0]


def _moved(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k)}


# (PREPARE, EXECUTE): each adds 10 to counters row 1 (or deletes it)
SHAPES = {
    "update": ("PREPARE p AS UPDATE counters SET n = n + 10 WHERE id = $1", "EXECUTE p(1)"),
    "declared": (
        "PREPARE p(int, int) AS UPDATE counters SET n = n + $2 WHERE id = $1",
        "EXECUTE p(1, 10)",
    ),
    "string-key": (
        "PREPARE p(text) AS UPDATE counters SET n = n + 10 WHERE id = $1::int",
        "EXECUTE p('1')",
    ),
    "returning": (
        "PREPARE p AS UPDATE counters SET n = n + 10 WHERE id = $1 RETURNING n",
        "EXECUTE p(1)",
    ),
    "delete": ("PREPARE p AS DELETE FROM counters WHERE id = $1", "EXECUTE p(1)"),
    "in-list": (
        "PREPARE p AS UPDATE counters SET n = n + 10 WHERE id IN ($1, $2)",
        "EXECUTE p(1, 2)",
    ),
}


def _race(dsn: str, shape: str) -> None:
    """a prepares and reads row 1, b changes it, a executes over b's change."""
    prepare, execute = SHAPES[shape]
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute(prepare)
        a.execute("SELECT * FROM counters WHERE id IN (1, 2)").fetchall()
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        a.execute(execute)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_stale_execute_conflicts_and_applies_nothing(dbs, shape):
    proxy, dsn, direct = dbs
    _race(direct, shape)  # directly: b's 7 is lost under a's write
    with psycopg.connect(direct, autocommit=True) as c:
        assert c.execute("SELECT n FROM counters WHERE id = 1").fetchone() in (None, (17,))
        c.execute("DELETE FROM counters WHERE id = 1")
        c.execute("INSERT INTO counters VALUES (1, 0, 1)")
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id = 2")
    before = write_counts(proxy.metrics_url)
    with pytest.raises(psycopg.errors.SerializationFailure) as err:
        _race(dsn, shape)
    assert '"id": 1' in (err.value.diag.message_detail or "")
    assert _n(direct, 1) == 7 and _n(direct, 2) == 0  # nothing applied
    assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "checked"): 2}  # b's, a's


@pytest.mark.parametrize("shape", list(SHAPES))
def test_fresh_execute_passes_and_learns(dbs, shape):
    proxy, dsn, direct = dbs
    prepare, execute = SHAPES[shape]
    before = write_counts(proxy.metrics_url)
    with psycopg.connect(dsn, autocommit=True) as a:
        a.execute(prepare)
        a.execute("SELECT * FROM counters WHERE id IN (1, 2)").fetchall()
        cur = a.execute(execute)
        assert cur.rowcount == (2 if shape == "in-list" else 1)
        if shape == "returning":  # the client's own RETURNING, nothing the proxy added
            assert [d.name for d in cur.description] == ["n"]
            assert cur.fetchall() == [(10,)]
        else:
            assert cur.description is None
        if shape != "delete":
            cur = a.execute(execute)  # its own write taught it the new version
            assert cur.rowcount == (2 if shape == "in-list" else 1)
    with psycopg.connect(direct) as c:
        row = c.execute("SELECT n, version FROM counters WHERE id = 1").fetchone()
    assert row == (None if shape == "delete" else (20, 3))
    writes = 1 if shape == "delete" else 2
    assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "checked"): writes}


def test_execute_whose_key_is_an_expression_runs_unchecked_counted_sql_prepare(dbs):
    proxy, dsn, direct = dbs
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("PREPARE p AS UPDATE counters SET n = n + 10 WHERE id = $1")
        a.execute("SELECT * FROM counters").fetchall()
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        before = write_counts(proxy.metrics_url)
        a.execute("EXECUTE p(0 + 1)")  # the server's to evaluate: not checked, but counted
        assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "sql_prepare"): 1}
        # it bumped a row it cannot name: a forgot every counters row it had read
        a.execute("EXECUTE p(3)")
        assert _moved(before, write_counts(proxy.metrics_url)) == {
            (C, "sql_prepare"): 1,
            (C, "not_read"): 1,
        }
        a.execute("SELECT * FROM counters").fetchall()
        before = write_counts(proxy.metrics_url)
        a.execute("EXECUTE p(3)")  # a row a read: checked
        a.execute("SELECT * FROM counters WHERE id = 1").fetchall()  # a sees 17 now
        a.execute("EXECUTE p(1)")  # fresh again: checked, passes
        assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "checked"): 2}
        before = write_counts(proxy.metrics_url)
        b.execute("PREPARE q AS UPDATE counters SET n = n + 1 WHERE id = $1")
        b.execute("EXECUTE q(4)")  # b never read row 4
        assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "not_read"): 1}
        # the unchecked EXECUTE still bumped the version: a's read of row 4 is stale now
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("EXECUTE p(4)")
    assert _n(direct, 1) == 27 and _n(direct, 4) == 1


def test_prepared_statement_life_cycle(dbs):
    """PREPARE survives a rollback (it is not transactional); a PREPARE that fails leaves the
    server's statement; DEALLOCATE, DISCARD ALL and a name reused for another body are
    followed; PREPARE and EXECUTE may share one query."""
    proxy, dsn, direct = dbs
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("BEGIN")
        a.execute("PREPARE p AS UPDATE counters SET n = n + 10 WHERE id = $1")
        a.execute("ROLLBACK")
        a.execute("SELECT * FROM counters").fetchall()
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            a.execute("PREPARE p AS SELECT $1::int")  # p stays the UPDATE
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        before = write_counts(proxy.metrics_url)
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("EXECUTE p(1)")
        assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "checked"): 1}

        a.execute("DEALLOCATE p")
        a.execute("PREPARE p AS SELECT n FROM counters WHERE id = $1")  # a read now
        before = write_counts(proxy.metrics_url)
        assert a.execute("EXECUTE p(1)").fetchall() == [(7,)]
        assert _moved(before, write_counts(proxy.metrics_url)) == {}

        # one query: a new PREPARE of the name, then its EXECUTE
        a.execute(
            "DEALLOCATE p; PREPARE p AS UPDATE counters SET n = n + 1 WHERE id = $1; EXECUTE p(2)"
        )
        assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "checked"): 1}

        a.execute("DISCARD ALL")  # every statement gone, the proxy's hidden ones too
        a.execute("SELECT * FROM counters WHERE id = 2").fetchall()
        a.execute("PREPARE p AS UPDATE counters SET n = n + 1 WHERE id = $1")
        before = write_counts(proxy.metrics_url)
        a.execute("EXECUTE p(2)")
        b.execute("SELECT * FROM counters WHERE id = 2").fetchall()
        b.execute("UPDATE counters SET n = 50 WHERE id = 2")
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("EXECUTE p(2)")
        assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "checked"): 3}
    assert _n(direct, 1) == 7 and _n(direct, 2) == 50


WRITER = """
CREATE FUNCTION writer_fn() RETURNS void LANGUAGE sql
  AS 'UPDATE counters SET n = 99, version = version + 1 WHERE id = 1';
"""


@pytest.fixture
def writer_dbs(pg, sql_proxy):
    db = make_database(pg.dsn, SCHEMA + WRITER)
    return sql_proxy, sql_proxy.dsn_for(db), pg.dsn.rsplit("/", 1)[0] + "/" + db


def _after_server_code(a) -> None:
    """a read row 1, then in a transaction that rolls back called a function that wrote it
    and read it again: that second read saw values that never existed."""
    a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
    a.execute("BEGIN")
    a.execute("SELECT writer_fn()")
    assert a.execute("SELECT n, version FROM counters WHERE id = 1").fetchone() == (99, 2)
    a.execute("ROLLBACK")


def test_reads_after_server_code_are_undone_with_its_rollback_no_lost_update(writer_dbs):
    proxy, dsn, direct = writer_dbs

    def race(url: str) -> None:
        with psycopg.connect(url, autocommit=True) as a, psycopg.connect(url, autocommit=True) as b:
            _after_server_code(a)
            b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
            b.execute("UPDATE counters SET n = 8, version = 2 WHERE id = 1")  # version 2 again
            a.execute("UPDATE counters SET n = 1 WHERE id = 1")

    race(direct)
    assert _n(direct) == 1  # directly: b's 8 lost
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id = 1")
    # through the proxy a still knows version 1 (its read before the transaction), not the
    # version 2 it saw inside it: b's version 2 is a change a never saw
    with pytest.raises(psycopg.errors.SerializationFailure):
        race(dsn)
    assert _n(direct) == 8


def test_reads_after_server_code_are_undone_with_its_rollback_no_false_conflict(writer_dbs):
    proxy, dsn, direct = writer_dbs
    with psycopg.connect(dsn, autocommit=True) as a:
        _after_server_code(a)
        before = write_counts(proxy.metrics_url)
        a.execute("UPDATE counters SET n = 5 WHERE id = 1")  # nobody changed the row
        assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "checked"): 1}
    assert _n(direct) == 5


@pytest.mark.parametrize("read", ["text", "binary"])
def test_execute_checks_values_compared_as_printed(dbs, read):
    """A timestamptz is compared as printed (rules/README.md, "How read values are
    compared"): read as text, under the read's settings; read in binary, under the canonical
    ones. Both reach the hidden statement as EXECUTE arguments."""
    proxy, dsn, direct = dbs
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("PREPARE p AS UPDATE items SET qty = qty + 1 WHERE id = $1")
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("SELECT * FROM items WHERE id IN (1, 2)", binary=read == "binary").fetchall()
        a.execute("SET TimeZone = 'UTC'")  # a setting changed since the read: no conflict
        before = write_counts(proxy.metrics_url)
        a.execute("EXECUTE p(1)")
        b.execute("SELECT * FROM items WHERE id = 2").fetchall()
        b.execute("UPDATE items SET modified_at = '2001-01-01' WHERE id = 2")
        with pytest.raises(psycopg.errors.SerializationFailure) as err:
            a.execute("EXECUTE p(2)")
        assert "modified_at" in (err.value.diag.message_detail or "")
        assert _moved(before, write_counts(proxy.metrics_url)) == {("public.items", "checked"): 3}
    with psycopg.connect(direct) as c:
        assert c.execute("SELECT qty FROM items ORDER BY id").fetchall() == [(11,), (5,)]


def test_a_hidden_statement_that_could_not_be_prepared_is_prepared_again(dbs):
    """The proxy's hidden PREPARE can fail (here the client itself took the name the proxy
    would use): the client sees why, and the next EXECUTE prepares the checked form under a
    new name instead of running whatever holds the old one."""
    proxy, dsn, direct = dbs
    with psycopg.connect(dsn, autocommit=True) as a:
        a.execute("PREPARE optimist_1 AS SELECT 1")  # the name of the proxy's first hidden one
        a.execute("PREPARE p AS UPDATE counters SET n = $1 WHERE id = $2")
        a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        with pytest.raises(psycopg.Error, match="could not prepare the checked form"):
            a.execute("EXECUTE p(5, 1)")
        before = write_counts(proxy.metrics_url)
        assert a.execute("EXECUTE p(6, 1)").rowcount == 1
        assert _moved(before, write_counts(proxy.metrics_url)) == {(C, "checked"): 1}
    assert _n(direct) == 6
