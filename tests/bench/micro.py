"""The proxy's hot path alone: no sockets, no server, no event loop.

    python -m tests.bench.micro [--quick] [--json PATH]

Times each operation with time.perf_counter_ns over many calls (batches of calls, so the
clock's own cost vanishes; median and mean of the per-call time over the batches) and measures
the memory of idle sessions with tracemalloc. The objects are the proxy's own: a `Session`
fed the bytes PostgreSQL would send, an `LockingService` built from a rule file and a `SessionLocking`
that learned the catalog through its own injected setup query, answered with DataRows shaped
like `proxy.catalog.catalog_query`'s result. Metrics are on (a private Prometheus registry), as
in `optimist serve`.

Targets (from the issue): cached rewrite < 20 us, recognising a statement that needs no rewrite
< 2 us, idle session < 64 KiB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.catalog import CATALOG_COLUMNS
from proxy.config import Settings
from proxy.locking import LockingService as Enforcement
from proxy.locking.settings import INITIAL_SQL
from proxy.metrics import Metrics
from proxy.rewrite import lexer
from proxy.rewrite.planner import plan_write
from proxy.rules.loader import load_rules
from proxy.session import Session
from proxy.wire import messages as m
from proxy.wire.framing import frame
from proxy.wire.startup import parse_startup

DATABASE = "bench"

RULES = """\
version: 1
tables:
  - table: pgbench_accounts
    strategy: version
    version_column: version
  - table: pgbench_tellers
    strategy: columns
    check: changed
"""

# --------------------------------------------------------------------------- the catalog

ACCOUNTS_OID = 16400
TELLERS_OID = 16410
HISTORY_OID = 16420
WIDE_OID = 16430

INT4, TEXT, BPCHAR, TIMESTAMP = 23, 25, 1042, 1114
# (table, oid, [(column, type oid, type name, in pk)])
TABLES = [
    (
        "pgbench_accounts",
        ACCOUNTS_OID,
        [
            ("aid", INT4, "integer", True),
            ("bid", INT4, "integer", False),
            ("abalance", INT4, "integer", False),
            ("filler", BPCHAR, "character(84)", False),
            ("version", INT4, "integer", False),
        ],
    ),
    (
        "pgbench_tellers",
        TELLERS_OID,
        [
            ("tid", INT4, "integer", True),
            ("bid", INT4, "integer", False),
            ("tbalance", INT4, "integer", False),
            ("filler", BPCHAR, "character(84)", False),
            ("version", INT4, "integer", False),
        ],
    ),
]


def catalog_rows() -> list[list[bytes]]:
    """Rows as the server sends catalog_query()'s result: 11 text columns."""
    rows = []
    for table, oid, cols in TABLES:
        for attnum, (name, type_oid, type_name, in_pk) in enumerate(cols, 1):
            rows.append(
                [
                    b"public",
                    table.encode(),
                    str(oid).encode(),
                    str(attnum).encode(),
                    name.encode(),
                    str(type_oid).encode(),
                    type_name.encode(),
                    b"t" if in_pk else b"f",
                    b"t",
                    b"t",
                    str(type_oid).encode(),
                ]
            )
    return rows


# --------------------------------------------------------------------------- wire helpers


def startup_packet(user: str = "bench", database: str = DATABASE):
    body = (
        struct.pack("!I", 196608)
        + b"user\x00"
        + user.encode()
        + b"\x00database\x00"
        + database.encode()
        + b"\x00\x00"
    )
    return parse_startup(struct.pack("!I", len(body) + 4) + body)


AUTH_OK = (
    frame(b"R", struct.pack("!i", 0))
    + frame(b"S", b"client_encoding\x00UTF8\x00")
    + frame(b"S", b"standard_conforming_strings\x00on\x00")
    + frame(b"S", b"server_version\x0018.0\x00")
    + frame(b"K", struct.pack("!i", 4242) + b"secr")
    + frame(b"Z", b"I")
)


def row_description(fields) -> bytes:
    """fields: (name, table oid, attnum, type oid)."""
    return m.encode_row_description(
        [m.Field(n.encode(), t, a, ty, -1, -1, 0) for n, t, a, ty in fields]
    )


def command_complete(tag: bytes) -> bytes:
    return frame(b"C", tag + b"\x00")


READY = frame(b"Z", b"I")


def _in_flight(session: Session):
    """The queue itself: benchmarks send one request many times without its answer and must
    empty it between batches (nothing else may reach into the Session)."""
    return session._inflight


def setup_answer(session: Session) -> bytes:
    """The server's answer to whatever the locking logic ran after authentication: the catalog
    query (if the generation does not know the database yet) and the guard functions."""
    head = session.in_flight[0]
    assert head.hidden, "expected the locking logic's setup query"
    out = b""
    if session.locking.bootstrap.generation is None:
        fields = [(name, 0, 0, TEXT) for name in CATALOG_COLUMNS]
        out += row_description(fields)
        rows = catalog_rows()
        out += b"".join(m.encode_data_row(r) for r in rows)
        out += command_complete(b"SELECT %d" % len(rows))
    out += command_complete(b"CREATE FUNCTION") * 3
    return out + READY


METRICS = Metrics(registry=CollectorRegistry())


def new_session(enforcement: Enforcement | None) -> Session:
    """A session after authentication (and, with rules, after its setup query), wired
    as `optimist serve` wires it (statements counted by type)."""
    startup = startup_packet()
    session = Session(
        startup,
        locking_for=enforcement.locking_for if enforcement else None,
        count_statement=(enforcement.metrics if enforcement else METRICS).statement,
    )
    session.server_data(AUTH_OK)
    locking = session.locking
    for _ in range(8):  # the locking logic's own queries, answered as PostgreSQL would
        to_server, _ = session.take_output()
        if locking is None or not (session.in_flight and session.in_flight[0].hidden):
            break
        sql = b"".join(to_server)
        if INITIAL_SQL.encode() in sql:  # the printing settings PostgreSQL does not report
            session.server_data(
                row_description([("current_setting", 0, 0, TEXT)] * 3)
                + m.encode_data_row([b"1", b"hex", b"C"])
                + command_complete(b"SELECT 1")
                + READY
            )
        elif b"CREATE" in sql or locking.bootstrap.generation is None:
            session.server_data(setup_answer(session))
        else:  # after a new catalog: the simple views over the protected tables (none here)
            session.server_data(row_description([]) + command_complete(b"SELECT 0") + READY)
    if locking is not None:
        assert locking.tables is not None and locking.bootstrap.guards and not session.busy
    session.take_output()
    return session


def make_enforcement(tmp: Path) -> Enforcement:
    path = tmp / "rules.yaml"
    path.write_text(RULES)
    settings = Settings(rules=[str(path)])
    metrics = Metrics(registry=CollectorRegistry())
    return Enforcement(settings, load_rules(settings.rules), metrics)


def query_bytes(sql: str) -> bytes:
    return m.encode_query(sql.encode())


def result_bytes(fields, rows, tag: bytes) -> bytes:
    return (
        row_description(fields)
        + b"".join(m.encode_data_row(r) for r in rows)
        + command_complete(tag)
        + READY
    )


# --------------------------------------------------------------------------- timing


class Timing:
    def __init__(
        self,
        name: str,
        samples_ns: list[float],
        calls: int,
        note: str = "",
        per: int = 1,
        target_ns: float | None = None,
    ) -> None:
        self.name = name
        self.median_ns = statistics.median(samples_ns)
        self.mean_ns = statistics.fmean(samples_ns)
        self.min_ns = min(samples_ns)
        self.calls = calls
        self.note = note
        self.per = per  # e.g. 1000 rows per call: also report per-row cost
        self.target_ns = target_ns

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "median_ns": self.median_ns,
            "mean_ns": self.mean_ns,
            "min_ns": self.min_ns,
            "calls": self.calls,
            "note": self.note,
            "per": self.per,
            "median_ns_per_unit": self.median_ns / self.per,
            "target_ns": self.target_ns,
            "meets_target": None if self.target_ns is None else self.median_ns <= self.target_ns,
        }


def measure(
    fn, *, seconds: float, after_batch=None, min_batch_ns: float = 2e5
) -> tuple[list[float], int]:
    """Per-call ns of fn() over batches of calls: (samples, total calls)."""
    fn()  # warm: caches, first-call paths
    if after_batch:
        after_batch()
    n = 1
    clock = time.perf_counter_ns
    while True:  # calibrate: a batch of at least min_batch_ns
        t0 = clock()
        for _ in range(n):
            fn()
        dt = clock() - t0
        if after_batch:
            after_batch()
        if dt >= min_batch_ns or n >= 1 << 20:
            break
        n *= 2
    samples: list[float] = []
    total = 0
    deadline = time.perf_counter() + seconds
    while (time.perf_counter() < deadline or len(samples) < 15) and len(samples) < 100000:
        t0 = clock()
        for _ in range(n):
            fn()
        dt = clock() - t0
        if after_batch:
            after_batch()
        samples.append(dt / n)
        total += n
    return samples, total


# --------------------------------------------------------------------------- the benchmarks


def bench_relay(results: list[Timing], seconds: float, enforcement: Enforcement) -> None:
    """(a) a DataRow-heavy result relayed through Session.server_data."""
    nrows, ncols = 1000, 10
    fields = [(f"c{i}", WIDE_OID, i + 1, INT4 if i % 2 == 0 else TEXT) for i in range(ncols)]
    rows = [
        [(b"%d" % (r * 10 + c)) if c % 2 == 0 else b"value-%06d" % r for c in range(ncols)]
        for r in range(nrows)
    ]
    reply = result_bytes(fields, rows, b"SELECT %d" % nrows)
    query = query_bytes("SELECT * FROM wide")
    chunk = 65536
    chunks = [reply[i : i + chunk] for i in range(0, len(reply), chunk)]

    def relay(session, pieces):
        def run():
            session.client_data(query)
            for piece in pieces:
                session.server_data(piece)
            session.take_output()

        return run

    plain = new_session(None)
    s, n = measure(relay(plain, [reply]), seconds=seconds)
    results.append(
        Timing(
            "relay 1000x10 result, no rules, one read",
            s,
            n,
            f"{len(reply)} bytes; per row below",
            per=nrows,
        )
    )
    s, n = measure(relay(plain, chunks), seconds=seconds)
    results.append(
        Timing(
            "relay 1000x10 result, no rules, 64 KiB reads",
            s,
            n,
            f"{len(chunks)} server_data calls",
            per=nrows,
        )
    )
    ruled = new_session(enforcement)
    s, n = measure(relay(ruled, chunks), seconds=seconds)
    results.append(
        Timing(
            "relay 1000x10 result, rules, unprotected table",
            s,
            n,
            "rules on; RowDescription seen, capture plan cached (none)",
            per=nrows,
        )
    )
    # a result of a protected table: every row's key and version remembered
    acc_fields = [
        ("aid", ACCOUNTS_OID, 1, INT4),
        ("bid", ACCOUNTS_OID, 2, INT4),
        ("abalance", ACCOUNTS_OID, 3, INT4),
        ("filler", ACCOUNTS_OID, 4, BPCHAR),
        ("version", ACCOUNTS_OID, 5, INT4),
    ]
    acc_rows = [[b"%d" % (r + 1), b"1", b"0", b" " * 84, b"1"] for r in range(nrows)]
    acc_reply = result_bytes(acc_fields, acc_rows, b"SELECT %d" % nrows)
    acc_query = query_bytes("SELECT * FROM pgbench_accounts WHERE aid <= 1000")

    def captured():
        ruled.client_data(acc_query)
        ruled.server_data(acc_reply)
        ruled.take_output()

    s, n = measure(captured, seconds=seconds)
    results.append(
        Timing(
            "relay 1000x5 pgbench_accounts result, captured",
            s,
            n,
            "every row's key + version remembered (1000 rows already known)",
            per=nrows,
        )
    )


def bench_recognise(results: list[Timing], seconds: float, enforcement: Enforcement) -> None:
    """(b) statements that need no rewrite."""
    select = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"
    update_other = "UPDATE pgbench_history SET delta = 5 WHERE tid = 3"
    for name, sql in (
        ("write_target(SELECT)", select),
        ("write_target(UPDATE unprotected table)", update_other),
    ):
        s, n = measure(lambda sql=sql: lexer.write_target(sql), seconds=seconds)
        results.append(Timing(name, s, n, "lexer only", target_ns=2000))
    session = new_session(enforcement)
    locking = session.locking
    boot = locking.bootstrap
    s, n = measure(
        lambda: locking.writes.target(boot.generation, boot.tables, update_other), seconds=seconds
    )
    results.append(
        Timing(
            "WriteChecker.target(UPDATE unprotected table)",
            s,
            n,
            "write_target + rules lookup",
            target_ns=2000,
        )
    )
    q = query_bytes(select)
    pending = _in_flight(session)

    s, n = measure(lambda: locking.query(select, q), seconds=seconds, after_batch=pending.clear)
    results.append(
        Timing(
            "SessionLocking.query(SELECT), rules",
            s,
            n,
            "split, WriteChecker.simple -> None, entry",
            target_ns=2000,
        )
    )

    def through_session():
        session.client_data(q)
        session.take_output()

    s, n = measure(through_session, seconds=seconds, after_batch=pending.clear)
    results.append(
        Timing("Session.client_data(Query SELECT), rules", s, n, "framing + locking + output")
    )
    plain = new_session(None)

    def plain_session():
        plain.client_data(q)
        plain.take_output()

    s, n = measure(plain_session, seconds=seconds, after_batch=_in_flight(plain).clear)
    results.append(
        Timing("Session.client_data(Query SELECT), no rules", s, n, "framing + entry + output")
    )


def read_row(session: Session, aid: int, version: int = 7) -> None:
    """The session reads one pgbench_accounts row (aid, abalance, version) through the proxy."""
    session.client_data(
        query_bytes(f"SELECT aid, abalance, version FROM pgbench_accounts WHERE aid = {aid}")
    )
    session.server_data(
        result_bytes(
            [
                ("aid", ACCOUNTS_OID, 1, INT4),
                ("abalance", ACCOUNTS_OID, 3, INT4),
                ("version", ACCOUNTS_OID, 5, INT4),
            ],
            [[b"%d" % aid, b"0", b"%d" % version]],
            b"SELECT 1",
        )
    )
    session.take_output()
    assert not session.busy


def bench_cached(results: list[Timing], seconds: float, enforcement: Enforcement) -> None:
    """(c) a cached rewrite of an UPDATE of a row the session has read."""
    session = new_session(enforcement)
    locking = session.locking
    boot = locking.bootstrap
    read_row(session, 48213)
    stmt = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 48213"
    table = locking.writes.target(boot.generation, boot.tables, stmt)
    assert table is not None

    def plan_simple():
        return locking.writes.simple(boot.generation, boot.tables, boot.guards, stmt)

    work = plan_simple()
    assert work is not None and "optimist_present" in work.sql, "the write is not checked"
    template, literals = lexer.normalize(stmt)
    cache = enforcement.cache
    # the locking logic's own key for this template
    key = next(
        k
        for k in list(cache._entries)
        if isinstance(k, tuple) and k[-1] == template and hasattr(cache.peek(k), "render_simple")
    )
    plan = cache.peek(key)
    texts = [{"version": "7"}]

    s, n = measure(lambda: lexer.normalize(stmt), seconds=seconds)
    results.append(Timing("lexer.normalize(UPDATE)", s, n, "literals out, template"))
    s, n = measure(lambda: lexer.classify(stmt), seconds=seconds)
    results.append(Timing("lexer.classify(UPDATE)", s, n, "called again by WriteChecker.plan"))
    s, n = measure(lambda: cache.get(key, None), seconds=seconds)
    results.append(Timing("RewriteCache.get (hit)", s, n))
    s, n = measure(lambda: plan.render_simple(literals, texts, True), seconds=seconds)
    results.append(Timing("WritePlan.render_simple", s, n, "literals + read values inlined"))

    def norm_hit_render():
        t, lits = lexer.normalize(stmt)
        p = cache.get(key[:-1] + (t,), None)
        return p.render_simple(lits, texts, True)

    s, n = measure(norm_hit_render, seconds=seconds)
    results.append(Timing("normalize + cache hit + render_simple", s, n, "", target_ns=20000))
    s, n = measure(plan_simple, seconds=seconds)
    results.append(
        Timing(
            "WriteChecker.simple(UPDATE), cached, checked",
            s,
            n,
            "target + plan + key + snapshot + render + metric",
            target_ns=20000,
        )
    )
    metrics = enforcement.metrics
    s, n = measure(lambda: metrics.checked("public.pgbench_accounts"), seconds=seconds)
    results.append(Timing("  of which Metrics.checked (prometheus labels().inc())", s, n))
    raw = query_bytes(stmt)
    s, n = measure(
        lambda: locking.query(stmt, raw), seconds=seconds, after_batch=_in_flight(session).clear
    )
    results.append(
        Timing(
            "SessionLocking.query(UPDATE), cached, checked", s, n, "WriteChecker.simple + encode"
        )
    )
    # the answer: UPDATE 1 with the learned RETURNING row stripped, new version remembered
    upd = query_bytes(stmt)
    answer = (
        row_description([("aid", ACCOUNTS_OID, 1, INT4), ("version", ACCOUNTS_OID, 5, INT4)])
        + m.encode_data_row([b"48213", b"8"])
        + command_complete(b"UPDATE 1")
        + READY
    )

    def round_trip():
        session.client_data(upd)
        session.server_data(answer)
        session.take_output()

    s, n = measure(round_trip, seconds=seconds)
    results.append(
        Timing(
            "checked UPDATE round trip through Session",
            s,
            n,
            "client_data + server_data (RETURNING learned, stripped)",
        )
    )


def bench_uncached(results: list[Timing], seconds: float, enforcement: Enforcement) -> None:
    """(d) planning a write the cache has not seen."""
    session = new_session(enforcement)
    gen, tables = session.locking.bootstrap.generation, session.locking.tables
    accounts = gen.table_for(tables, None, "pgbench_accounts")
    tellers = gen.table_for(tables, None, "pgbench_tellers")
    for name, table, stmt in (
        (
            "plan_write(UPDATE), version strategy",
            accounts,
            "UPDATE pgbench_accounts SET abalance = abalance + $90001 WHERE aid = $90002",
        ),
        (
            "plan_write(UPDATE), columns strategy",
            tellers,
            "UPDATE pgbench_tellers SET tbalance = tbalance + $90001 WHERE tid = $90002",
        ),
        (
            "plan_write(DELETE), version strategy",
            accounts,
            "DELETE FROM pgbench_accounts WHERE aid = $90001",
        ),
    ):
        s, n = measure(
            lambda table=table, stmt=stmt: plan_write(stmt, table, 0),
            seconds=seconds,
            min_batch_ns=2e6,
        )
        results.append(Timing(name, s, n, "sqlglot parse + guard build, nothing cached"))


def bench_metrics(results: list[Timing], seconds: float, enforcement: Enforcement) -> None:
    """(e) what counting costs on the hot path: the Prometheus primitives, and what the proxy's
    own Metrics methods do per call at this commit."""
    metrics = enforcement.metrics
    counter = metrics.bytes_total
    s, n = measure(lambda: counter.labels("client_to_server").inc(120), seconds=seconds)
    results.append(
        Timing(
            "prometheus labels(x).inc(n)", s, n, "label validation, dict lookup and lock per call"
        )
    )
    child = counter.labels("client_to_server")
    s, n = measure(lambda: child.inc(120), seconds=seconds)
    results.append(Timing("prometheus bound child .inc(n)", s, n, "labels() looked up once"))
    counts = {"client_to_server": 0}

    def plain():
        counts["client_to_server"] += 120

    s, n = measure(plain, seconds=seconds)
    results.append(Timing("plain dict += n", s, n, "a tally published at scrape time"))
    if hasattr(metrics, "bytes"):
        s, n = measure(lambda: metrics.bytes("client_to_server", 120), seconds=seconds)
        results.append(Timing("Metrics.bytes", s, n, "per flush and direction"))
    if hasattr(metrics, "statement"):
        s, n = measure(lambda: metrics.statement("select"), seconds=seconds)
        results.append(Timing("Metrics.statement", s, n, "per Query / Execute"))
    s, n = measure(lambda: metrics.query_duration.observe(0.0004), seconds=seconds)
    results.append(Timing("Histogram.observe (query duration)", s, n, "per request"))
    session = new_session(enforcement)
    info = session.info
    s, n = measure(lambda: info.encoding, seconds=seconds)
    results.append(Timing("SessionInfo.encoding", s, n, "at every decode of client text"))


# --------------------------------------------------------------------------- memory


def bench_memory(count: int, enforcement: Enforcement) -> list[dict]:
    out = []
    new_session(enforcement)  # the generation learns the catalog once, outside the measure
    for label, enf in (("no rules", None), ("rules (locking attached, catalog seen)", enforcement)):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        sessions = [new_session(enf) for _ in range(count)]
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        per = (after - before) / count
        out.append(
            {
                "name": f"idle session, {label}",
                "bytes_per_session": per,
                "sessions": count,
                "target_bytes": 65536,
            }
        )
        del sessions
    # a session that remembers rows: bytes per remembered row
    session = new_session(enforcement)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rows = 1000
    fields = [
        ("aid", ACCOUNTS_OID, 1, INT4),
        ("abalance", ACCOUNTS_OID, 3, INT4),
        ("version", ACCOUNTS_OID, 5, INT4),
    ]
    session.client_data(query_bytes("SELECT aid, abalance, version FROM pgbench_accounts"))
    session.server_data(
        result_bytes(
            fields, [[b"%d" % (i + 1), b"0", b"1"] for i in range(rows)], b"SELECT %d" % rows
        )
    )
    session.take_output()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(session.locking.knowledge.store) == rows
    out.append(
        {
            "name": "remembered row (version strategy: key + version)",
            "bytes_per_row": (after - before) / rows,
            "rows": rows,
        }
    )
    return out


# --------------------------------------------------------------------------- main


def _fmt_ns(ns: float) -> str:
    return f"{ns:,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.micro", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--seconds", type=float, default=0.5, help="time per operation (default 0.5)")
    p.add_argument("--quick", action="store_true", help="0.1 s per operation, 200 sessions")
    p.add_argument("--sessions", type=int, default=1000, help="sessions for the memory measure")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    seconds = 0.1 if args.quick else args.seconds
    count = 200 if args.quick else args.sessions
    results: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="optimist-micro-") as tmp:
        enforcement = make_enforcement(Path(tmp))
        bench_relay(results, seconds, enforcement)
        bench_recognise(results, seconds, enforcement)
        bench_cached(results, seconds, enforcement)
        bench_uncached(results, seconds, enforcement)
        bench_metrics(results, seconds, enforcement)
        memory = bench_memory(count, enforcement)
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "no uvloop"
    print(
        f"optimist micro-benchmark: {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {loop}; "
        f"{seconds:g}s per operation"
    )
    print()
    rows = [("operation", "median ns", "mean ns", "min ns", "per row ns", "target", "")]
    for t in results:
        per_row = _fmt_ns(t.median_ns / t.per) if t.per > 1 else ""
        target = "" if t.target_ns is None else f"< {t.target_ns / 1000:g} us"
        verdict = "" if t.target_ns is None else ("ok" if t.median_ns <= t.target_ns else "MISSED")
        rows.append(
            (
                t.name,
                _fmt_ns(t.median_ns),
                _fmt_ns(t.mean_ns),
                _fmt_ns(t.min_ns),
                per_row,
                target,
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print(
            "| "
            + " | ".join(
                c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)
            )
            + " |"
        )
        if i == 0:
            print(
                "|"
                + "|".join(
                    "-" * (w + 2) if j == 0 else "-" * (w + 1) + ":" for j, w in enumerate(widths)
                )
                + "|"
            )
    print()
    for entry in memory:
        if "bytes_per_session" in entry:
            ok = "ok" if entry["bytes_per_session"] < entry["target_bytes"] else "MISSED"
            print(
                f"{entry['name']}: {entry['bytes_per_session'] / 1024:.1f} KiB per session "
                f"({entry['sessions']} sessions, tracemalloc; target < 64 KiB: {ok})"
            )
        else:
            print(
                f"{entry['name']}: {entry['bytes_per_row']:.0f} bytes per row "
                f"({entry['rows']} rows, tracemalloc)"
            )
    print("\nwhat each operation covers:")
    for t in results:
        if t.note:
            print(f"  {t.name.strip()}: {t.note}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "seconds": seconds,
                    "timings": [t.to_json() for t in results],
                    "memory": memory,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
