"""What a session knows of a row, and so what its writes are checked against (issue: no silent
lost update, cases 1-3 and 9; no false conflict, case 1).

Each race runs twice, step by step on two connections: through the proxy (the stale write gets
40001 and nothing of it is applied) and directly against PostgreSQL (the same steps lose an
update: the race is real).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.support.locking import make_database, write_rules
from tests.support.promtext import sample_sum, scrape

COLUMNS_RULES = """
version: 1
tables:
  - table: accounts
    strategy: version
    version_column: version
  - table: customers
    strategy: columns
    check: changed
"""

SPARSE_RULES = """
version: 1
tables:
  - table: customers
    strategy: columns
    check: changed
    sparse_update: true
"""


class Race:
    """Two connections, through the proxy or direct, on a fresh database."""

    def __init__(self, pg, proxy_factory, tmp_path, rules: str, via_proxy: bool) -> None:
        self.db = make_database(pg.dsn)
        self.direct = pg.dsn.rsplit("/", 1)[0] + "/" + self.db
        self.proxy = None
        if via_proxy:
            self.proxy = proxy_factory(rules=write_rules(tmp_path, rules), metrics=True)
        self.dsn = self.proxy.dsn_for(self.db) if self.proxy else self.direct

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)

    async def row(self, sql: str):
        c = await asyncpg.connect(self.direct)
        try:
            return tuple(await c.fetchrow(sql))
        finally:
            await c.close()

    def metric(self, name: str, **labels: str) -> float:
        assert self.proxy is not None and self.proxy.metrics_url is not None
        return sample_sum(scrape(self.proxy.metrics_url), name, **labels)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def write(conn: asyncpg.Connection, protocol: str, sql: str, *args):
    """The statement in the simple protocol (literals) or the extended one ($n)."""
    if protocol == "simple":
        for i, value in reversed(list(enumerate(args, 1))):
            literal = "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)
            sql = sql.replace(f"${i}", literal)
        return await conn.execute(sql)
    return await conn.execute(sql, *args)


@pytest.fixture(params=["simple", "extended"])
def protocol(request):
    return request.param


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_form_writing_the_version_back_is_still_checked(
    pg, proxy_factory, tmp_path, protocol, via_proxy
):
    """Case 1: Django's save() writes every field back, the version too, with the value it read.
    The version must still move, or every stale save passes its check."""
    race = Race(pg, proxy_factory, tmp_path, COLUMNS_RULES, via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.fetch("SELECT * FROM accounts WHERE id = 1")
            await b.fetch("SELECT * FROM accounts WHERE id = 1")
            save = "UPDATE accounts SET owner = $1, balance = $2, version = $3 WHERE id = $4"
            await write(a, protocol, save, "a", 150, 1, 1)
            if via_proxy:
                with pytest.raises(asyncpg.SerializationError):
                    await write(b, protocol, save, "b", 50, 1, 1)
            else:
                await write(b, protocol, save, "b", 50, 1, 1)
        finally:
            await a.close()
            await b.close()

    run(scenario())
    owner, balance, version = run(
        race.row("SELECT owner, balance, version FROM accounts WHERE id = 1")
    )
    if via_proxy:
        assert (owner, balance, version) == ("a", 150, 2)  # a's save kept, the version moved
    else:
        assert owner == "b"  # a's save is lost without a word


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_a_read_stays_seen_after_its_transaction_rolls_back(
    pg, proxy_factory, tmp_path, protocol, via_proxy
):
    """Case 2: psycopg's default non-autocommit reads and pools that roll back on check-in: the
    session saw the row, so a later write on that knowledge is checked."""
    race = Race(pg, proxy_factory, tmp_path, COLUMNS_RULES, via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.execute("BEGIN")
            await a.fetch("SELECT * FROM accounts WHERE id = 2")
            await a.execute("ROLLBACK")
            await a.execute("BEGIN")
            await a.fetch("SELECT * FROM customers WHERE id = 1")
            await a.execute("ROLLBACK")
            await b.execute("UPDATE accounts SET balance = 999 WHERE id = 2")
            await b.execute("UPDATE customers SET credit_score = 1 WHERE id = 1")
            stale = [
                ("UPDATE accounts SET balance = $1 WHERE id = $2", 210, 2),
                ("UPDATE customers SET credit_score = $1 WHERE id = $2", 710, 1),
            ]
            for sql, *args in stale:
                if via_proxy:
                    with pytest.raises(asyncpg.SerializationError):
                        await write(a, protocol, sql, *args)
                else:
                    await write(a, protocol, sql, *args)
        finally:
            await a.close()
            await b.close()

    run(scenario())
    balance = run(race.row("SELECT balance FROM accounts WHERE id = 2"))[0]
    score = run(race.row("SELECT credit_score FROM customers WHERE id = 1"))[0]
    assert (balance, score) == ((999, 1) if via_proxy else (210, 710))


def test_what_a_rolled_back_write_taught_is_undone(pg, proxy_factory, tmp_path, protocol):
    """The other half of case 2: the session's own write in a rolled-back transaction did not
    happen, so its next write is checked against what it read before (no false conflict)."""
    race = Race(pg, proxy_factory, tmp_path, COLUMNS_RULES, True)

    async def scenario():
        a = await race.connect()
        try:
            await a.fetch("SELECT * FROM accounts WHERE id = 1")
            await a.execute("BEGIN")
            await write(a, protocol, "UPDATE accounts SET balance = $1 WHERE id = $2", 1, 1)
            await a.fetch("SELECT * FROM accounts WHERE id = 1")  # its own uncommitted row
            await a.execute("ROLLBACK")
            await write(a, protocol, "UPDATE accounts SET balance = $1 WHERE id = $2", 2, 1)
        finally:
            await a.close()

    run(scenario())
    assert run(race.row("SELECT balance, version FROM accounts WHERE id = 1")) == (2, 2)


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
@pytest.mark.parametrize("outcome", ["rollback", "commit"])
def test_two_phase_commit_decides_what_the_session_knows(
    pg, proxy_factory, tmp_path, protocol, via_proxy, outcome
):
    """Case 3: PREPARE TRANSACTION is not a commit. After ROLLBACK PREPARED (here from another
    session) the row is as the session read it: a concurrent change is a conflict and, without
    one, the session's write is no false conflict. After COMMIT PREPARED its write counts."""
    race = Race(pg, proxy_factory, tmp_path, COLUMNS_RULES, via_proxy)
    gid = f"optimist-test-{outcome}-{protocol}-{via_proxy}"

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.fetch("SELECT * FROM accounts WHERE id = 3")
            await a.execute("BEGIN")
            await write(a, protocol, "UPDATE accounts SET balance = $1 WHERE id = $2", 301, 3)
            await a.execute(f"PREPARE TRANSACTION '{gid}'")
            await b.execute(f"{outcome.upper()} PREPARED '{gid}'")
            # without a concurrent writer, a's next write is fine either way
            await write(a, protocol, "UPDATE accounts SET balance = $1 WHERE id = $2", 302, 3)
            await b.fetch("SELECT * FROM accounts WHERE id = 3")
            await a.fetch("SELECT * FROM accounts WHERE id = 3")
            await a.execute("BEGIN")
            await write(a, protocol, "UPDATE accounts SET balance = $1 WHERE id = $2", 303, 3)
            await a.execute(f"PREPARE TRANSACTION '{gid}-2'")
            await b.execute(f"ROLLBACK PREPARED '{gid}-2'")
            await b.execute("UPDATE accounts SET owner = 'b' WHERE id = 3")  # a never sees it
            if via_proxy:
                with pytest.raises(asyncpg.SerializationError):
                    await write(a, protocol, "UPDATE accounts SET owner = $1 WHERE id = $2", "a", 3)
            else:
                await write(a, protocol, "UPDATE accounts SET owner = $1 WHERE id = $2", "a", 3)
        finally:
            await a.close()
            await b.close()

    run(scenario())
    owner, balance = run(race.row("SELECT owner, balance FROM accounts WHERE id = 3"))
    assert balance == 302
    assert owner == ("b" if via_proxy else "a")


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_a_write_learns_only_what_it_wrote_or_verified(
    pg, proxy_factory, tmp_path, protocol, via_proxy
):
    """Case 9: S1 reads; S2 changes credit_score; S1 writes credit_limit (checked on what it
    writes: fine). S1 never saw S2's credit_score, so S1's write of it is a conflict."""
    race = Race(pg, proxy_factory, tmp_path, COLUMNS_RULES, via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.fetch("SELECT * FROM customers WHERE id = 2")
            await b.execute("UPDATE customers SET credit_score = 650 WHERE id = 2")
            await write(
                a, protocol, "UPDATE customers SET credit_limit = $1 WHERE id = $2", 2500, 2
            )
            if via_proxy:
                with pytest.raises(asyncpg.SerializationError):
                    await write(
                        a, protocol, "UPDATE customers SET credit_score = $1 WHERE id = $2", 610, 2
                    )
            else:
                await write(
                    a, protocol, "UPDATE customers SET credit_score = $1 WHERE id = $2", 610, 2
                )
        finally:
            await a.close()
            await b.close()

    run(scenario())
    limit, score = run(race.row("SELECT credit_limit, credit_score FROM customers WHERE id = 2"))
    assert limit == 2500
    assert score == (650 if via_proxy else 610)


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_a_sparse_save_learns_only_what_it_wrote(pg, proxy_factory, tmp_path, protocol, via_proxy):
    """Case 9 with sparse form saves: a column written back unchanged is dropped from the save,
    so the row keeps S2's value, which S1 never saw; S1's next save of it is a conflict."""
    race = Race(pg, proxy_factory, tmp_path, SPARSE_RULES, via_proxy)
    save = "UPDATE customers SET credit_limit = $1, credit_score = $2 WHERE id = $3"

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.fetch("SELECT * FROM customers WHERE id = 2")  # 2000.00, 600
            await b.execute("UPDATE customers SET credit_score = 650 WHERE id = 2")
            await write(a, protocol, save, 2500, 600, 2)  # the form: score unchanged
            if via_proxy:
                with pytest.raises(asyncpg.SerializationError):
                    await write(a, protocol, save, 2500, 610, 2)
            else:
                await write(a, protocol, save, 2500, 610, 2)
        finally:
            await a.close()
            await b.close()

    run(scenario())
    limit, score = run(race.row("SELECT credit_limit, credit_score FROM customers WHERE id = 2"))
    assert limit == 2500
    assert score == (650 if via_proxy else 610)


def test_blind_writes_are_counted_and_create_no_snapshot(pg, proxy_factory, tmp_path, protocol):
    """No false conflict, case 1: a session that never read a row has no stale view of it. Its
    blind writes pass counted unverified (not_read) and teach it nothing."""
    race = Race(pg, proxy_factory, tmp_path, COLUMNS_RULES, True)
    before = race.metric(
        "optimist_unverified_writes_total", table="public.accounts", reason="not_read"
    )

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            for _ in range(3):
                await write(
                    a, protocol, "UPDATE accounts SET balance = balance + $1 WHERE id = $2", 1, 1
                )
                await write(
                    b, protocol, "UPDATE accounts SET balance = balance + $1 WHERE id = $2", 1, 1
                )
        finally:
            await a.close()
            await b.close()

    run(scenario())
    assert run(race.row("SELECT balance, version FROM accounts WHERE id = 1")) == (106, 7)
    after = race.metric(
        "optimist_unverified_writes_total", table="public.accounts", reason="not_read"
    )
    assert after - before == 6


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_a_bulk_update_still_moves_the_version(pg, proxy_factory, tmp_path, protocol, via_proxy):
    """A bulk UPDATE (no key pin) cannot be checked and is counted so; relayed as written it
    would change rows but not their version, and another session's checked write would then
    overwrite that change unseen. The proxy still bumps the version."""
    race = Race(pg, proxy_factory, tmp_path, COLUMNS_RULES, via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.fetch("SELECT * FROM accounts WHERE id = 1")
            await write(b, protocol, "UPDATE accounts SET owner = $1 WHERE owner = $2", "x", "Sue")
            stale = "UPDATE accounts SET owner = $1 WHERE id = $2"
            if via_proxy:
                with pytest.raises(asyncpg.SerializationError):
                    await write(a, protocol, stale, "a", 1)
            else:
                await write(a, protocol, stale, "a", 1)
        finally:
            await a.close()
            await b.close()

    before = (
        race.metric("optimist_unverified_writes_total", reason="no_key_pin") if via_proxy else 0
    )
    run(scenario())
    owner, version = run(race.row("SELECT owner, version FROM accounts WHERE id = 1"))
    if via_proxy:
        assert (owner, version) == ("x", 2)
        after = race.metric("optimist_unverified_writes_total", reason="no_key_pin")
        assert after - before == 1
    else:
        assert owner == "a"  # b's change is lost without a word
