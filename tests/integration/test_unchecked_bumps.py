"""Writes of a version table that cannot be checked (unverified upserts, MERGEs nobody can
pin) still bump the version, so the next checked write of another session sees their change.
Directly against PostgreSQL the race is a silent lost update; through the proxy the stale
write fails with 40001 and applies nothing."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.test_checked_shapes import checked_proxy, dbs  # noqa: F401  # fixtures
from tests.integration.test_write_shapes import write_counts

C = "public.counters"

# (statement, parameters, prepare, reason): each adds 10 to counters row 1, unchecked
UNCHECKED = {
    "upsert-rows-simple": (
        "INSERT INTO counters VALUES (1, 0), (2, 0) ON CONFLICT (id) "
        "DO UPDATE SET n = counters.n + 10",
        None,
        None,
        "upsert",
    ),
    "upsert-constraint-extended": (
        "INSERT INTO counters AS c VALUES (1, 0) ON CONFLICT ON CONSTRAINT counters_pkey "
        "DO UPDATE SET n = c.n + 10 RETURNING n",
        None,
        True,
        "upsert",
    ),
    "upsert-select-bound": (
        "INSERT INTO counters (id, n) SELECT %s, 0 ON CONFLICT (id) "
        "DO UPDATE SET n = counters.n + 10, version = excluded.version",
        (1,),
        True,
        "upsert",
    ),
    "bulk-update-simple": (
        "UPDATE counters SET n = n + 10 WHERE n >= 0",
        None,
        None,
        "no_key_pin",
    ),
    "bulk-update-extended": (
        "UPDATE counters SET n = n + %s WHERE n >= 0",
        (10,),
        True,
        "no_key_pin",
    ),
    "merge-table-source": (
        "MERGE INTO counters c USING (VALUES (1)) v(id) ON c.id = v.id "
        "WHEN MATCHED THEN UPDATE SET n = c.n + 10",
        None,
        None,
        "merge",
    ),
    "merge-table-source-bound": (
        "MERGE INTO counters c USING (SELECT %s::int AS id) v ON c.id = v.id "
        "WHEN MATCHED AND c.n < 0 THEN DELETE WHEN MATCHED THEN UPDATE SET n = c.n + 10",
        (1,),
        True,
        "merge",
    ),
    # writes inside a WITH that cannot be checked (no key pin, an upsert, the second write of
    # one statement): with_clause, and still bumped
    "with-bulk-simple": (
        "WITH u AS (UPDATE counters SET n = n + 10 WHERE n >= 0 RETURNING id) "
        "SELECT count(*) FROM u",
        None,
        None,
        "with_clause",
    ),
    "with-upsert-extended": (
        "WITH i AS (INSERT INTO counters VALUES (1, 0) ON CONFLICT (id) "
        "DO UPDATE SET n = counters.n + 10 RETURNING n) SELECT * FROM i",
        None,
        True,
        "with_clause",
    ),
    "with-second-table-bound": (
        "WITH p AS (UPDATE pairs SET payload = 'p' WHERE a = %s AND b = 'x' RETURNING a), "
        "u AS (UPDATE counters SET n = n + 10 WHERE id = %s RETURNING id) "
        "SELECT * FROM u, p",
        (1, 1),
        True,
        "with_clause",
    ),
}


def _row1(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT n FROM counters WHERE id = 1").fetchone()[0]


def _race(dsn: str, shape: str) -> None:
    """a reads row 1; b changes it with an unchecked write; a writes row 1 from its read."""
    sql, params, prepare, _ = UNCHECKED[shape]
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        assert a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute(sql, params, prepare=prepare)
        a.execute("UPDATE counters SET n = 5 WHERE id = 1", prepare=prepare)


@pytest.mark.parametrize("shape", list(UNCHECKED))
def test_a_checked_write_after_an_unchecked_one_sees_its_change(dbs, shape):  # noqa: F811
    proxy, dsn, direct = dbs
    _race(direct, shape)
    assert _row1(direct) == 5  # b's +10 silently overwritten
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id = 1")
    reason = UNCHECKED[shape][3]
    before = write_counts(proxy.metrics_url).get((C, reason), 0)
    with pytest.raises(psycopg.errors.SerializationFailure) as err:
        _race(dsn, shape)
    assert '"kind": "modified"' in (err.value.diag.message_detail or "")
    assert _row1(direct) == 10  # b's change, nothing of a's
    assert write_counts(proxy.metrics_url).get((C, reason), 0) == before + 1


@pytest.mark.parametrize("shape", list(UNCHECKED))
def test_an_unchecked_write_forgets_what_it_bumped(dbs, shape):  # noqa: F811
    """Its own bump must not make the session's next write a false conflict: the row is
    forgotten (the next write counts not_read), not left at the version it read (a bulk
    write or an unpinned MERGE cannot say which rows it changed: the table's are forgotten)."""
    proxy, dsn, direct = dbs
    sql, params, prepare, _ = UNCHECKED[shape]
    before = write_counts(proxy.metrics_url).get((C, "not_read"), 0)
    with psycopg.connect(dsn, autocommit=True) as a:
        assert a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        a.execute(sql, params, prepare=prepare)
        assert a.execute("UPDATE counters SET n = 5 WHERE id = 1").rowcount == 1
    assert write_counts(proxy.metrics_url).get((C, "not_read"), 0) == before + 1
    assert _row1(direct) == 5


@pytest.mark.parametrize("shape", ["bulk-update-simple", "merge-table-source-bound"])
def test_a_rolled_back_unchecked_write_restores_what_was_read(dbs, shape):  # noqa: F811
    """Rolled back, the bump is gone too: what the session read before is known again, and
    its next write of the row is checked (not a false conflict, not not_read)."""
    proxy, dsn, direct = dbs
    sql, params, prepare, _ = UNCHECKED[shape]
    before = write_counts(proxy.metrics_url)
    with psycopg.connect(dsn, autocommit=True) as a:
        assert a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        a.execute("BEGIN")
        a.execute(sql, params, prepare=prepare)
        a.execute("ROLLBACK")
        assert a.execute("UPDATE counters SET n = 5 WHERE id = 1").rowcount == 1
    after = write_counts(proxy.metrics_url)
    assert after.get((C, "checked"), 0) == before.get((C, "checked"), 0) + 1
    assert after.get((C, "not_read"), 0) == before.get((C, "not_read"), 0)
    assert _row1(direct) == 5
