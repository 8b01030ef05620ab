"""Write shapes beyond `WHERE id = 1` that are checked (rules/README.md, "Which writes are
checked"): `= ANY(<array>)` (literal or bound, text or binary), upserts. Each race: a reads,
b changes a row a read, a writes with the shape. Directly against PostgreSQL b's change is
lost; through the proxy a's write fails with 40001, applies nothing, and is counted checked."""

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
  - table: pairs
    version_column: v
"""

C = "public.counters"


@pytest.fixture(scope="module")
def checked_proxy(session_proxy_factory, tmp_path_factory):
    return session_proxy_factory(
        rules=write_rules(tmp_path_factory.mktemp("checked_shapes"), RULES), metrics=True
    )


@pytest.fixture
def dbs(pg, checked_proxy):
    db = make_database(pg.dsn, SCHEMA)
    return checked_proxy, checked_proxy.dsn_for(db), pg.dsn.rsplit("/", 1)[0] + "/" + db


# (statement, parameters, prepare): each writes counters rows 1 and 2 (n = n + 10)
ARRAY_WRITES = {
    "literal-simple": ("UPDATE counters SET n = n + 10 WHERE id = ANY('{1,2}')", None, None),
    "literal-extended": ("UPDATE counters SET n = n + 10 WHERE id = ANY('{1,2}')", None, True),
    "literal-cast": ("UPDATE counters SET n = n + 10 WHERE id = ANY('{2,1}'::int[])", None, None),
    "bound-text": ("UPDATE counters SET n = n + 10 WHERE id = ANY(%s)", ([1, 2],), True),
    "bound-binary": ("UPDATE counters SET n = n + 10 WHERE id = ANY(%b)", ([1, 2],), True),
    "bound-unnamed": ("UPDATE counters SET n = n + 10 WHERE id = ANY(%s)", ([2, 1],), False),
    "bound-with-null": (
        "UPDATE counters c SET n = c.n + 10 WHERE c.id = ANY(%b) AND c.n >= 0",
        ([1, None, 2],),
        True,
    ),
}


def _write(conn, shape: str):
    sql, params, prepare = ARRAY_WRITES[shape]
    return conn.execute(sql, params, prepare=prepare)


def _read_both(conn, prepare) -> None:
    assert (
        len(conn.execute("SELECT * FROM counters WHERE id IN (1, 2)", prepare=prepare).fetchall())
        == 2
    )


def _array_race(dsn: str, shape: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        _read_both(a, ARRAY_WRITES[shape][2])
        b.execute("SELECT * FROM counters WHERE id = 2").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 2")
        _write(a, shape)


def _counters(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as c:
        return [r[0] for r in c.execute("SELECT n FROM counters WHERE id IN (1, 2) ORDER BY id")]


@pytest.mark.parametrize("shape", list(ARRAY_WRITES))
def test_key_array_write_over_a_change_it_never_saw_conflicts(dbs, shape):
    proxy, dsn, direct = dbs
    _array_race(direct, shape)  # the lost update is real: b's 7 became 17 unseen
    assert _counters(direct) == [10, 17]
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id IN (1, 2)")
    before = write_counts(proxy.metrics_url).get((C, "checked"), 0)
    with pytest.raises(psycopg.errors.SerializationFailure) as err:
        _array_race(dsn, shape)
    assert '"id": 2' in (err.value.diag.message_detail or "")
    assert _counters(direct) == [0, 7]  # nothing applied: not even row 1
    # b's write and a's, both checked
    assert write_counts(proxy.metrics_url).get((C, "checked"), 0) == before + 2


@pytest.mark.parametrize("shape", list(ARRAY_WRITES))
def test_key_array_write_of_fresh_rows_passes_and_learns(dbs, shape):
    proxy, dsn, direct = dbs
    before = write_counts(proxy.metrics_url).get((C, "checked"), 0)
    with psycopg.connect(dsn, autocommit=True) as a:
        _read_both(a, ARRAY_WRITES[shape][2])
        assert _write(a, shape).rowcount == 2
        assert _write(a, shape).rowcount == 2  # its own write taught it the new versions
    assert _counters(direct) == [20, 20]
    assert write_counts(proxy.metrics_url).get((C, "checked"), 0) == before + 2


def test_key_array_with_a_row_not_read_checks_the_others(dbs):
    proxy, dsn, direct = dbs
    before = write_counts(proxy.metrics_url)
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("SELECT * FROM counters").fetchall()
        b.execute("UPDATE counters SET n = 5 WHERE id = 3")
        a.execute("UPDATE counters SET n = n + 1 WHERE id = ANY(%s)", ([1, 3],))  # 3 unread
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 9 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("UPDATE counters SET n = n + 1 WHERE id = ANY(%s)", ([1, 3],))
    after = write_counts(proxy.metrics_url)
    assert after.get((C, "not_read"), 0) == before.get((C, "not_read"), 0) + 2
    with psycopg.connect(direct) as c:
        assert c.execute("SELECT n FROM counters WHERE id IN (1, 3) ORDER BY id").fetchall() == [
            (9,),
            (6,),
        ]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE counters SET n = n + 1 WHERE id = ANY('[1:2]={1,2}')",  # decorated: not read
        "UPDATE pairs SET payload = 'z' WHERE a = 1 AND b = ANY('{x,y}')",  # composite key
    ],
)
def test_key_arrays_it_cannot_read_stay_unverified(dbs, sql):
    proxy, dsn, _ = dbs
    table = "public.pairs" if "pairs" in sql else C
    before = write_counts(proxy.metrics_url).get((table, "key_array"), 0)
    with psycopg.connect(dsn, autocommit=True) as a:
        a.execute("SELECT * FROM counters").fetchall()
        a.execute("SELECT * FROM pairs").fetchall()
        assert a.execute(sql).rowcount == 2
    assert write_counts(proxy.metrics_url).get((table, "key_array"), 0) == before + 1


# (statement, parameters, prepare): each adds 10 to counters row 1 when it exists
UPSERTS = {
    "simple": (
        "INSERT INTO counters VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = counters.n + 10",
        None,
        None,
    ),
    "extended": (
        "INSERT INTO counters VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = counters.n + 10",
        None,
        True,
    ),
    "bound": (
        "INSERT INTO counters AS c (n, id) VALUES (0, %s) ON CONFLICT (id) "
        "DO UPDATE SET n = c.n + 10 RETURNING n",
        (1,),
        True,
    ),
    "client-where": (
        "INSERT INTO counters VALUES (1, 10) ON CONFLICT (id) DO UPDATE "
        "SET n = counters.n + excluded.n WHERE counters.n >= 0 OR counters.id = 1",
        None,
        None,
    ),
}


def _upsert(conn, shape: str, key: int = 1):
    sql, params, prepare = UPSERTS[shape]
    if params is None:
        sql = sql.replace("VALUES (1,", f"VALUES ({key},")
    else:
        params = (key,)
    return conn.execute(sql, params, prepare=prepare)


def _row1(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT n FROM counters WHERE id = 1").fetchone()[0]


def _upsert_race(dsn: str, shape: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM counters WHERE id = 1", prepare=UPSERTS[shape][2]).fetchall()
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("UPDATE counters SET n = 7 WHERE id = 1")
        _upsert(a, shape)


@pytest.mark.parametrize("shape", list(UPSERTS))
def test_upsert_over_a_change_it_never_saw_conflicts(dbs, shape):
    proxy, dsn, direct = dbs
    _upsert_race(direct, shape)  # the lost update is real
    assert _row1(direct) == 17
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute("UPDATE counters SET n = 0, version = 1 WHERE id = 1")
    before = write_counts(proxy.metrics_url).get((C, "checked"), 0)
    with pytest.raises(psycopg.errors.SerializationFailure) as err:
        _upsert_race(dsn, shape)
    assert '"kind": "modified"' in (err.value.diag.message_detail or "")
    assert _row1(direct) == 7  # b's change, nothing of a's
    assert write_counts(proxy.metrics_url).get((C, "checked"), 0) == before + 2


@pytest.mark.parametrize("shape", list(UPSERTS))
def test_upsert_of_fresh_rows_passes_and_of_rows_never_read_counts(dbs, shape):
    proxy, dsn, direct = dbs
    before = write_counts(proxy.metrics_url)
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM counters WHERE id = 1", prepare=UPSERTS[shape][2]).fetchall()
        _upsert(a, shape)
        _upsert(a, shape)  # its own upsert taught it the new version
        # its upsert bumped the version: b's stale write cannot overwrite it
        b.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        _upsert(a, shape)
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE counters SET n = 0 WHERE id = 1")
        _upsert(a, shape, key=9)  # absent, never read: inserted, unverified
    after = write_counts(proxy.metrics_url)
    assert after[(C, "checked")] == before.get((C, "checked"), 0) + 4
    assert after.get((C, "upsert"), 0) == before.get((C, "upsert"), 0) + 1
    assert _row1(direct) == 30
    with psycopg.connect(direct) as c:
        assert c.execute("SELECT count(*) FROM counters WHERE id = 9").fetchone()[0] == 1


def test_upsert_of_a_row_deleted_meanwhile_inserts_it(dbs):
    proxy, dsn, direct = dbs
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute("SELECT * FROM counters WHERE id = 1").fetchall()
        b.execute("DELETE FROM counters WHERE id = 1")
        _upsert(a, "simple")  # nothing to overwrite: the row is inserted anew
    assert _row1(direct) == 0
