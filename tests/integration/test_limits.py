"""Limits and timeouts (--max-message-size, --max-client-connections, --auth-timeout,
--idle-timeout, --query-timeout), protocol oddities answered as PostgreSQL answers them, and
SQL the planner cannot read passed through untouched (and counted).

Where PostgreSQL itself has an answer, the test runs the same bytes against a direct
connection and compares: same SQLSTATEs, same message kinds, the connection left in the same
state.
"""

from __future__ import annotations

import struct
import time

import psycopg
import pytest

from tests.support import RawClient, connect, query_direct, rows, wait_until
from tests.support.locking import VERSION_RULES, make_database, write_rules
from tests.support.rawpg import message, query, startup_packet, sync

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- helpers


def parse_backend(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        kind = data[pos : pos + 1]
        length = struct.unpack("!I", data[pos + 1 : pos + 5])[0]
        out.append((kind, data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def fields_of(payload: bytes) -> dict[str, str]:
    return {chr(p[0]): p[1:].decode(errors="replace") for p in payload.split(b"\0") if p}


def errors_in(data: bytes) -> list[tuple[str, str]]:
    """(severity, SQLSTATE) of every ErrorResponse in a backend byte stream."""
    return [(fields_of(p)["S"], fields_of(p)["C"]) for k, p in parse_backend(data) if k == b"E"]


def read_for(raw: RawClient, seconds: float) -> tuple[bytes, str]:
    """What arrives within `seconds` (or until the peer closes)."""
    return raw.read_until_close(seconds)


def assert_serving(p) -> None:
    assert p.alive, p.describe()
    with connect(p.dsn) as c:
        assert c.execute("select 'still serving'").fetchone() == ("still serving",)


def bind(portal: bytes, statement: bytes, params: list[bytes | None] = ()) -> bytes:
    body = (
        portal + b"\0" + statement + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(params))
    )
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!h", 0)
    return message(b"B", body)


def parse_msg(name: bytes, sql: str) -> bytes:
    return message(b"P", name + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def execute(portal: bytes = b"", max_rows: int = 0) -> bytes:
    return message(b"E", portal + b"\0" + struct.pack("!i", max_rows))


def describe(kind: bytes, name: bytes) -> bytes:
    return message(b"D", kind + name + b"\0")


def close_msg(kind: bytes, name: bytes) -> bytes:
    return message(b"C", kind + name + b"\0")


def scenario_outcome(
    host: str, port: int, database: str, payload: bytes, *, expect_ready: int, wait: float = 5.0
) -> dict:
    """Start a session, send `payload`, read until `expect_ready` ReadyForQuery messages (0:
    until the peer closes), or close, or `wait` seconds; then check whether the session still
    answers a query."""
    with RawClient(host, port, timeout=10) as raw:
        raw.startup(database=database)
        raw.send(payload)
        got: list[tuple[bytes, bytes]] = []
        closed = False
        deadline = time.monotonic() + wait
        while not expect_ready or sum(1 for k, _ in got if k == b"Z") < expect_ready:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            raw.sock.settimeout(left)
            try:
                m = raw.recv_message()
            except (EOFError, ConnectionResetError):
                closed = True
                break
            except TimeoutError:
                break
            got.append((m.kind, m.payload))
        alive = False
        if not closed:
            try:
                raw.sock.settimeout(5)
                alive = rows(raw.simple_query("select 'alive'")) == [["alive"]]
            except (EOFError, OSError, ValueError):
                alive = False
    kinds = [k for k, _ in got if k not in (b"N", b"S")]
    return {
        "kinds": kinds,
        "errors": [(fields_of(p)["S"], fields_of(p)["C"]) for k, p in got if k == b"E"],
        "closed": closed,
        "alive": alive,
    }


# --------------------------------------------------------------------------- message size


def test_max_message_size_refuses_larger_client_message(proxy_factory):
    p = proxy_factory("--max-message-size", "4096")
    with connect(p.dsn) as bystander:
        with RawClient(p.host, p.port) as raw:
            raw.startup()
            small = "select '" + "x" * 3000 + "'"
            assert rows(raw.simple_query(small)) == [["x" * 3000]]
            raw.send(query("select '" + "y" * 5000 + "'"))
            data, how = read_for(raw, 10)
        assert how in ("eof", "reset"), "connection left open after an oversized message"
        assert errors_in(data) == [("FATAL", "08P01")], data[:300]
        assert bystander.execute("select 'bystander ok'").fetchone() == ("bystander ok",)
    # the same with psycopg: a clear error, the proxy keeps serving
    with connect(p.dsn) as c:
        with pytest.raises(psycopg.OperationalError):
            c.execute("select %s::text", ["z" * 8000])
    assert_serving(p)


def test_max_message_size_oversized_header_refused_before_body(proxy_factory):
    """The length in the header is enough: a client announcing 100 MB is refused at once,
    not after the proxy buffered it."""
    p = proxy_factory("--max-message-size", "4096")
    with RawClient(p.host, p.port) as raw:
        raw.startup()
        raw.send(b"Q" + struct.pack("!I", 100_000_000) + b"select 1")
        t0 = time.monotonic()
        data, how = read_for(raw, 10)
    assert how in ("eof", "reset") and time.monotonic() - t0 < 3
    assert errors_in(data) == [("FATAL", "08P01")]
    assert_serving(p)


def test_max_message_size_does_not_limit_server_results(proxy_factory):
    """The limit bounds what *clients* send (as PostgreSQL's own limits do): a result row
    larger than it is the server's answer, relayed like any other."""
    p = proxy_factory("--max-message-size", "4096")
    with connect(p.dsn) as c:
        assert c.execute("select length(repeat('x', 100000))").fetchone() == (100000,)
        value = c.execute("select repeat('x', 100000)").fetchone()[0]
        assert len(value) == 100000
    assert_serving(p)


@pytest.mark.parametrize(
    "size,accepted", [(10000, True), (10004, True), (10005, False), (100000, False)]
)
def test_startup_packet_length_limit(proxy, pg, size, accepted):
    """PostgreSQL refuses a startup packet whose length word, less its own 4 bytes, exceeds
    MAX_STARTUP_PACKET_LENGTH (10000): packets of up to 10004 bytes in all are accepted."""
    head = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0application_name\0"
    body = head + b"a" * (size - 4 - len(head) - 2) + b"\0\0"
    packet = struct.pack("!I", len(body) + 4) + body
    assert len(packet) == size
    outcomes = {}
    for name, (host, port) in {
        "direct": (pg.host, pg.port),
        "proxy": (proxy.host, proxy.port),
    }.items():
        with RawClient(host, port) as raw:
            raw.send(packet)
            try:
                msgs = raw.read_until((b"Z", b"E"))
                outcomes[name] = (
                    "ready" if msgs[-1].kind == b"Z" else f"error {msgs[-1].fields.get('C')}"
                )
            except (EOFError, ConnectionResetError):
                outcomes[name] = "closed"
    if getattr(pg, "external", False):
        outcomes.pop("direct")
    if accepted:
        assert set(outcomes.values()) == {"ready"}, outcomes
    else:
        # PostgreSQL closes without a word (COMMERROR); optimist says why (08P01)
        assert outcomes["proxy"] in ("closed", "error 08P01"), outcomes
        assert outcomes.get("direct", "closed") in ("closed", "error 08P01"), outcomes
    assert_serving(proxy)


# --------------------------------------------------------------------------- connection limit


def test_max_client_connections(proxy_factory):
    p = proxy_factory("--max-client-connections", "3")
    conns = [connect(p.dsn) for _ in range(3)]
    try:
        with pytest.raises(psycopg.OperationalError) as err:
            connect(p.dsn)
        assert "too many clients" in str(err.value)
        with RawClient(p.host, p.port) as raw:
            raw.send(startup_packet())
            data, how = read_for(raw, 10)
        assert how in ("eof", "reset")
        assert errors_in(data) == [("FATAL", "53300")]
        for c in conns:
            assert c.execute("select 'earlier ok'").fetchone() == ("earlier ok",)
        conns.pop().close()

        def new_accepted():
            try:
                conns.append(connect(p.dsn))
                return True
            except psycopg.OperationalError:
                return False

        wait_until(new_accepted, timeout=5, what="a new client once one has closed")
        assert conns[-1].execute("select 1").fetchone() == (1,)
        # raw sockets that never start up count too (they hold a slot until auth timeout)
        with pytest.raises(psycopg.OperationalError):
            connect(p.dsn)
    finally:
        for c in conns:
            c.close()
    assert p.alive


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("what", ["nothing", "partial-startup", "partial-length"])
def test_auth_timeout_closes_silent_clients(proxy_factory, what):
    p = proxy_factory("--auth-timeout", "1")
    payload = {"nothing": b"", "partial-startup": startup_packet()[:12], "partial-length": b"\0\0"}[
        what
    ]
    with RawClient(p.host, p.port) as raw:
        t0 = time.monotonic()
        if payload:
            raw.send(payload)
        data, how = read_for(raw, 8)
        elapsed = time.monotonic() - t0
    assert how in ("eof", "reset"), f"still open after {elapsed:.1f}s"
    assert 0.8 < elapsed < 3.5, elapsed
    assert errors_in(data) in ([], [("FATAL", "08P01")])
    assert_serving(p)


def test_auth_timeout_does_not_touch_authenticated_sessions(proxy_factory):
    p = proxy_factory("--auth-timeout", "1")
    with RawClient(p.host, p.port) as raw:
        raw.startup()
        time.sleep(2.5)
        assert rows(raw.simple_query("select 'kept'")) == [["kept"]]


def test_auth_timeout_during_password_exchange(proxy_factory, pg_factory):
    """The server asks for a password and the client never answers."""
    server = pg_factory()
    hba = server.data_dir / "pg_hba.conf"
    st = hba.stat()
    hba.write_text(
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    import os

    os.chown(hba, st.st_uid, st.st_gid)
    with connect(server.dsn) as c:
        c.execute("create role slow_bob login password 'pw'")
        c.execute("select pg_reload_conf()")
    p = proxy_factory("--auth-timeout", "1", upstream=(server.host, server.port))
    with RawClient(p.host, p.port) as raw:
        raw.send(startup_packet(user="slow_bob"))
        first = raw.recv_message()
        assert first.kind == b"R" and struct.unpack("!I", first.payload[:4])[0] == 10  # SASL
        t0 = time.monotonic()
        data, how = read_for(raw, 8)
    assert how in ("eof", "reset")
    assert time.monotonic() - t0 < 3.5
    assert_serving(p)


def test_idle_timeout_closes_idle_session_with_57P05(proxy_factory):
    p = proxy_factory("--idle-timeout", "1")
    with RawClient(p.host, p.port) as raw:
        raw.startup()
        assert rows(raw.simple_query("select 1")) == [["1"]]
        t0 = time.monotonic()
        data, how = read_for(raw, 8)
        elapsed = time.monotonic() - t0
    assert how in ("eof", "reset")
    assert 0.8 < elapsed < 3.5, elapsed
    errors = [fields_of(pl) for k, pl in parse_backend(data) if k == b"E"]
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "57P05")]
    assert "idle-session timeout" in errors[0]["M"]
    # psycopg sees it on its next statement
    c = connect(p.dsn)
    try:
        time.sleep(2.5)
        with pytest.raises(psycopg.OperationalError) as err:
            c.execute("select 1")
        assert "idle-session timeout" in str(err.value) or c.closed
    finally:
        c.close()
    assert_serving(p)


def test_idle_timeout_spares_open_transactions_and_busy_sessions(proxy_factory):
    p = proxy_factory("--idle-timeout", "1")
    with RawClient(p.host, p.port) as raw:
        raw.startup()
        raw.simple_query("begin")
        time.sleep(2.5)
        assert rows(raw.simple_query("select 'in transaction'")) == [["in transaction"]]
        raw.simple_query("select 1/0")  # failed transaction block: still a transaction
        time.sleep(2.5)
        msgs = raw.simple_query("rollback")
        assert msgs[-1].kind == b"Z" and msgs[-1].payload == b"I"
        # a query running longer than the idle timeout is not idleness
        assert rows(raw.simple_query("select pg_sleep(2.5)::text")) == [[""]]
        assert rows(raw.simple_query("select 'still here'")) == [["still here"]]


def test_query_timeout_cancels_long_query(proxy_factory):
    p = proxy_factory("--query-timeout", "1")
    with connect(p.dsn) as c:
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as err:
            c.execute("select pg_sleep(10)")
        assert err.value.sqlstate == "57014"
        assert time.monotonic() - t0 < 4
        assert c.execute("select 'usable after'").fetchone() == ("usable after",)
        # short queries are not touched, however many
        for _ in range(20):
            c.execute("select pg_sleep(0.01)")
        # inside a transaction: the statement is cancelled, the block aborted, as with
        # statement_timeout
        c.autocommit = False
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("select pg_sleep(10)")
        c.rollback()
        assert c.execute("select 2").fetchone() == (2,)
    with RawClient(p.host, p.port) as raw:
        raw.startup()
        t0 = time.monotonic()
        msgs = raw.simple_query("select pg_sleep(10)")
        assert [m.fields["C"] for m in msgs if m.kind == b"E"] == ["57014"]
        assert time.monotonic() - t0 < 4
    assert_serving(p)


def test_query_timeout_extended_protocol(proxy_factory):
    import asyncio

    import asyncpg

    p = proxy_factory("--query-timeout", "1")

    async def scenario():
        conn = await asyncpg.connect(p.dsn, timeout=10)
        try:
            t0 = time.monotonic()
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.fetchval("select pg_sleep($1)", 10.0)
            assert time.monotonic() - t0 < 4
            return await conn.fetchval("select $1::int + 1", 1)
        finally:
            await conn.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == 2


# --------------------------------------------------------------------------- protocol oddities
# the same bytes to PostgreSQL and through the proxy: the same answer


ODDITIES = {
    # after authentication a StartupMessage is not a valid message: its first byte (0) is
    # read as a message type; PostgreSQL answers FATAL 08P01 at once
    "second-startup-message": (startup_packet(), 0),
    "bind-unknown-statement": (bind(b"", b"no_such_statement") + execute() + sync(), 1),
    "execute-unknown-portal": (execute(b"no_such_portal") + sync(), 1),
    "describe-unknown-statement": (describe(b"S", b"no_such_statement") + sync(), 1),
    "describe-unknown-portal": (describe(b"P", b"no_such_portal") + sync(), 1),
    "close-unknown-statement": (close_msg(b"S", b"no_such_statement") + sync(), 1),
    "parse-syntax-error-then-more": (
        parse_msg(b"", "selec 1") + bind(b"", b"") + execute() + sync() + query("select 'after'"),
        2,
    ),
    "copy-data-outside-copy": (
        message(b"d", b"stray row\n") + message(b"c") + query("select 'after copy data'"),
        1,
    ),
    "copy-fail-outside-copy": (message(b"f", b"why\0") + query("select 'after copy fail'"), 1),
    "flush-only": (message(b"H") + query("select 'after flush'"), 1),
    "sync-only": (sync() + sync(), 2),
    "empty-query": (query(""), 1),
    "function-call-unknown-oid": (
        message(b"F", struct.pack("!IhhH", 1, 0, 0, 0) + struct.pack("!h", 0)),
        1,
    ),
    "bind-wrong-parameter-count": (
        parse_msg(b"s1", "select $1::int") + bind(b"", b"s1") + execute() + sync(),
        1,
    ),
    "bind-invalid-integer": (
        parse_msg(b"s2", "select $1::int") + bind(b"", b"s2", [b"abc"]) + execute() + sync(),
        1,
    ),
    "query-invalid-utf8": (message(b"Q", b"select '\xff\xfe'\0"), 1),
    "execute-with-row-limit": (
        parse_msg(b"", "select generate_series(1, 5)")
        + bind(b"", b"")
        + execute(b"", 2)
        + execute(b"", 2)
        + sync(),
        1,
    ),
}


@pytest.fixture(scope="module")
def oddity_targets(pg, tmp_path_factory):
    """Direct, through a plain proxy and through a proxy with rules (the enforcer decodes
    Parse/Bind/Execute/Describe/Close)."""
    from tests.support import ProxyProcess

    db = make_database(pg.dsn)
    rules = write_rules(tmp_path_factory.mktemp("rules"), VERSION_RULES)
    plain = ProxyProcess(pg.host, pg.port).start()
    ruled = ProxyProcess(pg.host, pg.port, rules=rules).start()
    try:
        yield (
            db,
            {
                "direct": (pg.host, pg.port),
                "proxy": (plain.host, plain.port),
                "proxy+rules": (ruled.host, ruled.port),
            },
        )
    finally:
        for p in (plain, ruled):
            code = p.stop()
            text = p.describe()
            p.cleanup()
            assert code == 0, text


@pytest.mark.parametrize("name", list(ODDITIES))
def test_protocol_oddity_answered_as_postgresql(oddity_targets, name):
    db, targets = oddity_targets
    payload, ready = ODDITIES[name]
    outcomes = {
        target: scenario_outcome(host, port, db, payload, expect_ready=ready)
        for target, (host, port) in targets.items()
    }
    direct = outcomes.pop("direct")
    for target, got in outcomes.items():
        assert got["errors"] == direct["errors"], (target, got, direct)
        assert got["kinds"] == direct["kinds"], (target, got, direct)
        assert (got["closed"], got["alive"]) == (direct["closed"], direct["alive"]), (
            target,
            got,
            direct,
        )
    for host, port in list(targets.values())[1:]:
        with RawClient(host, port) as raw:
            raw.startup(database=db)
            assert rows(raw.simple_query("select 'serving'")) == [["serving"]]


# --------------------------------------------------------------------------- unreadable SQL


def scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def unverified(url: str, table: str, reason: str) -> float:
    from tests.support.promtext import sample_sum as sample

    return sample(scrape(url), "optimist_unverified_writes_total", table=table, reason=reason)


UNREADABLE = {
    # sqlglot cannot read the statement: relayed as the client wrote it
    "where-current-of": (
        [
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT id, owner, balance, version FROM accounts WHERE id = 2 FOR UPDATE",
            "FETCH c",
            "UPDATE accounts SET balance = 222 WHERE CURRENT OF c",
            "DELETE FROM accounts WHERE CURRENT OF c",
            "COMMIT",
        ],
        "where_current_of",
        2,
    ),
    "is-nfc-normalized": (
        [
            "SELECT * FROM accounts WHERE id = 1",
            "UPDATE accounts SET balance = 111 WHERE id = 1 AND owner IS NFC NORMALIZED",
            "SELECT * FROM accounts WHERE id = 3",
            "DELETE FROM accounts WHERE id = 3 AND owner IS NOT NFC NORMALIZED",
        ],
        "parse_error",
        2,
    ),
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_write_passes_through_untouched_and_is_counted(
    pg, proxy_factory, tmp_path, name
):
    statements, reason, count = UNREADABLE[name]
    via_proxy_db, direct_db = make_database(pg.dsn), make_database(pg.dsn)
    p = proxy_factory(rules=write_rules(tmp_path, VERSION_RULES), metrics=True)
    base = pg.dsn.rsplit("/", 1)[0]

    def run(dsn):
        out = []
        with connect(dsn) as c:
            for sql in statements:
                cur = c.execute(sql)
                out.append((cur.statusmessage, cur.fetchall() if cur.description else None))
        return out

    through = run(p.dsn_for(via_proxy_db))
    direct = run(f"{base}/{direct_db}")
    assert through == direct
    state = "SELECT id, owner, balance, version FROM accounts ORDER BY id"
    assert query_direct(f"{base}/{via_proxy_db}", state) == query_direct(
        f"{base}/{direct_db}", state
    )
    # nothing was added: no version bump on the rows written
    assert wait_until(
        lambda: unverified(p.metrics_url, "public.accounts", reason) == count,
        timeout=5,
        what=f"{count} unverified writes counted with reason {reason}",
    )
    # the extended protocol too
    if name == "is-nfc-normalized":
        with connect(p.dsn_for(via_proxy_db)) as c:
            c.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
            cur = c.execute(
                "UPDATE accounts SET balance = %s WHERE id = %s AND owner IS NFC NORMALIZED", [5, 2]
            )
            assert cur.rowcount == 1
        assert query_direct(
            f"{base}/{via_proxy_db}", "SELECT balance, version FROM accounts WHERE id = 2"
        ) == [(5, 1)]
        wait_until(
            lambda: unverified(p.metrics_url, "public.accounts", reason) == count + 1,
            timeout=5,
            what="the extended-protocol unverified write counted",
        )
