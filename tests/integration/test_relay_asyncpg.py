"""asyncpg (extended protocol, binary formats, pipelining) through the proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import struct
import time
import uuid

import asyncpg
import pytest

from tests.support import RawClient, backend_pids, run_async, wait_until
from tests.support.rawpg import cancel_request


async def connect(dsn: str, **kwargs) -> asyncpg.Connection:
    kwargs.setdefault("timeout", 10)
    return await asyncpg.connect(dsn, **kwargs)


def test_prepared_statements(proxy, upstream_dsn):
    async def scenario(dsn):
        conn = await connect(dsn)
        try:
            stmt = await conn.prepare("select $1::int + $2::int as s, $3::text || '!' as t")
            out = [tuple(await stmt.fetchrow(i, i * 2, f"n{i}")) for i in range(50)]
            params = [t.name for t in stmt.get_parameters()]
            cols = [(a.name, a.type.name) for a in stmt.get_attributes()]
            # the statement cache re-uses server-side statements for repeated queries
            cached = [await conn.fetchval("select $1::bigint * 2", i) for i in range(20)]
            # explicit unnamed and many named statements alive at once
            stmts = [await conn.prepare(f"select $1::int + {k}") for k in range(30)]
            many = [await s.fetchval(1) for s in stmts]
            # a cursor (portal with row limits) inside a transaction
            async with conn.transaction():
                cur = await conn.cursor("select g from generate_series(1, 1000) g")
                first = await cur.fetch(10)
                await cur.forward(500)
                later = await cur.fetch(3)
            return out, params, cols, cached, many, [r[0] for r in first], [r[0] for r in later]
        finally:
            await conn.close()

    via = run_async(scenario(proxy.dsn))
    assert via == run_async(scenario(upstream_dsn))
    assert via[0][3] == (9, "n3!")
    assert via[5] == list(range(1, 11)) and via[6] == [511, 512, 513]


def test_prepared_statement_errors(proxy):
    async def scenario():
        conn = await connect(proxy.dsn)
        try:
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.prepare("select * from no_such_table_abc")
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await conn.fetch("selec $1", 1)
            stmt = await conn.prepare("select 10 / $1::int")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await stmt.fetchval(0)
            assert await stmt.fetchval(5) == 2
            with pytest.raises(asyncpg.DataError):
                await conn.fetchval("select $1::int", "not an int")
            return await conn.fetchval("select 'still fine'")
        finally:
            await conn.close()

    assert run_async(scenario()) == "still fine"


def test_executemany_pipeline(proxy, upstream_dsn):
    table = f"relay_apg_{uuid.uuid4().hex[:8]}"

    async def scenario(dsn, name):
        conn = await connect(dsn)
        try:
            await conn.execute(f"create table {name} (id int primary key, v text, n numeric)")
            rows = [(i, f"v{i}", decimal.Decimal(i) / 3) for i in range(2000)]
            await conn.executemany(f"insert into {name} values ($1, $2, $3)", rows)
            got = await conn.fetch(f"select count(*), sum(id), max(v) from {name}")
            # a failing batch is atomic (executemany runs in one implicit transaction)
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.executemany(
                    f"insert into {name} values ($1, $2, $3)",
                    [(5000, "a", 1), (5001, "b", 2), (1, "dup", 3), (5002, "c", 4)],
                )
            after = await conn.fetchval(f"select count(*) from {name}")
            await conn.copy_records_to_table(name, records=[(9000 + i, "c", 1) for i in range(500)])
            copied = await conn.fetchval(f"select count(*) from {name} where id >= 9000")
            await conn.execute(f"drop table {name}")
            return [tuple(r) for r in got], after, copied
        finally:
            await conn.close()

    via = run_async(scenario(proxy.dsn, table))
    assert via == ([(2000, 1999000, "v999")], 2000, 500)
    assert via == run_async(scenario(upstream_dsn, table + "_d"))


def test_binary_formats_round_trip(proxy):
    values = [
        ("bytea", bytes(range(256)) * 10),
        ("bytea", b""),
        ("numeric", decimal.Decimal("12345678901234567890.123456789012345678901234567890")),
        ("numeric", decimal.Decimal("-0.000000000000000000000001")),
        ("numeric", decimal.Decimal("NaN")),
        ("timestamptz", dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC)),
        (
            "timestamptz",
            dt.datetime(1900, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        ),
        ("timestamp", dt.datetime(2000, 1, 1, 12, 0)),
        ("date", dt.date(1, 1, 1)),
        ("interval", dt.timedelta(days=-3, seconds=7, microseconds=11)),
        ("int[]", [1, 2, None, -(2**31)]),
        ("text[]", ["a", None, "", "x,y", 'q"uote', "\u00e9\U0001f600"]),
        ("int[]", []),
        ("float8[]", [1.5, float("inf"), -0.0]),
        ("bigint", 2**63 - 1),
        ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("bool", True),
        ("text", "nul-free but \u2603 unicode " * 1000),
    ]
    doc = {"a": [1, 2.5, None, True], "b": {"nested": "\u00e9"}, "c": ""}

    async def scenario():
        conn = await connect(proxy.dsn)
        try:
            out = []
            for typ, v in values:
                out.append(await conn.fetchval(f"select $1::{typ}", v))
            await conn.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
            j = await conn.fetchval("select $1::jsonb", doc)
            j2 = await conn.fetchval("select jsonb_build_object('k', $1::int[])", [3, 4])
            rec = await conn.fetchrow(
                "select $1::bytea as b, $2::numeric[] as n",
                b"\x00\xff",
                [decimal.Decimal("1.10"), None],
            )
            return out, j, j2, rec
        finally:
            await conn.close()

    out, j, j2, rec = run_async(scenario())
    for (typ, v), got in zip(values, out):
        if isinstance(v, decimal.Decimal) and v.is_nan():
            assert got.is_nan()
        else:
            assert got == v, typ
    assert j == doc and j2 == {"k": [3, 4]}
    assert rec["b"] == b"\x00\xff" and rec["n"] == [decimal.Decimal("1.10"), None]


def test_listen_notify_between_proxy_connections(proxy):
    async def scenario():
        listener = await connect(proxy.dsn)
        sender = await connect(proxy.dsn)
        try:
            got: asyncio.Queue = asyncio.Queue()
            await listener.add_listener(
                "relay_chan", lambda c, pid, ch, payload: got.put_nowait((ch, payload))
            )
            await sender.execute("notify relay_chan, 'hello'")
            first = await asyncio.wait_for(got.get(), 5)
            # notifications from a transaction arrive at commit, in order
            async with sender.transaction():
                await sender.execute("select pg_notify('relay_chan', 'a')")
                await sender.execute("select pg_notify('relay_chan', 'b')")
                await asyncio.sleep(0.2)
                assert got.empty()
            second = [await asyncio.wait_for(got.get(), 5) for _ in range(2)]
            # a large payload
            await sender.execute("select pg_notify('relay_chan', repeat('x', 7000))")
            big = await asyncio.wait_for(got.get(), 5)
            # self-notification while the listener is idle between queries
            await listener.execute("notify relay_chan, 'self'")
            own = await asyncio.wait_for(got.get(), 5)
            return first, second, len(big[1]), own
        finally:
            await listener.close()
            await sender.close()

    first, second, big, own = run_async(scenario())
    assert first == ("relay_chan", "hello")
    assert second == [("relay_chan", "a"), ("relay_chan", "b")]
    assert big == 7000
    assert own == ("relay_chan", "self")


def test_cancel_by_timeout(proxy, upstream_dsn):
    """asyncpg sends a CancelRequest (to the proxy) when a query times out."""
    app = f"relay-cancel-{uuid.uuid4().hex[:8]}"

    async def scenario():
        conn = await connect(proxy.dsn, server_settings={"application_name": app})
        try:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("select pg_sleep(10)", timeout=0.5)
            # if the server had not been cancelled, this would wait for pg_sleep to finish
            value = await conn.fetchval("select 42", timeout=5)
            elapsed = time.monotonic() - t0
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(conn.fetchval("select pg_sleep(10)"), 0.5)
            value2 = await conn.fetchval("select 43", timeout=5)
            in_tx = conn.is_in_transaction()
            return value, elapsed, value2, in_tx, time.monotonic() - t0
        finally:
            await conn.close()

    value, elapsed, value2, in_tx, total = run_async(scenario())
    assert (value, value2, in_tx) == (42, 43, False)
    assert elapsed < 4, f"cancel did not reach the server in time ({elapsed:.1f}s)"
    assert total < 8
    wait_until(lambda: not backend_pids(upstream_dsn, application_name=app), 5, what="session gone")


def test_cancel_request_gives_query_canceled(proxy):
    """A CancelRequest with the key the client received raises QueryCanceledError."""

    async def scenario():
        conn = await connect(proxy.dsn)
        try:
            pid, secret = conn._protocol.backend_pid, conn._protocol.backend_secret
            key = struct.pack("!i", secret) if isinstance(secret, int) else bytes(secret)

            async def cancel_soon():
                await asyncio.sleep(0.5)
                await asyncio.to_thread(_send_cancel, proxy, pid, key)

            task = asyncio.create_task(cancel_soon())
            t0 = time.monotonic()
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.execute("select pg_sleep(10)")
            elapsed = time.monotonic() - t0
            await task
            # inside a transaction the cancel aborts the transaction, not the session
            tr = conn.transaction()
            await tr.start()
            task = asyncio.create_task(cancel_soon())
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.execute("select pg_sleep(10)")
            await task
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await conn.fetchval("select 1")
            await tr.rollback()
            return elapsed, await conn.fetchval("select 'usable'")
        finally:
            await conn.close()

    elapsed, value = run_async(scenario())
    assert elapsed < 4
    assert value == "usable"


def _send_cancel(proxy, pid: int, key: bytes) -> None:
    with RawClient(proxy.host, proxy.port, timeout=5) as raw:
        raw.send(cancel_request(pid, key))
        raw.read_until_close(5)


def test_transactions_and_status(proxy):
    table = f"relay_apg_tx_{uuid.uuid4().hex[:8]}"

    async def scenario():
        conn = await connect(proxy.dsn)
        try:
            await conn.execute(f"create table {table} (id int primary key)")
            assert not conn.is_in_transaction()
            async with conn.transaction():
                assert conn.is_in_transaction()
                await conn.execute(f"insert into {table} values (1)")
                try:
                    async with conn.transaction():  # savepoint
                        await conn.execute(f"insert into {table} values (1)")
                except asyncpg.UniqueViolationError:
                    pass
                assert conn.is_in_transaction()
                await conn.execute(f"insert into {table} values (2)")
            assert not conn.is_in_transaction()
            # a failed transaction: status E until rollback
            await conn.execute("begin")
            assert conn.is_in_transaction()
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.execute("select 1/0")
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await conn.execute("select 1")
            assert conn.is_in_transaction()
            await conn.execute("rollback")
            assert not conn.is_in_transaction()
            # rolled back work is gone, committed work stays
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute(f"insert into {table} values (3)")
                    raise RuntimeError("abort")
            ids = [r[0] for r in await conn.fetch(f"select id from {table} order by id")]
            # isolation levels and read-only transactions are passed through
            async with conn.transaction(isolation="serializable", readonly=True):
                level = await conn.fetchval("show transaction_isolation")
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await conn.execute(f"insert into {table} values (4)")
            await conn.execute(f"drop table {table}")
            return ids, level
        finally:
            await conn.close()

    assert run_async(scenario()) == ([1, 2], "serializable")
