"""Optimistic locking through the real proxy with real drivers: conflicts, kinds, details, and
no false conflicts."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import psycopg
import pytest

from tests.support.locking import VERSION_RULES, make_database, write_rules
from tests.support.pgutil import connect


class Locking:
    def __init__(self, pg, proxy_factory, tmp_path):
        self.pg, self.factory, self.tmp_path = pg, proxy_factory, tmp_path
        self.db = make_database(pg.dsn)
        self.direct = pg.dsn.rsplit("/", 1)[0] + "/" + self.db
        self.proxy = None

    def start(self, rules: str = VERSION_RULES, *args):
        self.proxy = self.factory(*args, rules=write_rules(self.tmp_path, rules))
        return self

    @property
    def dsn(self) -> str:
        return self.proxy.dsn_for(self.db)

    def direct_rows(self, sql):
        with connect(self.direct) as c:
            return c.execute(sql).fetchall()


@pytest.fixture
def locking(pg, proxy_factory, tmp_path):
    return Locking(pg, proxy_factory, tmp_path)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def detail_of(exc) -> dict:
    return json.loads(exc.detail)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_second_writer_gets_modified_conflict_with_detail(locking, protocol):
    locking.start()

    async def scenario():
        a = await asyncpg.connect(locking.dsn)
        b = await asyncpg.connect(locking.dsn)
        try:
            await a.fetch("SELECT * FROM accounts WHERE id = 1")
            await b.fetch("SELECT * FROM accounts WHERE id = 1")
            if protocol == "simple":
                await a.execute("UPDATE accounts SET balance = 150 WHERE id = 1")
                with pytest.raises(asyncpg.SerializationError) as err:
                    await b.execute("UPDATE accounts SET balance = 50 WHERE id = 1")
            else:
                await a.execute("UPDATE accounts SET balance = $1 WHERE id = $2", 150, 1)
                with pytest.raises(asyncpg.SerializationError) as err:
                    await b.execute("UPDATE accounts SET balance = $1 WHERE id = $2", 50, 1)
            return err.value
        finally:
            await a.close()
            await b.close()

    exc = run(scenario())
    assert exc.sqlstate == "40001"
    assert "modified by another session" in str(exc) and "public.accounts" in str(exc)
    detail = detail_of(exc)
    assert detail["table"] == "public.accounts" and detail["kind"] == "modified"
    assert detail["key"] == {"id": 1}
    assert detail["columns"]["version"]["read"] == 1
    assert detail["columns"]["version"]["current"] == 2
    assert exc.hint and "re-read" in exc.hint.lower()
    assert "optimist_" not in (getattr(exc, "context", None) or "")
    # the first writer's values are what the row holds, with the version bumped once
    assert locking.direct_rows("SELECT balance, version FROM accounts WHERE id = 1") == [(150, 2)]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_update_after_delete_gets_deleted_conflict(locking, protocol):
    locking.start()

    async def scenario():
        a = await asyncpg.connect(locking.dsn)
        b = await asyncpg.connect(locking.dsn)
        try:
            await b.fetch("SELECT id, version FROM accounts WHERE id = 2")
            await a.execute("DELETE FROM accounts WHERE id = 2")
            with pytest.raises(asyncpg.SerializationError) as err:
                if protocol == "simple":
                    await b.execute("UPDATE accounts SET owner = 'X' WHERE id = 2")
                else:
                    await b.execute("UPDATE accounts SET owner = $1 WHERE id = $2", "X", 2)
            return err.value
        finally:
            await a.close()
            await b.close()

    exc = run(scenario())
    assert "deleted by another session" in str(exc)
    assert detail_of(exc)["kind"] == "deleted" and detail_of(exc)["key"] == {"id": 2}
    assert locking.direct_rows("SELECT count(*) FROM accounts WHERE id = 2") == [(0,)]


def test_psycopg_conflict_in_transaction_aborts_it(locking):
    locking.start()
    with psycopg.connect(locking.dsn) as a, psycopg.connect(locking.dsn) as b:
        a.autocommit = True
        b.execute("SELECT * FROM accounts WHERE id = 3").fetchall()
        a.execute("SELECT * FROM accounts WHERE id = 3").fetchall()
        a.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 3")
        with pytest.raises(psycopg.errors.SerializationFailure) as err:
            b.execute("UPDATE accounts SET balance = 0 WHERE id = 3")
        assert err.value.diag.sqlstate == "40001"
        # the server raised it: the transaction is aborted, as PostgreSQL would have it
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        b.rollback()
    assert locking.direct_rows("SELECT balance FROM accounts WHERE id = 3") == [(301,)]


def test_delete_of_a_modified_row_conflicts(locking):
    locking.start()

    async def scenario():
        a = await asyncpg.connect(locking.dsn)
        b = await asyncpg.connect(locking.dsn)
        try:
            await a.fetch("SELECT * FROM accounts WHERE id = 1")
            await b.fetch("SELECT * FROM accounts WHERE id = 1")
            await a.execute("UPDATE accounts SET owner = $1 WHERE id = $2", "Zed", 1)
            with pytest.raises(asyncpg.SerializationError):
                await b.execute("DELETE FROM accounts WHERE id = $1", 1)
        finally:
            await a.close()
            await b.close()

    run(scenario())
    assert locking.direct_rows("SELECT owner FROM accounts WHERE id = 1") == [("Zed",)]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_no_false_conflict_for_own_writes_and_after_rollback(locking, protocol):
    locking.start()

    async def scenario():
        a = await asyncpg.connect(locking.dsn)
        try:
            await a.fetch("SELECT * FROM accounts WHERE id = 1")
            for amount in (101, 102, 103):
                if protocol == "simple":
                    await a.execute(f"UPDATE accounts SET balance = {amount} WHERE id = 1")
                else:
                    await a.execute("UPDATE accounts SET balance = $1 WHERE id = $2", amount, 1)
            # a rolled-back write must not leave the proxy believing the version moved
            tr = a.transaction()
            await tr.start()
            await a.execute("UPDATE accounts SET balance = $1 WHERE id = $2", 999, 1)
            await tr.rollback()
            await a.execute("UPDATE accounts SET balance = $1 WHERE id = $2", 104, 1)
            # and a savepoint rolled back inside a committed transaction likewise
            async with a.transaction():
                sp = a.transaction()
                await sp.start()
                await a.execute("UPDATE accounts SET balance = 555 WHERE id = 1")
                await sp.rollback()
                await a.execute("UPDATE accounts SET balance = 105 WHERE id = 1")
        finally:
            await a.close()

    run(scenario())
    assert locking.direct_rows("SELECT balance, version FROM accounts WHERE id = 1") == [(105, 6)]


def test_composite_keys_and_in_lists(locking):
    locking.start()

    async def scenario():
        a = await asyncpg.connect(locking.dsn)
        b = await asyncpg.connect(locking.dsn)
        try:
            await a.fetch("SELECT * FROM pairs")
            await b.fetch("SELECT * FROM pairs")
            await a.execute("UPDATE pairs SET payload = 'A' WHERE a = 1 AND b = 'y'")
            with pytest.raises(asyncpg.SerializationError):
                await b.execute(
                    "UPDATE pairs SET payload = $1 WHERE a = $2 AND b = $3", "B", 1, "y"
                )
            await b.execute("UPDATE pairs SET payload = $1 WHERE a = $2 AND b = $3", "B", 1, "x")
            await a.fetch("SELECT * FROM accounts")
            await b.fetch("SELECT * FROM accounts")
            await a.execute("UPDATE accounts SET owner = 'changed' WHERE id = 3")
            with pytest.raises(asyncpg.SerializationError):
                await b.execute("UPDATE accounts SET balance = 0 WHERE id IN (2, 3)")
        finally:
            await a.close()
            await b.close()

    run(scenario())
    assert locking.direct_rows("SELECT b, payload FROM pairs ORDER BY b") == [
        ("x", "B"),
        ("y", "A"),
    ]
    assert locking.direct_rows(
        "SELECT id, balance FROM accounts WHERE id IN (2, 3) ORDER BY id"
    ) == [(2, 200), (3, 300)]


def test_writes_without_a_key_pin_pass_unchanged(locking):
    locking.start()
    with psycopg.connect(locking.dsn, autocommit=True) as c:
        c.execute("SELECT * FROM accounts").fetchall()
        c.execute("UPDATE accounts SET balance = balance + 1 WHERE balance > 150")
    assert locking.direct_rows("SELECT id, balance FROM accounts ORDER BY id") == [
        (1, 100),
        (2, 201),
        (3, 301),
    ]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_in_list_with_one_row_not_read_still_checks_the_others(locking, protocol):
    locking.start()

    async def scenario():
        a = await asyncpg.connect(locking.dsn)
        b = await asyncpg.connect(locking.dsn)
        try:
            await a.fetch("SELECT * FROM accounts WHERE id = 1")
            await b.fetch("SELECT * FROM accounts WHERE id = 1")  # b never reads row 3
            await a.execute("UPDATE accounts SET owner = 'a' WHERE id = 1")
            with pytest.raises(asyncpg.SerializationError):
                if protocol == "simple":
                    await b.execute("UPDATE accounts SET balance = 0 WHERE id IN (1, 3)")
                else:
                    await b.execute("UPDATE accounts SET balance = 0 WHERE id IN ($1, $2)", 1, 3)
            # the unread row alone goes through unchecked (counted not_read)
            if protocol == "simple":
                await b.execute("UPDATE accounts SET balance = 7 WHERE id IN (3)")
            else:
                await b.execute("UPDATE accounts SET balance = $1 WHERE id IN ($2)", 7, 3)
            await a.fetch("SELECT * FROM accounts WHERE id = 3")
            await a.execute("UPDATE accounts SET owner = 'a' WHERE id = 3")
            # b never read row 3: its own blind write taught it nothing, so it has no stale
            # view of the row to protect and its next blind write is no false conflict
            await b.execute("UPDATE accounts SET balance = $1 WHERE id = $2", 8, 3)
        finally:
            await a.close()
            await b.close()

    run(scenario())
    assert locking.direct_rows(
        "SELECT id, balance FROM accounts WHERE id IN (1, 3) ORDER BY id"
    ) == [(1, 100), (3, 8)]


def test_discard_all_keeps_checking(locking):
    """Connection pools reset sessions with DISCARD ALL, which drops temporary functions and
    prepared statements: the proxy must notice and keep guarding."""
    locking.start()
    with (
        psycopg.connect(locking.dsn, autocommit=True) as a,
        psycopg.connect(locking.dsn, autocommit=True) as b,
    ):
        b.execute("UPDATE accounts SET owner = %s WHERE id = %s", ("warm", 1))  # prepares forms
        b.execute("DISCARD ALL")
        a.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        b.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        a.execute("UPDATE accounts SET owner = 'a' WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE accounts SET owner = %s WHERE id = %s", ("b", 1))
        b.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        b.execute("UPDATE accounts SET owner = 'b' WHERE id = 1")
    assert locking.direct_rows("SELECT owner FROM accounts WHERE id = 1") == [("b",)]


def test_role_without_temp_privilege_passes_writes_unverified(locking):
    """No TEMP privilege: no guard functions; writes must still work, counted unverified."""
    with psycopg.connect(locking.direct, autocommit=True) as c:
        c.execute("DROP ROLE IF EXISTS notemp")
        c.execute("CREATE ROLE notemp LOGIN")
        c.execute(f"REVOKE TEMP ON DATABASE {locking.db} FROM PUBLIC")
        c.execute("GRANT SELECT, UPDATE ON accounts TO notemp")
    locking.start()
    try:
        with psycopg.connect(
            locking.proxy.dsn_for(locking.db, user="notemp"), autocommit=True
        ) as c:
            c.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
            c.execute("UPDATE accounts SET owner = 'n' WHERE id = 2")
            c.execute("UPDATE accounts SET owner = %s WHERE id = %s", ("m", 2))
        assert locking.direct_rows("SELECT owner FROM accounts WHERE id = 2") == [("m",)]
        assert "cannot create the guard functions" in locking.proxy.stderr_text()
    finally:
        with psycopg.connect(locking.direct, autocommit=True) as c:
            c.execute(f"GRANT TEMP ON DATABASE {locking.db} TO PUBLIC")
            c.execute("REVOKE ALL ON accounts FROM notemp")


@pytest.mark.parametrize("prepare", [False, True])
def test_psycopg_reads_with_parameters_are_captured(locking, prepare):
    """psycopg sends Parse/Bind/Describe(portal)/Execute/Sync in one flight: the read must be
    captured from the RowDescription that arrives after the Execute was queued."""
    locking.start()
    with (
        psycopg.connect(locking.dsn, autocommit=True) as a,
        psycopg.connect(locking.dsn, autocommit=True) as b,
    ):
        for _ in range(3):  # prepare=True: later executions Bind a described named statement
            b.execute("SELECT * FROM accounts WHERE id = %s", (2,), prepare=prepare).fetchall()
        a.execute("SELECT * FROM accounts WHERE id = %s", (2,), prepare=prepare).fetchall()
        a.execute("UPDATE accounts SET owner = %s WHERE id = %s", ("a", 2), prepare=prepare)
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE accounts SET owner = %s WHERE id = %s", ("b", 2), prepare=prepare)
        # re-read and retry works (the re-read replaces what was known)
        b.execute("SELECT * FROM accounts WHERE id = %s", (2,), prepare=prepare).fetchall()
        b.execute("UPDATE accounts SET owner = %s WHERE id = %s", ("b", 2), prepare=prepare)
    assert locking.direct_rows("SELECT owner, version FROM accounts WHERE id = 2") == [("b", 3)]


@pytest.mark.parametrize("in_transaction", [False, True])
def test_blind_relative_writes_repeated_on_one_connection_never_conflict(locking, in_transaction):
    """A blind relative update (TPC-B style: never reads the row) has no stale view of the row
    to protect: repeated, with another session's write in between, it is no conflict (pgbench
    TPC-B retried one transaction in two when the proxy learned snapshots from such writes).
    Once the session reads the row, its writes are checked again."""
    locking.start()
    stmt = "UPDATE accounts SET balance = balance + 1 WHERE id = 1"
    with (
        psycopg.connect(locking.dsn, autocommit=True) as a,
        psycopg.connect(locking.dsn, autocommit=True) as b,
    ):
        a.execute(stmt)  # unread: unchecked, and teaches a nothing
        b.execute(stmt)  # someone else writes the row
        if in_transaction:
            with a.transaction():
                a.execute(stmt)
        else:
            a.execute(stmt)
        a.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        b.execute(stmt)
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute(stmt)  # read, then changed by b: a real conflict
    assert locking.direct_rows("SELECT balance FROM accounts WHERE id = 1") == [(104,)]


def test_a_row_that_was_read_stays_stale_after_a_conflict(locking):
    """Unlike a blind write, a write based on a read must not slip through after its conflict:
    without a re-read, every further write of the row is refused."""
    locking.start()
    with (
        psycopg.connect(locking.dsn, autocommit=True) as a,
        psycopg.connect(locking.dsn, autocommit=True) as b,
    ):
        a.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
        b.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
        a.execute("UPDATE accounts SET owner = 'a' WHERE id = 2")
        for _ in range(2):
            with pytest.raises(psycopg.errors.SerializationFailure):
                b.execute("UPDATE accounts SET owner = %s WHERE id = %s", ("b", 2))
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("DELETE FROM accounts WHERE id = %s", (2,))
    assert locking.direct_rows("SELECT owner FROM accounts WHERE id = 2") == [("a",)]
