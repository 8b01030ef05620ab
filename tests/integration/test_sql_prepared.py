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
