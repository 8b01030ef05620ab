"""Faults: the upstream shuts down, crashes and comes back; clients vanish mid-transaction or
stop reading; rules are reloaded while clients hammer checked writes.

Each test uses a private PostgreSQL (pg_factory) when it stops or kills it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import asyncpg
import psutil
import psycopg
import pytest

from tests.support import (
    RawClient,
    backend_gone,
    backend_pids,
    connect,
    query_direct,
    rows,
    wait_until,
)
from tests.support.locking import VERSION_RULES, make_database, write_rules
from tests.support.promtext import sample_sum as sample
from tests.support.promtext import sample_sum as total
from tests.support.promtext import scrape
from tests.support.rawpg import message, query, startup_packet

pytestmark = pytest.mark.timeout(180)


# --------------------------------------------------------------------------- helpers


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def errors_in(data: bytes) -> list[tuple[str, str, str]]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        kind = data[pos : pos + 1]
        length = struct.unpack("!I", data[pos + 1 : pos + 5])[0]
        if kind == b"E":
            f = {
                chr(p[0]): p[1:].decode(errors="replace")
                for p in data[pos + 5 : pos + 1 + length].split(b"\0")
                if p
            }
            out.append((f["S"], f["C"], f["M"]))
        pos += 1 + length
    return out


def open_raw_session(p, app: str, database: str = "postgres") -> RawClient:
    raw = RawClient(p.host, p.port, timeout=10)
    raw.startup(database=database, application_name=app)
    assert rows(raw.simple_query("select 1")) == [["1"]]
    return raw


def refused_while_down(p) -> list[tuple[str, str, str]]:
    with RawClient(p.host, p.port) as raw:
        raw.send(startup_packet())
        data, how = raw.read_until_close(15)
    assert how in ("eof", "reset")
    return errors_in(data)


class Upstream:
    """A private server and a proxy with metrics in front of it."""

    def __init__(self, pg_factory, proxy_factory, *args, **kwargs):
        self.server = pg_factory()
        self.proxy = proxy_factory(
            *args, metrics=True, upstream=(self.server.host, self.server.port), **kwargs
        )
        self.base = self.proxy.metrics_url.rsplit("/", 1)[0]

    def ready(self) -> int:
        return http_status(self.base + "/readyz")


# --------------------------------------------------------------------------- upstream down and back


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_upstream_goes_away_and_comes_back(pg_factory, proxy_factory, how):
    up = Upstream(pg_factory, proxy_factory)
    p, server = up.proxy, up.server
    assert up.ready() == 200
    idle = open_raw_session(p, "fault-idle")
    busy = open_raw_session(p, "fault-busy")
    in_tx = connect(p.dsn, autocommit=False)
    in_tx.execute("select 1")
    busy.send(query("select pg_sleep(30)"))
    wait_until(
        lambda: backend_pids(
            server.dsn, application_name="fault-busy", query_like="select pg_sleep%"
        ),
        5,
        what="the busy query",
    )
    t0 = time.monotonic()
    if how == "stop":
        server.stop(mode="fast")
        expected = "57P01"  # "terminating connection due to administrator command"
    else:
        server.kill()
        # SIGKILL to the whole process group: a backend that notices its postmaster's death
        # before its own SIGKILL lands says so itself (57P01 "unexpected postmaster exit");
        # otherwise its connection just drops and the proxy says 08006
        expected = ("08006", "57P01")
    for raw in (idle, busy):
        data, closed = raw.read_until_close(10)
        assert closed in ("eof", "reset"), "session left open after its server went away"
        errs = errors_in(data)
        # exactly one error, the FATAL that says why
        assert len(errs) == 1 and errs[0][0] == "FATAL" and errs[0][1] in expected, errs
        raw.close()
    assert time.monotonic() - t0 < 15
    with pytest.raises(psycopg.OperationalError):
        in_tx.execute("select 1")
    in_tx.close()
    # while down: the proxy keeps accepting, says why, and is not ready
    assert p.alive
    errs = refused_while_down(p)
    assert [(s, c) for s, c, _ in errs] == [("FATAL", "08006")], errs
    assert "could not connect" in errs[0][2]
    wait_until(lambda: up.ready() == 503, 10, what="/readyz to report 503")
    assert http_status(up.base + "/healthz") == 200
    wait_until(
        lambda: sample(scrape(p.metrics_url), "optimist_upstream_up") == 0,
        5,
        what="optimist_upstream_up 0",
    )
    # back
    server.start()
    wait_until(lambda: up.ready() == 200, 10, what="/readyz to report 200 again")
    with connect(p.dsn) as c:
        assert c.execute("select 'back'").fetchone() == ("back",)
    assert sample(scrape(p.metrics_url), "optimist_upstream_up") == 1
    wait_until(
        lambda: sample(scrape(p.metrics_url), "optimist_client_connections") == 0,
        5,
        what="the client connections gauge back to 0",
    )
    assert p.alive


def test_backend_vanishing_gives_08006(pg_factory, proxy_factory):
    """A backend killed outright (its connection drops without a word): the proxy tells its
    client 08006, once; the other sessions get PostgreSQL's own crash warning, then 08006;
    after the crash recovery new sessions work."""
    up = Upstream(pg_factory, proxy_factory)
    p, server = up.proxy, up.server
    victim = open_raw_session(p, "fault-victim")
    other = open_raw_session(p, "fault-other")
    pid = backend_pids(server.dsn, application_name="fault-victim")[0]
    os.kill(pid, signal.SIGKILL)
    data, closed = victim.read_until_close(10)
    victim.close()
    assert closed in ("eof", "reset")
    assert [(s, c) for s, c, _ in errors_in(data)] == [("FATAL", "08006")], errors_in(data)
    assert "connection to the PostgreSQL server was lost" in errors_in(data)[0][2]
    data, closed = other.read_until_close(10)
    other.close()
    errs = errors_in(data)
    assert closed in ("eof", "reset")
    # PostgreSQL warns (NoticeResponse 57P02 "terminating connection because of crash of
    # another server process", WARNING_CLIENT_ONLY) and drops the connection: one FATAL
    assert b"C57P02\0" in data
    assert [(s, c) for s, c, _ in errs] == [("FATAL", "08006")], errs

    def works():
        try:
            with connect(p.dsn) as c:
                return c.execute("select 'recovered'").fetchone() == ("recovered",)
        except psycopg.OperationalError:
            return False

    wait_until(works, 30, interval=0.3, what="new sessions after crash recovery")
    assert p.alive


def test_upstream_restart_with_rules_sessions_recover(pg_factory, proxy_factory, tmp_path):
    """After a restart, new sessions of a rules proxy learn the catalog again and check writes."""
    server = pg_factory()
    db = make_database(server.dsn)
    p = proxy_factory(
        rules=write_rules(tmp_path, VERSION_RULES),
        metrics=True,
        upstream=(server.host, server.port),
    )
    dsn = p.dsn_for(db)
    with connect(dsn) as a:
        a.execute("select * from accounts where id = 1").fetchall()
        a.execute("update accounts set balance = 1 where id = 1")
        server.restart()
        with pytest.raises(psycopg.OperationalError) as err:
            a.execute("select 1")
        assert "administrator command" in str(err.value) or err.value.sqlstate in ("57P01", None)
    with connect(dsn) as a, connect(dsn) as b:
        a.execute("select * from accounts where id = 1").fetchall()
        b.execute("select * from accounts where id = 1").fetchall()
        a.execute("update accounts set balance = 2 where id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("update accounts set balance = 3 where id = 1")
    assert query_direct(
        server.dsn.rsplit("/", 1)[0] + "/" + db,
        "select balance, version from accounts where id = 1",
    ) == [(2, 3)]


def test_connections_during_restart_get_clear_errors(pg_factory, proxy_factory):
    """Clients connecting in a loop across a restart: each attempt either works or gets one
    clear FATAL (08006, 57P01 or PostgreSQL's own 57P03 "the database system is starting/
    shutting down"); never a hang, never garbage."""
    up = Upstream(pg_factory, proxy_factory)
    p, server = up.proxy, up.server
    outcomes: list[str] = []
    stop = threading.Event()

    def hammer():
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            with RawClient(p.host, p.port, timeout=10) as raw:
                raw.send(startup_packet())
                try:
                    msgs = raw.read_until((b"Z", b"E"))
                except (EOFError, ConnectionResetError) as exc:
                    outcomes.append(f"closed without a word: {exc}")
                    continue
                except TimeoutError:
                    outcomes.append("hang")
                    continue
                last = msgs[-1]
                outcomes.append("ok" if last.kind == b"Z" else last.fields.get("C", "?"))
            time.sleep(0.02)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        time.sleep(0.5)
        server.restart()
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(40)
    assert outcomes and outcomes[-1] == "ok", outcomes[-20:]
    bad = [o for o in outcomes if o not in ("ok", "08006", "57P01", "57P03")]
    assert not bad, bad
    assert p.alive


# --------------------------------------------------------------------------- clients that vanish


@pytest.fixture
def locking_proxy(pg, proxy_factory, tmp_path):
    db = make_database(pg.dsn)
    p = proxy_factory(rules=write_rules(tmp_path, VERSION_RULES))
    return p, db, pg.dsn.rsplit("/", 1)[0] + "/" + db


def _bind(statement: bytes, params: list[bytes]) -> bytes:
    body = b"\0" + statement + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for v in params:
        body += struct.pack("!i", len(v)) + v
    return message(b"B", body + struct.pack("!h", 0))


@pytest.mark.parametrize("close", ["fin", "rst"])
@pytest.mark.parametrize("protocol", ["simple", "extended-no-sync"])
def test_client_vanishes_mid_transaction_releases_row_lock(
    locking_proxy, upstream_dsn, close, protocol
):
    p, db, direct = locking_proxy
    app = f"vanish-{protocol}-{close}"
    raw = RawClient(p.host, p.port)
    raw.startup(database=db, application_name=app)
    assert rows(raw.simple_query("select id, version from accounts where id = 1")) == [["1", "1"]]
    if protocol == "simple":
        for sql in ("begin", "update accounts set balance = 5 where id = 1"):
            msgs = raw.simple_query(sql)
            assert not [m for m in msgs if m.kind == b"E"], msgs
    else:
        # a checked write in an implicit transaction that is never synced: the server holds
        # the row lock until the connection goes
        raw.send(
            message(b"P", b"\0update accounts set balance = $1 where id = $2\0\0\0")
            + _bind(b"", [b"5", b"1"])
            + message(b"E", b"\0\0\0\0\0")
            + message(b"H")
        )
        got = raw.read_until(b"C")
        assert not [m for m in got if m.kind == b"E"], got
    pid = wait_until(
        lambda: backend_pids(upstream_dsn, application_name=app), 5, what="the session's backend"
    )[0]
    assert (
        query_direct(upstream_dsn, "select state from pg_stat_activity where pid = %s", [pid])[0][
            0
        ].startswith("idle in transaction")
        or protocol != "simple"
    )
    raw.close(reset=(close == "rst"))
    wait_until(
        lambda: backend_gone(upstream_dsn, pid), 5, what="the vanished client's backend to go away"
    )
    assert not query_direct(
        upstream_dsn,
        "select pid from pg_stat_activity where state like "
        "'idle in transaction%%' and application_name = %s",
        [app],
    )
    with connect(direct) as c:
        c.execute("set lock_timeout = '3s'")
        c.execute("update accounts set balance = 9 where id = 1")
        # the vanished client's write was rolled back: no version bump
        assert c.execute("select balance, version from accounts where id = 1").fetchone() == (9, 1)


# --------------------------------------------------------------------------- a client that stops reading


def proxy_rss(p) -> int:
    return psutil.Process(p.proc.pid).memory_info().rss


@pytest.mark.parametrize("with_rules", [False, True], ids=["relay", "rules"])
def test_slow_reader_does_not_stall_others_or_grow_memory(
    pg, proxy_factory, tmp_path, upstream_dsn, with_rules
):
    kwargs = {"rules": write_rules(tmp_path, VERSION_RULES)} if with_rules else {}
    p = proxy_factory(**kwargs)
    with connect(p.dsn) as warm:  # let the proxy reach its steady size first
        for _ in range(50):
            warm.execute("select repeat('x', 1000) from generate_series(1, 100)").fetchall()
    baseline = proxy_rss(p)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((p.host, p.port))
    slow = RawClient.__new__(RawClient)
    slow.host, slow.port, slow.timeout, slow.sock, slow._buf = p.host, p.port, 10, sock, b""
    slow.startup(application_name="slow-reader")
    # ~200 MB of result that nobody reads
    slow.send(query("select repeat('x', 1000) from generate_series(1, 200000)"))
    peak, worst = baseline, 0.0
    with connect(p.dsn) as other:
        deadline = time.monotonic() + 6
        n = 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            assert other.execute("select %s::int", [n]).fetchone() == (n,)
            worst = max(worst, time.monotonic() - t0)
            peak = max(peak, proxy_rss(p))
            n += 1
            time.sleep(0.05)
        with connect(p.dsn) as fresh:
            assert fresh.execute("select 'new session ok'").fetchone() == ("new session ok",)
    grown = (peak - baseline) / 1e6
    print(
        f"\nslow reader: {n} queries by another session, slowest {worst * 1000:.0f} ms; "
        f"proxy RSS {baseline / 1e6:.0f} MB -> peak {peak / 1e6:.0f} MB"
    )
    assert worst < 1.0, f"a simple query took {worst:.2f}s while another client was not reading"
    assert grown < 100, f"proxy RSS grew by {grown:.0f} MB for one client that does not read"
    pids = backend_pids(upstream_dsn, application_name="slow-reader")
    slow.close(reset=True)
    for pid in pids:
        wait_until(
            lambda pid=pid: backend_gone(upstream_dsn, pid),
            10,
            what="the slow reader's backend to go away",
        )
    assert p.alive


# --------------------------------------------------------------------------- rules reload under load


RULES_B = (
    VERSION_RULES
    + """
  - table: customers
    strategy: columns
    check: changed
"""
)


def test_rules_reload_under_load_loses_no_statement(pg, proxy_factory, tmp_path):
    db = make_database(pg.dsn)
    direct = pg.dsn.rsplit("/", 1)[0] + "/" + db
    rules = write_rules(tmp_path, VERSION_RULES)
    p = proxy_factory(rules=rules, metrics=True)
    dsn = p.dsn_for(db)
    hot = [1, 2, 3, 4]
    clients, duration = 8, 10.0

    async def client(i, stop, stats):
        rnd = random.Random(i)
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            while not stop.is_set():
                k = rnd.choice(hot)
                row = await conn.fetchrow("SELECT id, n, version FROM counters WHERE id = $1", k)
                stats["statements"] += 1
                try:
                    if rnd.random() < 0.5:
                        tag = await conn.execute(
                            "UPDATE counters SET n = $1 WHERE id = $2", row["n"] + 1, k
                        )
                    else:  # simple protocol
                        tag = await conn.execute(
                            f"UPDATE counters SET n = {row['n'] + 1} WHERE id = {k}"
                        )
                except asyncpg.PostgresError as exc:
                    stats["errors"].setdefault(exc.sqlstate, 0)
                    stats["errors"][exc.sqlstate] += 1
                else:
                    assert tag == "UPDATE 1", tag
                    stats["acked"][k] += 1
                stats["statements"] += 1
        finally:
            await conn.close()

    async def scenario():
        stop = asyncio.Event()
        stats = {"statements": 0, "errors": {}, "acked": {k: 0 for k in hot}}
        tasks = [asyncio.create_task(client(i, stop, stats)) for i in range(clients)]
        reloads = 0
        url = p.metrics_url
        t_end = time.monotonic() + duration
        contents = [RULES_B, VERSION_RULES]
        i = 0
        while time.monotonic() < t_end and i < 8:
            before = sample(
                await asyncio.to_thread(scrape, url),
                "optimist_rule_reloads_total",
                result="success",
            )
            text = contents[i % 2]
            if i % 2:
                # in place, as an editor without atomic saves does, then SIGHUP
                rules.write_text(text)
                p.proc.send_signal(signal.SIGHUP)
            else:
                tmp = rules.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, rules)
            deadline = time.monotonic() + 10
            while (
                sample(
                    await asyncio.to_thread(scrape, url),
                    "optimist_rule_reloads_total",
                    result="success",
                )
                <= before
            ):
                assert time.monotonic() < deadline, "a reload was not picked up"
                await asyncio.sleep(0.1)
            reloads += 1
            i += 1
            await asyncio.sleep(0.5)
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return stats, reloads

    stats, reloads = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert reloads >= 4
    text = scrape(p.metrics_url)
    errors = stats["errors"]
    assert set(errors) <= {"40001"}, (
        f"statements failed with something else than a conflict: {errors}"
    )
    final = dict(query_direct(direct, "SELECT id, n FROM counters ORDER BY id"))
    versions = dict(query_direct(direct, "SELECT id, version FROM counters ORDER BY id"))
    for k in hot:
        assert final[k] == stats["acked"][k], (k, final[k], stats["acked"][k], stats)
        assert versions[k] == final[k] + 1
    seen = errors.get("40001", 0)
    counted = sum(
        sample(text, "optimist_conflicts_total", table="public.counters", kind=kind)
        for kind in ("modified", "deleted")
    )
    assert counted == seen, (counted, seen)
    assert seen > 0, "no conflicts: the hot set is not hot"
    assert total(text, "optimist_unverified_writes_total", table="public.counters") == 0
    assert (
        total(text, "optimist_checked_writes_total", table="public.counters")
        == sum(stats["acked"].values()) + seen
    )
    print(
        f"\nreload under load: {clients} clients, {stats['statements']} statements, "
        f"{sum(stats['acked'].values())} acknowledged writes, {seen} conflicts, {reloads} reloads"
    )
