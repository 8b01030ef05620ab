"""MERGE whose ON pins the target's key by equality to a literal or parameter: checked like
an UPDATE of that row (rules/README.md, "Which writes are checked"). Each race: a reads row 1,
b changes it, a merges. Directly against PostgreSQL b's change is lost; through the proxy a's
MERGE fails with 40001, applies nothing, and is counted checked."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.test_checked_shapes import checked_proxy, dbs  # noqa: F401  # fixtures
from tests.integration.test_write_shapes import write_counts

C = "public.counters"

# (statement, parameters, prepare): each adds 10 to counters row 1 when it exists
MERGES = {
    "literal-simple": (
        "MERGE INTO counters c USING (SELECT 1) s ON c.id = 1 "
        "WHEN MATCHED THEN UPDATE SET n = c.n + 10",
        None,
        None,
    ),
    "literal-extended": (
        "MERGE INTO counters c USING (SELECT 1) s ON c.id = 1 "
        "WHEN MATCHED THEN UPDATE SET n = c.n + 10",
        None,
        True,
    ),
    "bound-with-insert": (
        "MERGE INTO counters AS c USING (SELECT %s::int AS k) s ON c.id = %s "
        "WHEN MATCHED AND c.n < -100 THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET n = c.n + 10 "
        "WHEN NOT MATCHED THEN INSERT (id, n) VALUES (s.k, 0)",
        (1, 1),
        True,
    ),
    "unqualified-bound-unnamed": (
        "MERGE INTO counters USING (SELECT 0 AS z) s ON id = %s AND s.z = 0 "
        "WHEN MATCHED THEN UPDATE SET n = counters.n + 10",
        (1,),
        False,
    ),
}


def _merge(conn, shape: str, key: int = 1):
    sql, params, prepare = MERGES[shape]
    if params is None:
        sql = sql.replace("c.id = 1", f"c.id = {key}")
    else:
        params = (key,) * len(params)
    return conn.execute(sql, params, prepare=prepare)


def _row1(dsn: str) -> int | None:
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT n FROM counters WHERE id = 1").fetchone()
        return None if row is None else row[0]


def _race(dsn: str, shape: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM counters WHERE id = 1", prepare=MERGES[shape][2]).fetchall()
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        _merge(a, shape)


@pytest.mark.parametrize("shape", list(MERGES))
def test_merge_over_a_change_it_never_saw_conflicts(dbs, shape):  # noqa: F811
    proxy, dsn, direct = dbs
    _race(direct, shape)  # the lost update is real
    assert _row1(direct) == 17
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id = 1")
    before = write_counts(proxy.metrics_url).get((C, "checked"), 0)
    with pytest.raises(psycopg.errors.SerializationFailure) as err:
        _race(dsn, shape)
    assert '"kind": "modified"' in (err.value.diag.message_detail or "")
    assert _row1(direct) == 7  # b's change, nothing of a's
    assert write_counts(proxy.metrics_url).get((C, "checked"), 0) == before + 2


@pytest.mark.parametrize("shape", list(MERGES))
def test_merge_of_a_fresh_row_passes_bumps_and_forgets(dbs, shape):  # noqa: F811
    proxy, dsn, direct = dbs
    before = write_counts(proxy.metrics_url)
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        a.execute("SELECT * FROM counters WHERE id = 1", prepare=MERGES[shape][2]).fetchall()
        assert _merge(a, shape).rowcount == 1  # checked
        # nothing to learn from (no RETURNING before PostgreSQL 17): the row is forgotten,
        # never left at the version the bump moved on (a false conflict)
        assert _merge(a, shape).rowcount == 1  # not_read
        with pytest.raises(psycopg.errors.SerializationFailure):  # the bump: b sees a's change
            b.execute("UPDATE counters SET n = 0 WHERE id = 1")
        a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        assert _merge(a, shape).rowcount == 1  # checked again
    after = write_counts(proxy.metrics_url)
    assert after[(C, "checked")] == before.get((C, "checked"), 0) + 3  # b's write too
    assert after[(C, "not_read")] == before.get((C, "not_read"), 0) + 1
    assert _row1(direct) == 30


def test_merge_of_a_row_deleted_meanwhile(dbs):  # noqa: F811
    """A vanished row is not matched, as PostgreSQL has it: a WHEN NOT MATCHED clause runs as
    written (the row is inserted anew, as by an upsert); without one nothing happens."""
    proxy, dsn, direct = dbs
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("DELETE FROM counters WHERE id = 1")
        assert _merge(a, "literal-simple").rowcount == 0  # nothing overwritten
        assert _merge(a, "bound-with-insert").rowcount == 1  # nothing to overwrite: inserted
    assert _row1(direct) == 0


def test_merge_rolled_back_keeps_what_the_session_read(dbs):  # noqa: F811
    proxy, dsn, direct = dbs
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        with pytest.raises(psycopg.errors.QueryCanceled):
            with a.transaction():
                _merge(a, "literal-simple")
                raise psycopg.errors.QueryCanceled("roll back")
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):  # still checked against its read
            _merge(a, "literal-simple")
    assert _row1(direct) == 7
