"""Each rule feature through the real proxy; each test fails if its feature is removed."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import psycopg
import pytest

from tests.integration.test_locking_core import Locking, run


@pytest.fixture
def locking(pg, proxy_factory, tmp_path):
    return Locking(pg, proxy_factory, tmp_path)


COLUMNS_RULES = """
version: 1
tables:
  - table: customers
    strategy: columns
    check: changed
    columns:
      credit_score: any
      notes: never
    groups:
      - [salutation, last_name]
  - table: reports
    strategy: columns
    check: never
    columns:
      status: differing
"""


async def two_readers(dsn, sql):
    a = await asyncpg.connect(dsn)
    b = await asyncpg.connect(dsn)
    await a.fetch(sql)
    await b.fetch(sql)
    return a, b


def outcome(locking, first, second, read="SELECT * FROM customers WHERE id = 1"):
    """A writes `first`, then B (who read before A wrote) writes `second`: 'ok' or 'conflict'."""

    async def scenario():
        a, b = await two_readers(locking.dsn, read)
        try:
            await a.execute(first)
            try:
                await b.execute(second)
                return "ok"
            except asyncpg.SerializationError:
                return "conflict"
        finally:
            await a.close()
            await b.close()

    return run(scenario())


def test_policy_changed(locking):
    locking.start(COLUMNS_RULES)
    # both change the same column: conflict
    assert (
        outcome(
            locking,
            "UPDATE customers SET credit_limit = 1 WHERE id = 1",
            "UPDATE customers SET credit_limit = 2 WHERE id = 1",
        )
        == "conflict"
    )
    # different columns: no conflict, both changes survive
    assert (
        outcome(
            locking,
            "UPDATE customers SET first_name = 'Susan' WHERE id = 1",
            "UPDATE customers SET credit_limit = 3 WHERE id = 1",
        )
        == "ok"
    )
    assert locking.direct_rows("SELECT first_name, credit_limit FROM customers WHERE id = 1") == [
        ("Susan", 3)
    ]


def test_policy_any(locking):
    locking.start(COLUMNS_RULES)
    # the credit score changed under a write that does not even touch it
    assert (
        outcome(
            locking,
            "UPDATE customers SET credit_score = 400 WHERE id = 1",
            "UPDATE customers SET credit_limit = 9999 WHERE id = 1",
        )
        == "conflict"
    )
    assert locking.direct_rows("SELECT credit_limit FROM customers WHERE id = 1") == [(5000,)]


def test_policy_never(locking):
    locking.start(COLUMNS_RULES)
    assert (
        outcome(
            locking,
            "UPDATE customers SET notes = 'a' WHERE id = 1",
            "UPDATE customers SET notes = 'b' WHERE id = 1",
        )
        == "ok"
    )
    assert locking.direct_rows("SELECT notes FROM customers WHERE id = 1") == [("b",)]


def test_policy_differing(locking):
    locking.start(COLUMNS_RULES)
    read = "SELECT * FROM reports WHERE id = 1"
    # two managers approving: same value, no conflict
    assert (
        outcome(
            locking,
            "UPDATE reports SET status = 'approved', approved_by = 'ann' WHERE id = 1",
            "UPDATE reports SET status = 'approved', approved_by = 'bob' WHERE id = 1",
            read,
        )
        == "ok"
    )
    # approving vs rejecting what the other approved: conflict
    assert (
        outcome(
            locking,
            "UPDATE reports SET status = 'paid' WHERE id = 1",
            "UPDATE reports SET status = 'rejected' WHERE id = 1",
            read,
        )
        == "conflict"
    )
    assert locking.direct_rows("SELECT status, approved_by FROM reports") == [("paid", "bob")]


def test_groups(locking):
    locking.start(COLUMNS_RULES)
    # B writes the salutation; A changed the last name of the same group meanwhile
    assert (
        outcome(
            locking,
            "UPDATE customers SET last_name = 'Brown' WHERE id = 1",
            "UPDATE customers SET salutation = 'Mrs' WHERE id = 1",
        )
        == "conflict"
    )
    assert locking.direct_rows("SELECT salutation, last_name FROM customers WHERE id = 1") == [
        ("Ms", "Brown")
    ]


SPARSE_RULES = """
version: 1
tables:
  - table: customers
    strategy: columns
    check: changed
    sparse_update: true
"""


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_sparse_update_keeps_other_peoples_changes(locking, protocol):
    locking.start(SPARSE_RULES)

    async def scenario():
        sue_clerk, lou_clerk = await two_readers(
            locking.dsn, "SELECT * FROM customers WHERE id = 2"
        )
        try:
            # one clerk fixes the last name, writing the whole form back
            await sue_clerk.execute(
                "UPDATE customers SET salutation = 'Mr', first_name = 'Lou', last_name = 'Jonas', "
                "credit_limit = 2000.00 WHERE id = 2"
            )
            # the other raises the credit limit, also writing back the whole (stale) form
            if protocol == "simple":
                await lou_clerk.execute(
                    "UPDATE customers SET salutation = 'Mr', first_name = 'Lou', "
                    "last_name = 'Jones', credit_limit = 3000.00 WHERE id = 2"
                )
            else:
                await lou_clerk.execute(
                    "UPDATE customers SET salutation = $1, first_name = $2, last_name = $3, "
                    "credit_limit = $4 WHERE id = $5",
                    "Mr",
                    "Lou",
                    "Jones",
                    3000,
                    2,
                )
        finally:
            await sue_clerk.close()
            await lou_clerk.close()

    run(scenario())
    assert locking.direct_rows("SELECT last_name, credit_limit FROM customers WHERE id = 2") == [
        ("Jonas", 3000)
    ]


def test_audit_mode_lets_writes_through_and_counts(locking):
    locking.start(
        """
    version: 1
    tables:
      - table: accounts
        strategy: version
        version_column: version
        mode: audit
    """,
        "--metrics",
        "127.0.0.1:0",
    )
    assert (
        outcome(
            locking,
            "UPDATE accounts SET balance = 1 WHERE id = 1",
            "UPDATE accounts SET balance = 2 WHERE id = 1",
            "SELECT * FROM accounts WHERE id = 1",
        )
        == "ok"
    )
    assert locking.direct_rows("SELECT balance FROM accounts WHERE id = 1") == [(2,)]
    log = locking.proxy.stderr_text()
    assert "would-be conflict on public.accounts" in log


def test_unknown_original_reject_and_allow(locking):
    locking.start("""
    version: 1
    tables:
      - table: accounts
        strategy: version
        version_column: version
        unknown_original: reject
      - table: counters
        strategy: version
        version_column: version
    """)
    with psycopg.connect(locking.dsn, autocommit=True) as c:
        with pytest.raises(psycopg.Error) as err:
            c.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        assert "has not read the row" in str(err.value)
        assert "inline_code_block" not in str(err.value)  # no plumbing shown
        with pytest.raises(psycopg.Error):
            c.execute("UPDATE accounts SET balance = %s WHERE id = %s", (0, 1))
        c.execute("UPDATE counters SET n = 5 WHERE id = 1")  # allow: passes unchecked
        c.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        c.execute("UPDATE accounts SET balance = 7 WHERE id = 1")  # read first: fine
    assert locking.direct_rows("SELECT balance FROM accounts WHERE id = 1") == [(7,)]
    assert locking.direct_rows("SELECT n FROM counters WHERE id = 1") == [(5,)]


def test_scope_user_shares_reads_across_connections_of_a_role(locking):
    rules = """
    version: 1
    tables:
      - table: accounts
        strategy: version
        version_column: version
        scope: {scope}
        unknown_original: reject
    """
    locking.start(rules.format(scope="user"))
    with (
        psycopg.connect(locking.dsn, autocommit=True) as reader,
        psycopg.connect(locking.dsn, autocommit=True) as writer,
    ):
        reader.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        writer.execute("UPDATE accounts SET balance = 11 WHERE id = 1")  # read by the pool


def test_scope_session_does_not_share(locking):
    rules = """
    version: 1
    tables:
      - table: accounts
        strategy: version
        version_column: version
        unknown_original: reject
    """
    locking.start(rules)
    with (
        psycopg.connect(locking.dsn, autocommit=True) as reader,
        psycopg.connect(locking.dsn, autocommit=True) as writer,
    ):
        reader.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        with pytest.raises(psycopg.Error):
            writer.execute("UPDATE accounts SET balance = 11 WHERE id = 1")


def test_notify_after_commit(locking):
    locking.start("""
    version: 1
    tables:
      - table: accounts
        strategy: version
        version_column: version
        notify: account_changes
    """)
    with (
        psycopg.connect(locking.dsn, autocommit=True) as listener,
        psycopg.connect(locking.dsn, autocommit=True) as writer,
    ):
        listener.execute("LISTEN account_changes")
        writer.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
        with writer.transaction():
            writer.execute("UPDATE accounts SET balance = 5 WHERE id = 2")
        gen = listener.notifies(timeout=5, stop_after=1)
        notes = list(gen)
    assert len(notes) == 1
    payload = json.loads(notes[0].payload)
    assert payload["table"] == "public.accounts" and payload["key"] == {"id": 2}
    assert payload["version"] == 2


def test_notify_table_written_in_a_with_statement(locking):
    """A CTE write of a notify table is checked but sends nothing (its notification would be a
    RETURNING item, which cannot go into a CTE): the client's rows come back untouched, in
    both protocols and with binary results (one result format per column)."""
    locking.start("""
    version: 1
    tables:
      - table: accounts
        strategy: version
        version_column: version
        notify: account_changes
    """)
    sql = "WITH u AS (UPDATE accounts SET balance = 5 WHERE id = 2 RETURNING id, owner) SELECT * FROM u"
    with psycopg.connect(locking.dsn, autocommit=True) as a:
        for prepare, binary in ((None, False), (True, False), (True, True)):
            a.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
            cur = a.cursor(binary=binary)
            assert cur.execute(sql, prepare=prepare).fetchall() == [(2, "Lou")]
            assert [c.name for c in cur.description] == ["id", "owner"]

    async def through_asyncpg() -> list:
        # asyncpg binds one result format per column
        conn = await asyncpg.connect(locking.dsn)
        try:
            await conn.fetch("SELECT * FROM accounts WHERE id = 2")
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    assert asyncio.run(through_asyncpg()) == [(2, "Lou")]
    assert locking.direct_rows("SELECT version FROM accounts WHERE id = 2") == [(5,)]


def test_version_bumps(locking):
    locking.start("""
    version: 1
    tables:
      - table: accounts
        strategy: version
        version_column: version
        bump: increment
      - table: items
        strategy: version
        version_column: modified_at
        bump: timestamp
      - table: docs
        strategy: version
        version_column: rev
        bump: none
    """)
    with psycopg.connect(locking.dsn, autocommit=True) as a:
        a.execute("SELECT * FROM accounts WHERE id = 1").fetchall()
        a.execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        a.execute("SELECT * FROM items WHERE id = 1").fetchall()
        a.execute("UPDATE items SET qty = 1 WHERE id = 1")
        a.execute("UPDATE items SET qty = 2 WHERE id = 1")  # learned the new timestamp
        a.execute("SELECT * FROM docs WHERE id = 1").fetchall()
        a.execute("UPDATE docs SET body = 'one' WHERE id = 1")
        a.execute("UPDATE docs SET body = 'two' WHERE id = 1")  # learned rev via RETURNING
    assert locking.direct_rows("SELECT version FROM accounts WHERE id = 1") == [(2,)]
    ((stamp,),) = locking.direct_rows("SELECT modified_at > '2000-01-02' FROM items WHERE id = 1")
    assert stamp is True
    assert locking.direct_rows("SELECT rev, body FROM docs") == [(3, "two")]
    # and each still detects a conflicting writer
    for read, first, second in [
        (
            "SELECT * FROM items WHERE id = 2",
            "UPDATE items SET qty = 7 WHERE id = 2",
            "UPDATE items SET qty = 8 WHERE id = 2",
        ),
        (
            "SELECT * FROM docs WHERE id = 1",
            "UPDATE docs SET body = 'x' WHERE id = 1",
            "UPDATE docs SET body = 'y' WHERE id = 1",
        ),
    ]:
        assert outcome(locking, first, second, read) == "conflict"
