"""No false conflict, case 4: the session's own side effects (issue 11).

A trigger fired by the session's own write changes another protected row (an order's total
after inserting an order line); the session's next write of that order in the same
transaction must not conflict, yet the real-conflict twins (another session changed the order
in between) must still give 40001 wherever the change would otherwise be lost.

Each race runs step by step on two connections, through the proxy and directly against
PostgreSQL (the direct run shows which twin would really lose an update).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.integration.test_learning import Race, run, write
from tests.support.locking import make_database, write_rules

SCHEMA = """
CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL DEFAULT 'open',
                     total numeric(12,2) NOT NULL DEFAULT 0, version int NOT NULL DEFAULT 1);
CREATE TABLE order_lines (id serial PRIMARY KEY, order_id int NOT NULL REFERENCES orders,
                          amount numeric(12,2) NOT NULL);
CREATE FUNCTION order_total() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN UPDATE orders SET total = total + NEW.amount WHERE id = NEW.order_id;
          RETURN NEW; END $$;
CREATE TRIGGER order_total AFTER INSERT ON order_lines
  FOR EACH ROW EXECUTE FUNCTION order_total();
CREATE FUNCTION orders_version() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.version := OLD.version + 1; RETURN NEW; END $$;
CREATE TRIGGER orders_version BEFORE UPDATE ON orders
  FOR EACH ROW EXECUTE FUNCTION orders_version();
INSERT INTO orders VALUES (1, 'open', 10, 1);
"""

# `total` is checked whenever a write sets it (policy `changed`)
COLUMNS = """
version: 1
tables:
  - table: orders
    strategy: columns
    check: changed
"""

# the database's own trigger bumps the version: the proxy only checks it
VERSION = """
version: 1
tables:
  - table: orders
    strategy: version
    version_column: version
    bump: none
"""

RULES = {"columns": COLUMNS, "version": VERSION}
ISOLATION = {"rc": "READ COMMITTED", "rr": "REPEATABLE READ", "ser": "SERIALIZABLE"}
LINE = "INSERT INTO order_lines (order_id, amount) VALUES ($1, $2)"
# the application's absolute write: the total it read plus its line, and a new status
SAVE = "UPDATE orders SET status = $1, total = $2 WHERE id = $3"


@pytest.fixture(params=["simple", "extended"])
def protocol(request):
    return request.param


@pytest.fixture(params=["columns", "version"])
def strategy(request):
    return request.param


class SideRace(Race):
    """Race's two connections, on a fresh database with the orders schema."""

    def __init__(self, pg, proxy_factory, tmp_path, rules: str, via_proxy: bool) -> None:
        self.db = make_database(pg.dsn, SCHEMA)
        self.direct = pg.dsn.rsplit("/", 1)[0] + "/" + self.db
        self.proxy = None
        if via_proxy:
            self.proxy = proxy_factory(rules=write_rules(tmp_path, rules), metrics=True)
        self.dsn = self.proxy.dsn_for(self.db) if self.proxy else self.direct


def order(race: Race) -> tuple:
    return run(race.row("SELECT status, total, version FROM orders WHERE id = 1"))


@pytest.mark.parametrize("savepoint", [False, True], ids=["top", "savepoint"])
@pytest.mark.parametrize("isolation", ["rc", "rr", "ser"])
def test_own_trigger_change_is_no_conflict(
    pg, proxy_factory, tmp_path, protocol, strategy, isolation, savepoint
):
    """S1 reads the order, inserts a line (its trigger adds to the total and bumps the
    version), then saves the order: no conflict (in a savepoint too, where the trigger's row
    version carries a subtransaction's xid). REPEATABLE READ / SERIALIZABLE: the read of the
    transaction vouches for the row; READ COMMITTED: the proxy locked the order, still as
    read, right before the insert (proxy.locking.side_effects)."""
    race = SideRace(pg, proxy_factory, tmp_path, RULES[strategy], True)

    async def scenario():
        a = await race.connect()
        try:
            await a.execute(f"BEGIN ISOLATION LEVEL {ISOLATION[isolation]}")
            assert (await a.fetchrow("SELECT * FROM orders WHERE id = 1"))["total"] == 10
            if savepoint:
                await a.execute("SAVEPOINT s")
            await write(a, protocol, LINE, 1, 5)
            await write(a, protocol, SAVE, "placed", 15, 1)
            # the snapshot was refreshed by the save: a second save passes too
            await write(a, protocol, LINE, 1, 1)
            await write(a, protocol, SAVE, "paid", 16, 1)
            await a.execute("COMMIT")
        finally:
            await a.close()

    run(scenario())
    assert order(race) == ("paid", 16, 5)


def test_own_trigger_change_after_own_checked_write_read_committed(
    pg, proxy_factory, tmp_path, protocol
):
    """READ COMMITTED, version strategy: once the session's own checked write has locked the
    order, its version is known as of that write; the trigger's later bump is the session's
    own and the next save passes."""
    race = SideRace(pg, proxy_factory, tmp_path, VERSION, True)

    async def scenario():
        a = await race.connect()
        try:
            await a.execute("BEGIN")
            await a.fetch("SELECT * FROM orders WHERE id = 1")
            await write(a, protocol, "UPDATE orders SET status = $1 WHERE id = $2", "open", 1)
            await write(a, protocol, LINE, 1, 5)
            await write(a, protocol, SAVE, "placed", 15, 1)
            await a.execute("COMMIT")
        finally:
            await a.close()

    run(scenario())
    assert order(race) == ("placed", 15, 4)


def test_read_committed_keeps_the_conservative_conflict(pg, proxy_factory, tmp_path, protocol):
    """READ COMMITTED, what stays conservative (documented in rules/README.md): with more
    rows read in the transaction than one lock statement takes (side_effects.MAX_LOCKED),
    nothing is locked, and the save after the trigger conflicts although only the session's
    own trigger changed the order; so does a save sent in the same request as the insert
    (its checked form was made before the lock's answer came back)."""
    race = SideRace(pg, proxy_factory, tmp_path, COLUMNS, True)

    async def scenario():
        a = await race.connect()
        try:
            await a.execute("INSERT INTO orders SELECT g FROM generate_series(2, 101) g")
            await a.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            assert len(await a.fetch("SELECT * FROM orders")) == 101  # one past the bound
            await write(a, protocol, LINE, 1, 5)
            with pytest.raises(asyncpg.SerializationError):
                await write(a, protocol, SAVE, "placed", 15, 1)
            await a.execute("ROLLBACK")
            await a.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            await a.fetch("SELECT * FROM orders WHERE id = 1")
            with pytest.raises(asyncpg.SerializationError):
                await a.execute(
                    "INSERT INTO order_lines (order_id, amount) VALUES (1, 5);"
                    " UPDATE orders SET status = 'placed', total = 15 WHERE id = 1"
                )
            await a.execute("ROLLBACK")
        finally:
            await a.close()

    run(scenario())
    assert order(race) == ("open", 10, 1)


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_read_committed_other_change_after_own_insert_waits(
    pg, proxy_factory, tmp_path, protocol, strategy, via_proxy
):
    """S1 reads the order and inserts a line (the order is locked now: by the proxy's lock,
    then by the trigger's UPDATE); S2's change of the order waits for S1's transaction; S1
    saves (no conflict: nobody else could change the order) and commits; S2's +100 then
    applies on top of S1's total: nothing lost, through the proxy as directly."""
    race = SideRace(pg, proxy_factory, tmp_path, RULES[strategy], via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            await a.fetch("SELECT * FROM orders WHERE id = 1")
            await write(a, protocol, LINE, 1, 5)
            other = asyncio.ensure_future(
                b.execute("UPDATE orders SET total = total + 100 WHERE id = 1")
            )
            await asyncio.sleep(0.5)
            assert not other.done()  # blocked on S1's row lock
            await write(a, protocol, SAVE, "placed", 15, 1)
            await a.execute("COMMIT")
            await asyncio.wait_for(other, 10)
        finally:
            await a.close()
            await b.close()

    run(scenario())
    assert order(race)[:2] == ("placed", 115)


def test_read_committed_lock_skips_a_row_changed_since_it_was_read(pg, proxy_factory, tmp_path):
    """Two orders read; S2 changes order 2 before S1's inserts: the lock takes order 1 only,
    so S1's save of order 1 (changed by its own trigger) passes, and its save of order 2
    (changed by S2, then by S1's own trigger: its row version is S1's) conflicts."""
    race = SideRace(pg, proxy_factory, tmp_path, COLUMNS, True)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.execute("INSERT INTO orders VALUES (2, 'open', 20, 1)")
            await a.execute("BEGIN")
            assert len(await a.fetch("SELECT * FROM orders ORDER BY id")) == 2
            await b.execute("UPDATE orders SET total = total + 100 WHERE id = 2")
            await a.execute(LINE, 1, 5)
            await a.execute(SAVE, "placed", 15, 1)
            await a.execute(LINE, 2, 5)
            with pytest.raises(asyncpg.SerializationError):
                await a.execute(SAVE, "placed", 25, 2)
            await a.execute("ROLLBACK")
        finally:
            await a.close()
            await b.close()

    run(scenario())
    assert run(race.row("SELECT total FROM orders WHERE id = 2")) == (120,)


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_read_committed_twin_other_change_under_own_trigger(
    pg, proxy_factory, tmp_path, protocol, strategy, via_proxy
):
    """S1 reads the order (total 10); S2 adds 100 and commits; S1 inserts a line (its trigger
    adds 5 on top of S2's change: the row's xmin is S1's own now) and saves total = 15.
    Directly, S2's 100 is lost; through the proxy, 40001."""
    race = SideRace(pg, proxy_factory, tmp_path, RULES[strategy], via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            await a.fetch("SELECT * FROM orders WHERE id = 1")
            await b.execute("UPDATE orders SET total = total + 100 WHERE id = 1")
            await write(a, protocol, LINE, 1, 5)
            if via_proxy:
                with pytest.raises(asyncpg.SerializationError):
                    await write(a, protocol, SAVE, "placed", 15, 1)
                await a.execute("ROLLBACK")
            else:
                await write(a, protocol, SAVE, "placed", 15, 1)
                await a.execute("COMMIT")
        finally:
            await a.close()
            await b.close()

    run(scenario())
    if via_proxy:
        assert order(race)[:2] == ("open", 110)
    else:
        assert order(race)[:2] == ("placed", 15)  # S2's +100 is gone without a word


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_repeatable_read_twin_read_before_the_transaction(
    pg, proxy_factory, tmp_path, protocol, strategy, via_proxy
):
    """The read comes from before S1's REPEATABLE READ transaction: S2's change committed
    before its snapshot, so the trigger applies on top of it without an error, and the row's
    xmin is S1's own. The read is not of this transaction: through the proxy, 40001."""
    race = SideRace(pg, proxy_factory, tmp_path, RULES[strategy], via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.fetch("SELECT * FROM orders WHERE id = 1")
            await b.execute("UPDATE orders SET total = total + 100 WHERE id = 1")
            await a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await write(a, protocol, LINE, 1, 5)
            if via_proxy:
                with pytest.raises(asyncpg.SerializationError):
                    await write(a, protocol, SAVE, "placed", 15, 1)
                await a.execute("ROLLBACK")
            else:
                await write(a, protocol, SAVE, "placed", 15, 1)
                await a.execute("COMMIT")
        finally:
            await a.close()
            await b.close()

    run(scenario())
    if via_proxy:
        assert order(race)[:2] == ("open", 110)
    else:
        assert order(race)[:2] == ("placed", 15)  # S2's +100 is gone without a word


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_repeatable_read_twin_other_change_inside_the_transaction(
    pg, proxy_factory, tmp_path, protocol, strategy, via_proxy
):
    """S1 reads the order inside its REPEATABLE READ transaction; S2 changes it and commits;
    S1's insert fires the trigger, whose UPDATE PostgreSQL itself refuses (40001: concurrent
    update), with or without the proxy: the case the exemption relies on."""
    race = SideRace(pg, proxy_factory, tmp_path, RULES[strategy], via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await a.fetch("SELECT * FROM orders WHERE id = 1")
            await b.execute("UPDATE orders SET total = total + 100 WHERE id = 1")
            with pytest.raises(asyncpg.SerializationError):
                await write(a, protocol, LINE, 1, 5)
            await a.execute("ROLLBACK")
        finally:
            await a.close()
            await b.close()

    run(scenario())
    assert order(race)[:2] == ("open", 110)


@pytest.mark.parametrize("via_proxy", [True, False], ids=["proxy", "direct"])
def test_repeatable_read_twin_column_not_read_in_the_transaction(
    pg, proxy_factory, tmp_path, protocol, via_proxy
):
    """Columns strategy: S1 read the whole order before its transaction, and in it reads only
    the status again; S2's earlier change of the total is not in S1's snapshot of the total,
    so the own trigger's later change does not excuse the save of the total: 40001."""
    race = SideRace(pg, proxy_factory, tmp_path, COLUMNS, via_proxy)

    async def scenario():
        a, b = await race.connect(), await race.connect()
        try:
            await a.fetch("SELECT * FROM orders WHERE id = 1")
            await b.execute("UPDATE orders SET total = total + 100 WHERE id = 1")
            await a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await a.fetch("SELECT id, status FROM orders WHERE id = 1")
            await write(a, protocol, LINE, 1, 5)
            if via_proxy:
                with pytest.raises(asyncpg.SerializationError):
                    await write(a, protocol, SAVE, "placed", 15, 1)
                await a.execute("ROLLBACK")
            else:
                await write(a, protocol, SAVE, "placed", 15, 1)
                await a.execute("COMMIT")
        finally:
            await a.close()
            await b.close()

    run(scenario())
    assert order(race)[:2] == (("open", 110) if via_proxy else ("placed", 15))
