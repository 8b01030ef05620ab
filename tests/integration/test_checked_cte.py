"""A write inside a WITH statement that pins a protected table's key by equality is checked
like the same UPDATE / DELETE on its own (rules/README.md, "Which writes are checked"). Each
race: a reads row 1, b changes it, a writes it through a WITH. Directly against PostgreSQL b's
change is lost; through the proxy a's statement fails with 40001, applies nothing (not even
its other CTEs), and is counted checked."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from tests.integration.test_checked_shapes import checked_proxy, dbs  # noqa: F401  # fixtures
from tests.integration.test_write_shapes import write_counts

C = "public.counters"
P = "public.pairs"

# (statement, parameters, prepare, what a fresh write returns): each adds 10 to counters row 1
# (n 0 -> 10); psycopg sends a statement without parameters as a simple Query unless
# prepare=True, one with parameters in the extended protocol (prepare=False: unnamed)
WRITES = {
    "cte-update-simple": (
        "WITH u AS (UPDATE counters SET n = n + 10 WHERE id = 1 RETURNING id, n) SELECT * FROM u",
        None,
        None,
        [(1, 10)],
    ),
    "cte-update-extended": (
        "WITH u AS (UPDATE counters SET n = n + 10 WHERE id = 1 RETURNING *) SELECT n, 'x' FROM u",
        None,
        True,
        [(10, "x")],
    ),
    # several CTEs, one of them a bulk write of another protected table (with_clause, bumped)
    "several-ctes-bound-unnamed": (
        "WITH s AS (SELECT 10 AS step), "
        "u AS (UPDATE counters c SET n = c.n + (SELECT step FROM s) WHERE c.id = %s "
        "RETURNING c.id), "
        "w AS (UPDATE pairs SET payload = payload WHERE a = -1 RETURNING a) "
        "SELECT id, (SELECT count(*) FROM w) FROM u",
        (1,),
        False,
        [(1, 0)],
    ),
    # the WITH statement's own main statement is the write
    "main-update-bound-prepared": (
        "WITH s AS (SELECT 10 AS step) "
        "UPDATE counters SET n = counters.n + s.step FROM s WHERE counters.id = %s "
        "RETURNING counters.n",
        (1,),
        True,
        [(10,)],
    ),
}


def _write(conn, shape: str):
    sql, params, prepare, _ = WRITES[shape]
    return conn.execute(sql, params, prepare=prepare)


def _row1(dsn: str) -> int | None:
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT n FROM counters WHERE id = 1").fetchone()
        return None if row is None else row[0]


def _read(conn, shape: str) -> None:
    assert conn.execute("SELECT * FROM counters WHERE id = 1", prepare=WRITES[shape][2]).fetchall()


def _race(dsn: str, shape: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        _read(a, shape)
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        _write(a, shape)


def _counted(proxy, before, after) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


@pytest.mark.parametrize("shape", list(WRITES))
def test_cte_write_over_a_change_it_never_saw_conflicts(dbs, shape):  # noqa: F811
    proxy, dsn, direct = dbs
    _race(direct, shape)  # the lost update is real: b's 7 became 17 unseen
    assert _row1(direct) == 17
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id = 1")
        c.execute("INSERT INTO pairs VALUES (-1, 'z', 1, 'w')")  # for the bulk CTE to write
    before = write_counts(proxy.metrics_url)
    with pytest.raises(psycopg.errors.SerializationFailure) as err:
        _race(dsn, shape)
    assert '"kind": "modified"' in (err.value.diag.message_detail or "")
    assert _row1(direct) == 7  # b's change, nothing of a's
    with psycopg.connect(direct) as c:  # nor of its other CTEs: the bulk write's bump
        assert c.execute("SELECT v FROM pairs WHERE a = -1").fetchone()[0] == 1
    counted = _counted(proxy, before, write_counts(proxy.metrics_url))
    expected = {(C, "checked"): 2}  # b's write and a's
    if "several" in shape:
        expected[(P, "with_clause")] = 1
    assert counted == expected


@pytest.mark.parametrize("shape", list(WRITES))
def test_cte_write_of_a_fresh_row_passes_bumps_and_forgets(dbs, shape):  # noqa: F811
    proxy, dsn, direct = dbs
    before = write_counts(proxy.metrics_url)
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        _read(a, shape)
        assert _write(a, shape).fetchall() == WRITES[shape][3]  # checked: the client's rows
        # nothing to learn from (no RETURNING may be added in a CTE): the row is forgotten,
        # never left at the version the bump moved on (a false conflict)
        assert len(_write(a, shape).fetchall()) == 1  # not_read
        with pytest.raises(psycopg.errors.SerializationFailure):  # the bump: b sees a's change
            b.execute("UPDATE counters SET n = 0 WHERE id = 1")
        _read(a, shape)
        assert len(_write(a, shape).fetchall()) == 1  # checked again
    counted = _counted(proxy, before, write_counts(proxy.metrics_url))
    expected = {(C, "checked"): 3, (C, "not_read"): 1}  # b's refused write is checked too
    if "several" in shape:
        expected[(P, "with_clause")] = 3
    assert counted == expected
    assert _row1(direct) == 30


def test_cte_delete_over_a_change_it_never_saw_conflicts(dbs):  # noqa: F811
    proxy, dsn, direct = dbs
    sql = "WITH d AS (DELETE FROM counters WHERE id = %s RETURNING id) SELECT count(*) FROM d"
    for target in (direct, dsn):
        with psycopg.connect(target, autocommit=True) as c:
            c.execute("INSERT INTO counters VALUES (1, 0, 1) ON CONFLICT DO NOTHING")
        with (
            psycopg.connect(target, autocommit=True) as a,
            psycopg.connect(target, autocommit=True) as b,
        ):
            a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
            b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
            b.execute("UPDATE counters SET n = 7 WHERE id = 1")
            if target == direct:
                assert a.execute(sql, (1,)).fetchall() == [(1,)]  # b's change deleted unseen
                assert _row1(direct) is None
                continue
            with pytest.raises(psycopg.errors.SerializationFailure):
                a.execute(sql, (1,))
            assert _row1(direct) == 7
            a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
            assert a.execute(sql, (1,)).fetchall() == [(1,)]  # fresh: deleted
    assert _row1(direct) is None


def test_cte_write_of_a_row_deleted_meanwhile(dbs):  # noqa: F811
    """The presence check works inside a CTE: a row deleted since it was read raises the
    'deleted' conflict, as for a top-level UPDATE; nothing of the statement is applied."""
    proxy, dsn, direct = dbs
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute("INSERT INTO pairs VALUES (-1, 'z', 1, 'w')")
    for shape in WRITES:
        with psycopg.connect(direct, autocommit=True) as c:
            c.execute("INSERT INTO counters VALUES (1, 0, 1) ON CONFLICT DO NOTHING")
        with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
            _read(a, shape)
            b.execute("DELETE FROM counters WHERE id = 1")
            with pytest.raises(psycopg.errors.SerializationFailure) as err:
                _write(a, shape)
            assert '"kind": "deleted"' in (err.value.diag.message_detail or ""), shape
    with psycopg.connect(direct) as c:
        assert c.execute("SELECT v FROM pairs WHERE a = -1").fetchone()[0] == 1


def test_cte_write_rolled_back_keeps_what_the_session_read(dbs):  # noqa: F811
    proxy, dsn, direct = dbs
    shape = "cte-update-simple"
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        _read(a, shape)
        with pytest.raises(psycopg.errors.QueryCanceled):
            with a.transaction():
                _write(a, shape)  # forgets row 1, until the rollback
                raise psycopg.errors.QueryCanceled("roll back")
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):  # still checked against its read
            _write(a, shape)
    assert _row1(direct) == 7


ASYNCPG_SQL = (
    "WITH u AS (UPDATE counters SET n = n + $2 WHERE id = $1 RETURNING id, n), "
    "d AS (DELETE FROM pairs WHERE a = $1 AND b = 'nope' RETURNING a) "
    "SELECT u.id, u.n, (SELECT count(*) FROM d) AS gone FROM u"
)


async def _asyncpg_race(dsn: str) -> None:
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await a.fetch("SELECT * FROM counters WHERE id = $1", 1)
        await b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        await a.fetch(ASYNCPG_SQL, 1, 10)
    finally:
        await a.close()
        await b.close()


def test_cte_write_through_asyncpg(dbs):  # noqa: F811
    """asyncpg prepares every statement (extended protocol, binary parameters)."""
    proxy, dsn, direct = dbs
    asyncio.run(_asyncpg_race(direct))
    assert _row1(direct) == 17  # the lost update is real
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id = 1")
    before = write_counts(proxy.metrics_url)
    with pytest.raises(asyncpg.SerializationError):
        asyncio.run(_asyncpg_race(dsn))
    assert _row1(direct) == 7

    async def fresh() -> list:
        a = await asyncpg.connect(dsn)
        try:
            await a.fetch("SELECT * FROM counters WHERE id = $1", 1)
            first = await a.fetch(ASYNCPG_SQL, 1, 10)
            second = await a.fetch(ASYNCPG_SQL, 1, 10)  # forgotten: runs, not_read
            return [tuple(r) for r in first + second]
        finally:
            await a.close()

    assert asyncio.run(fresh()) == [(1, 17, 0), (1, 27, 0)]
    counted = _counted(proxy, before, write_counts(proxy.metrics_url))
    # pairs is pinned too, but one write per statement is checked: the other is with_clause
    assert counted == {(C, "checked"): 2, (C, "not_read"): 2, (P, "with_clause"): 3}


@pytest.mark.parametrize("prepare", [None, True])
def test_a_write_that_checks_no_row_returns_the_clients_columns(dbs, prepare):  # noqa: F811
    """A write whose checked form adds no column (a row not read; a WITH statement) hands the
    client its result as the server sent it: its columns were once all cut off."""
    proxy, dsn, direct = dbs
    with psycopg.connect(dsn, autocommit=True) as a:
        cur = a.execute("UPDATE counters SET n = 1 WHERE id = 3 RETURNING n, id", prepare=prepare)
        assert [c.name for c in cur.description] == ["n", "id"]
        assert cur.fetchall() == [(1, 3)]
        cur = a.execute(
            "WITH u AS (UPDATE counters SET n = 2 WHERE id = 3 RETURNING n) SELECT n FROM u",
            prepare=prepare,
        )
        assert cur.fetchall() == [(2,)]
