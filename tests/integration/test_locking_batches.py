"""Batches with one conflicting row: the server raises inside the batch's own transaction, so
nothing of an implicit-transaction batch is applied; and lost updates, counted."""

from __future__ import annotations

import asyncio
import random
import subprocess

import asyncpg
import psycopg
import pytest

from proxy.embedded import pg_tool
from tests.integration.test_locking_core import Locking, run


@pytest.fixture
def locking(pg, proxy_factory, tmp_path):
    return Locking(pg, proxy_factory, tmp_path)


def bump_behind_our_back(locking, account_id):
    with psycopg.connect(locking.direct, autocommit=True) as c:
        c.execute(
            "UPDATE accounts SET balance = balance + 1000, version = version + 1 WHERE id = %s",
            (account_id,),
        )


def test_asyncpg_executemany_with_one_conflicting_row(locking):
    locking.start()

    async def scenario():
        c = await asyncpg.connect(locking.dsn)
        try:
            await c.fetch("SELECT * FROM accounts")
            bump_behind_our_back(locking, 2)
            with pytest.raises(asyncpg.SerializationError):
                await c.executemany(
                    "UPDATE accounts SET balance = $1 WHERE id = $2", [(11, 1), (22, 2), (33, 3)]
                )
        finally:
            await c.close()

    run(scenario())
    assert locking.direct_rows("SELECT id, balance FROM accounts ORDER BY id") == [
        (1, 100),
        (2, 1200),
        (3, 300),
    ]


def test_psycopg_pipeline_with_one_conflicting_row(locking):
    locking.start()
    with psycopg.connect(locking.dsn, autocommit=True) as c:
        c.execute("SELECT * FROM accounts").fetchall()
        bump_behind_our_back(locking, 3)
        with pytest.raises(psycopg.errors.SerializationFailure):
            with c.pipeline():
                c.execute("BEGIN")
                c.execute("UPDATE accounts SET balance = %s WHERE id = %s", (11, 1))
                c.execute("UPDATE accounts SET balance = %s WHERE id = %s", (33, 3))
                c.execute("UPDATE accounts SET balance = %s WHERE id = %s", (22, 2))
                c.execute("COMMIT")
    assert locking.direct_rows("SELECT id, balance FROM accounts ORDER BY id") == [
        (1, 100),
        (2, 200),
        (3, 1300),
    ]


def test_psql_multi_statement_string_is_all_or_nothing(locking):
    locking.start()
    psql = pg_tool("psql")
    # psql runs each -c on the same connection; between the read and the write another
    # session (a direct psql started through \\!) changes row 2
    hook = (
        f"{psql} '{locking.direct}' -X -q -c "
        "\"UPDATE accounts SET balance = balance + 1000, version = version + 1 WHERE id = 2\""
    )
    proc = subprocess.run(
        [
            psql,
            locking.dsn,
            "-X",
            "-c",
            "SELECT * FROM accounts WHERE id IN (1, 2)",
            "-c",
            f"\\! {hook}",
            "-c",
            "UPDATE accounts SET balance = 1 WHERE id = 1; "
            "UPDATE accounts SET balance = 2 WHERE id = 2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "modified by another session" in proc.stderr, proc.stderr
    assert locking.direct_rows(
        "SELECT id, balance FROM accounts WHERE id IN (1, 2) ORDER BY id"
    ) == [(1, 100), (2, 1200)]


def _increment_workload(dsn, clients, rounds, retry):
    """Each client: read a random counter, compute n + 1 in the app, write it back."""
    lost_retries = 0

    async def client(seed):
        nonlocal lost_retries
        rnd = random.Random(seed)
        c = await asyncpg.connect(dsn)
        try:
            for _ in range(rounds):
                cid = rnd.randint(1, 4)
                while True:
                    row = await c.fetchrow("SELECT id, n, version FROM counters WHERE id = $1", cid)
                    await asyncio.sleep(0)  # let others interleave, like a user thinking
                    try:
                        await c.execute(
                            "UPDATE counters SET n = $1 WHERE id = $2", row["n"] + 1, cid
                        )
                        break
                    except asyncpg.SerializationError:
                        if not retry:
                            raise
                        lost_retries += 1
        finally:
            await c.close()

    async def main():
        await asyncio.gather(*(client(i) for i in range(clients)))

    run(main())
    return lost_retries


def test_lost_updates_happen_direct_and_not_through_the_proxy(locking):
    locking.start()
    clients, rounds = 8, 40
    retries = _increment_workload(locking.dsn, clients, rounds, retry=True)
    assert locking.direct_rows("SELECT sum(n) FROM counters") == [(clients * rounds,)]
    assert retries > 0  # contention really happened and was resolved by retrying
    with psycopg.connect(locking.direct, autocommit=True) as c:
        c.execute("UPDATE counters SET n = 0")
    _increment_workload(locking.direct, clients, rounds, retry=True)
    ((total,),) = locking.direct_rows("SELECT sum(n) FROM counters")
    assert total < clients * rounds, "direct to PostgreSQL, read-modify-write loses updates"
