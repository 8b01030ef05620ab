"""The proxy survives misbehaving clients and servers, refuses encryption cleanly and
drains on SIGTERM."""

from __future__ import annotations

import asyncio
import random
import signal
import struct
import subprocess
import threading
import time
import uuid

import asyncpg
import psycopg
import pytest

from tests.support import (
    RawClient,
    backend_gone,
    backend_pids,
    client_env,
    connect,
    pg_tool,
    port_accepts,
    psql_with_ssl,
    query_direct,
    rows,
    run_async,
    run_psql,
    wait_until,
)
from tests.support.rawpg import (
    PROTOCOL_3_0,
    gssenc_request,
    message,
    query,
    ssl_request,
    startup_packet,
)


def _app() -> str:
    return f"relay-rb-{uuid.uuid4().hex[:10]}"


def assert_serving(proxy, *open_conns: psycopg.Connection) -> None:
    """The proxy process is alive, sessions opened before still work, new ones too."""
    assert proxy.alive, proxy.describe()
    for c in open_conns:
        assert c.execute("select 'old session ok'").fetchone() == ("old session ok",)
    with connect(proxy.dsn) as c:
        assert c.execute("select 'new session ok'").fetchone() == ("new session ok",)


# --------------------------------------------------------------------------- clients that vanish


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_client_gone_mid_query_backend_goes_away(proxy, upstream_dsn, close):
    app = _app()
    with connect(proxy.dsn) as bystander:
        raw = RawClient(proxy.host, proxy.port)
        raw.startup(application_name=app)
        raw.send(query("select pg_sleep(5)"))
        pids = wait_until(
            lambda: backend_pids(
                upstream_dsn, application_name=app, query_like="select pg_sleep(5)%"
            ),
            5,
            what="the query to run on the server",
        )
        raw.close(reset=(close == "rst"))
        t0 = time.monotonic()
        wait_until(
            lambda: backend_gone(upstream_dsn, pids[0]),
            3,
            what=f"server backend {pids[0]} to go away after its client vanished (pg_sleep(5) still running)",
        )
        assert time.monotonic() - t0 < 3
        assert_serving(proxy, bystander)


def test_client_process_killed_mid_query(proxy, upstream_dsn):
    app = _app()
    cmd = [
        pg_tool("psql"),
        proxy.dsn_for("postgres", application_name=app),
        "-X",
        "-c",
        "select pg_sleep(5)",
    ]
    proc = subprocess.Popen(
        cmd,
        env=client_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pids = wait_until(
            lambda: backend_pids(upstream_dsn, application_name=app, query_like="select pg_sleep%"),
            5,
            what="psql's query to run on the server",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        wait_until(
            lambda: backend_gone(upstream_dsn, pids[0]),
            3,
            what=f"server backend {pids[0]} to go away after psql was killed",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_serving(proxy)


def test_client_gone_idle_in_transaction_releases_locks(proxy, upstream_dsn):
    app = _app()
    table = f"relay_rb_{uuid.uuid4().hex[:8]}"
    query_direct(upstream_dsn, f"create table {table} (id int primary key, v int)")
    query_direct(upstream_dsn, f"insert into {table} values (1, 0)")
    raw = RawClient(proxy.host, proxy.port)
    raw.startup(application_name=app)
    for sql in ("begin", f"update {table} set v = 1 where id = 1"):
        msgs = raw.simple_query(sql)
        assert msgs[-1].kind == b"Z" and not any(m.kind == b"E" for m in msgs)
    pid = backend_pids(upstream_dsn, application_name=app)[0]
    raw.close(reset=True)
    wait_until(
        lambda: backend_gone(upstream_dsn, pid),
        3,
        what="the abandoned transaction's backend to go away",
    )
    with connect(proxy.dsn) as c:
        c.execute("set lock_timeout = '2s'")
        c.execute(f"update {table} set v = 2 where id = 1")  # the row lock is free again
        assert c.execute(f"select v from {table}").fetchone() == (2,)
        c.execute(f"drop table {table}")


# --------------------------------------------------------------------------- server ends the session


def test_server_terminates_idle_backend(proxy, upstream_dsn):
    app = _app()
    with connect(proxy.dsn) as bystander:
        conn = connect(proxy.dsn, application_name=app)
        try:
            conn.execute("select 1")
            pid = backend_pids(upstream_dsn, application_name=app)[0]
            assert query_direct(upstream_dsn, "select pg_terminate_backend(%s, 5000)", [pid]) == [
                (True,)
            ]
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
            assert time.monotonic() - t0 < 5
        finally:
            conn.close()
        assert_serving(proxy, bystander)


def test_server_terminates_busy_backend(proxy, upstream_dsn):
    app = _app()
    conn = connect(proxy.dsn, application_name=app)
    try:
        pid = backend_pids(upstream_dsn, application_name=app)[0]

        def kill_later():
            time.sleep(0.5)
            query_direct(upstream_dsn, "select pg_terminate_backend(%s)", [pid])

        t = threading.Thread(target=kill_later)
        t.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as ei:
            conn.execute("select pg_sleep(10)")
        t.join()
        assert time.monotonic() - t0 < 5
        assert ei.value.sqlstate in ("57P01", None), ei.value
        assert "terminating connection due to administrator command" in str(ei.value)
    finally:
        conn.close()
    assert_serving(proxy)


def test_server_terminates_backend_asyncpg(proxy, upstream_dsn):
    app = _app()

    async def scenario():
        conn = await asyncpg.connect(
            proxy.dsn, timeout=10, server_settings={"application_name": app}
        )
        try:
            pid = (await asyncio.to_thread(backend_pids, upstream_dsn, application_name=app))[0]
            await asyncio.to_thread(
                query_direct, upstream_dsn, "select pg_terminate_backend(%s, 5000)", [pid]
            )
            with pytest.raises(
                (
                    asyncpg.exceptions.AdminShutdownError,
                    asyncpg.exceptions.ConnectionDoesNotExistError,
                    asyncpg.exceptions.InterfaceError,
                    ConnectionError,
                )
            ):
                for _ in range(3):
                    await conn.fetchval("select 1", timeout=5)
                    await asyncio.sleep(0.2)
        finally:
            conn.terminate()

    run_async(scenario(), 20)
    assert_serving(proxy)


# --------------------------------------------------------------------------- garbage


def _random_garbage() -> bytes:
    rnd = random.Random(20240601)
    data = bytes(rnd.getrandbits(8) for _ in range(4096))
    assert struct.unpack("!I", data[4:8])[0] not in (PROTOCOL_3_0, 80877103, 80877104, 80877102)
    return data


def _startup_no_user() -> bytes:
    body = struct.pack("!I", PROTOCOL_3_0) + b"database\0postgres\0\0"
    return struct.pack("!I", len(body) + 4) + body


GARBAGE = {
    "random-bytes": _random_garbage(),
    "absurd-length": struct.pack("!II", 0x7FFFFFFF, PROTOCOL_3_0),
    "huge-length": struct.pack("!II", 0xFFFFFFF0, PROTOCOL_3_0) + b"x" * 100,
    "length-too-small": struct.pack("!II", 4, PROTOCOL_3_0),
    "zero-length": b"\0" * 8,
    "truncated-startup": startup_packet()[:-7],
    "truncated-header": b"\0\0",
    "unsupported-protocol": startup_packet(protocol=(9 << 16) | 9),
    "startup-without-user": _startup_no_user(),
    "query-before-startup": query("select 1"),
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + b"\0" * 160,
    "nothing": b"",
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_before_startup(proxy, name):
    with connect(proxy.dsn) as bystander:
        with RawClient(proxy.host, proxy.port, timeout=10) as raw:
            if GARBAGE[name]:
                raw.send(GARBAGE[name])
            try:
                raw.shutdown_write()
            except OSError:
                pass
            data, how = raw.read_until_close(8)
        assert how in ("eof", "reset"), f"connection still open after {name!r}: got {data[:100]!r}"
        assert data == b"" or data[:1] == b"E", f"unexpected reply to {name!r}: {data[:200]!r}"
        assert_serving(proxy, bystander)


@pytest.mark.parametrize(
    "name,payload",
    [
        ("unknown-message-type", message(b"\xff", b"abcd")),
        ("absurd-message-length", b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"select 1"),
        ("message-length-below-4", b"Q" + struct.pack("!I", 2)),
        ("second-startup-packet", startup_packet()),
        ("random-bytes", _random_garbage()),
    ],
)
def test_garbage_after_startup(proxy, upstream_dsn, name, payload):
    app = _app()
    with connect(proxy.dsn) as bystander:
        with RawClient(proxy.host, proxy.port, timeout=10) as raw:
            raw.startup(application_name=app)
            assert rows(raw.simple_query("select 1")) == [["1"]]
            pid = backend_pids(upstream_dsn, application_name=app)[0]
            raw.send(payload)
            try:
                raw.shutdown_write()
            except OSError:
                pass
            data, how = raw.read_until_close(8)
        assert how in ("eof", "reset"), f"connection still open after {name!r}: got {data[:100]!r}"
        assert data == b"" or data[:1] == b"E", f"unexpected reply to {name!r}: {data[:200]!r}"
        wait_until(
            lambda: backend_gone(upstream_dsn, pid), 5, what="the session's backend to go away"
        )
        assert_serving(proxy, bystander)


def test_many_garbage_connections_at_once(proxy):
    socks = []
    try:
        for i in range(60):
            raw = RawClient(proxy.host, proxy.port, timeout=10)
            raw.send(list(GARBAGE.values())[i % (len(GARBAGE) - 1)])
            socks.append(raw)
        with connect(proxy.dsn) as c:
            assert c.execute("select 1").fetchone() == (1,)
    finally:
        for s in socks:
            s.close(reset=True)
    assert_serving(proxy)


# --------------------------------------------------------------------------- encryption requests


def _startup_and_select(raw: RawClient) -> None:
    session = raw.startup(application_name="relay-enc")
    assert session.backend_pid is not None
    assert rows(raw.simple_query("select 'plain'")) == [["plain"]]
    raw.send(message(b"X"))


@pytest.mark.parametrize("requests", [("ssl",), ("gss",), ("gss", "ssl")])
def test_encryption_requests_answered_n(proxy, requests):
    with RawClient(proxy.host, proxy.port) as raw:
        for r in requests:
            raw.send(ssl_request() if r == "ssl" else gssenc_request())
            assert raw.recv_byte() == b"N"
        _startup_and_select(raw)
    assert_serving(proxy)


def test_psycopg_sslmode_prefer_and_require(proxy):
    with connect(proxy.dsn, sslmode="prefer") as c:
        assert c.execute("select 1").fetchone() == (1,)
        assert not c.pgconn.ssl_in_use
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(proxy.dsn, sslmode="require")
    assert time.monotonic() - t0 < 5
    assert "does not support SSL" in str(ei.value)
    assert_serving(proxy)


def test_psql_sslmode_prefer_and_require(proxy):
    psql = psql_with_ssl()
    if psql is None:
        pytest.skip("no psql with SSL support on this machine")
    ok = run_psql(
        proxy.dsn_for("postgres", sslmode="prefer"), "-Atc", "select 'prefer ok'", psql=psql
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "prefer ok"
    bad = run_psql(
        proxy.dsn_for("postgres", sslmode="require"), "-Atc", "select 1", psql=psql, timeout=15
    )
    assert bad.returncode == 2
    assert "does not support SSL" in bad.stderr
    assert_serving(proxy)


def test_asyncpg_ssl_require_fails_cleanly(proxy):
    async def scenario():
        with pytest.raises((ConnectionError, OSError, asyncpg.PostgresError)):
            await asyncpg.connect(proxy.dsn, ssl="require", timeout=5)
        conn = await asyncpg.connect(proxy.dsn, ssl="prefer", timeout=5)
        try:
            return await conn.fetchval("select 'prefer ok'")
        finally:
            await conn.close()

    assert run_async(scenario(), 20) == "prefer ok"
    assert_serving(proxy)


# --------------------------------------------------------------------------- graceful shutdown


def test_sigterm_with_idle_session_drains_and_exits_0(proxy_factory, upstream_dsn):
    p = proxy_factory(drain_timeout=1)
    app = _app()
    conn = connect(p.dsn, application_name=app)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        pid = backend_pids(upstream_dsn, application_name=app)[0]
        t0 = time.monotonic()
        p.terminate()
        code = p.wait(10)
        elapsed = time.monotonic() - t0
        assert code == 0, p.describe()
        assert elapsed < 6, f"took {elapsed:.1f}s with --drain-timeout 1"
        assert not port_accepts(p.host, p.port)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        wait_until(
            lambda: backend_gone(upstream_dsn, pid),
            5,
            what="the drained session's backend to go away",
        )
    finally:
        conn.close()


def test_sigterm_lets_open_transaction_finish(proxy_factory, upstream_dsn):
    table = f"relay_drain_{uuid.uuid4().hex[:8]}"
    query_direct(upstream_dsn, f"create table {table} (id int)")
    p = proxy_factory(drain_timeout=4)
    conn = connect(p.dsn, autocommit=False)
    try:
        conn.execute(f"insert into {table} values (1)")
        p.terminate()
        time.sleep(0.5)
        assert p.alive, (
            "exited although a transaction was open and the drain timeout had not passed"
        )
        assert not port_accepts(p.host, p.port), "still accepting new connections while draining"
        conn.execute(f"insert into {table} values (2)")
        conn.commit()
        code = p.wait(10)
        assert code == 0, p.describe()
    finally:
        conn.close()
    assert query_direct(upstream_dsn, f"select array_agg(id order by id) from {table}") == [
        ([1, 2],)
    ]
    query_direct(upstream_dsn, f"drop table {table}")


def test_sigterm_rolls_back_transaction_past_drain_timeout(proxy_factory, upstream_dsn):
    table = f"relay_drain_{uuid.uuid4().hex[:8]}"
    query_direct(upstream_dsn, f"create table {table} (id int)")
    p = proxy_factory(drain_timeout=1)
    conn = connect(p.dsn, autocommit=False)
    try:
        conn.execute(f"insert into {table} values (1)")
        t0 = time.monotonic()
        p.terminate()
        code = p.wait(10)
        assert code == 0, p.describe()
        assert time.monotonic() - t0 < 6
        with pytest.raises(psycopg.OperationalError):
            conn.execute(f"insert into {table} values (2)")
            conn.commit()
    finally:
        conn.close()
    wait_until(
        lambda: query_direct(upstream_dsn, f"select count(*) from {table}") == [(0,)],
        5,
        what="the unfinished transaction to be rolled back",
    )
    query_direct(upstream_dsn, f"drop table {table}")


# --------------------------------------------------------------------------- harness


def test_proxy_factory_metrics_and_output(proxy_factory):
    import urllib.request

    p = proxy_factory(metrics=True)
    with connect(p.dsn) as c:
        assert c.execute("select 1").fetchone() == (1,)
    with urllib.request.urlopen(p.metrics_url, timeout=5) as r:
        assert r.status == 200
        assert "optimist" in r.read().decode()
    assert isinstance(p.stderr_text(), str)
