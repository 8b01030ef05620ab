"""Soak: concurrent asyncpg clients doing checked read-modify-write cycles on a few hot rows
through the proxy, with random client disconnects mid-transaction and one upstream restart;
then an audit of every write.

Each cycle, in one transaction through the proxy::

    SELECT id, n, version FROM counters WHERE id = k      -- captured by the proxy
    UPDATE counters SET n = <n read + 1> WHERE id = k     -- checked (version rule)
    INSERT INTO ledger VALUES (<write id>, k, <client>)
    COMMIT

The client records each write id as *acknowledged* (COMMIT answered), *abandoned* (the client
dropped its connection before COMMIT, or a conflict/fault ended the transaction before it),
*in doubt* (the connection died while COMMIT was in flight) -- and every conflict (40001) it
received.

The audit (direct connection): every acknowledged write is in the ledger; no abandoned write
is; in-doubt writes are reported both ways; each counter equals the number of ledger rows for
it (no lost update: every increment was checked against the version read) and its version
equals n + 1; the proxy's conflict counter equals the conflicts clients saw; no write went
unchecked.

    python -m tests.soak [--clients 16] [--duration 60] [--hot 4] [--disconnect-rate 0.02]

Standalone it starts its own PostgreSQL (the embedded one) and proxy, on loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.support.promtext import sample_sum, scrape

SCHEMA = """
CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL, version int NOT NULL DEFAULT 1);
CREATE TABLE ledger (write_id text PRIMARY KEY, counter_id int NOT NULL, client int NOT NULL);
INSERT INTO counters SELECT g, 0, 1 FROM generate_series(1, {hot}) g;
"""

RULES = """\
version: 1
tables:
  - table: counters
    strategy: version
    version_column: version
"""

CALL_TIMEOUT = 15.0  # no single call may take longer: a hang is a finding


@dataclass
class ClientLog:
    acked: dict[str, int] = field(default_factory=dict)
    abandoned: dict[str, int] = field(default_factory=dict)
    in_doubt: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    statements: int = 0
    disconnects: int = 0  # injected by the client itself
    faults_seen: int = 0  # connections lost to the restart (or anything else)
    connect_failures: int = 0
    hangs: int = 0
    unexpected: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    clients: int
    duration: float
    statements: int = 0
    transactions: int = 0
    conflicts_seen: int = 0
    conflicts_counted: float = 0.0
    faults_injected: int = 0
    restarts: int = 0
    disconnects: int = 0
    faults_seen: int = 0
    acked: int = 0
    abandoned: int = 0
    in_doubt: int = 0
    in_doubt_committed: int = 0
    writes_audited: int = 0
    writes_lost: int = 0
    updates_lost: int = 0
    phantom_writes: int = 0
    counter_mismatches: list = field(default_factory=list)
    unverified_writes: float = 0.0
    hangs: int = 0
    unexpected: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return [
            f"soak: {self.clients} clients for {self.duration:.0f}s",
            f"  statements          {self.statements}",
            f"  transactions        {self.transactions}",
            f"  conflicts           {self.conflicts_seen} seen by clients, "
            f"{self.conflicts_counted:.0f} counted by the proxy",
            f"  faults injected     {self.faults_injected} ({self.restarts} upstream restart(s), "
            f"{self.disconnects} client disconnects mid-transaction); "
            f"{self.faults_seen} connections lost to faults",
            f"  writes audited      {self.writes_audited} ({self.acked} acknowledged, "
            f"{self.abandoned} abandoned, {self.in_doubt} in doubt of which "
            f"{self.in_doubt_committed} committed)",
            f"  writes lost         {self.writes_lost} (acknowledged, not in the database)",
            f"  updates lost        {self.updates_lost} (committed increments overwritten)",
            f"  phantom writes      {self.phantom_writes}",
            f"  unverified writes   {self.unverified_writes:.0f}",
            f"  hangs               {self.hangs}",
            f"  unexpected errors   {self.unexpected or 0}",
            "  result              " + ("OK" if self.ok else "FAILED: " + "; ".join(self.problems)),
        ]


# --------------------------------------------------------------------------- metrics


# --------------------------------------------------------------------------- clients


# when the upstream restart began and ended (monotonic), for telling its fallout apart
RESTART_WINDOW: list[float] = []


def _during_restart(margin: float = 10.0) -> bool:
    now = time.monotonic()
    return bool(RESTART_WINDOW) and RESTART_WINDOW[0] - 1.0 <= now <= RESTART_WINDOW[-1] + margin


def _connection_fault(exc: BaseException) -> bool:
    if (
        isinstance(exc, asyncpg.exceptions.InternalClientError)
        and "another operation" in str(exc)
        and _during_restart()
    ):
        # asyncpg's own race when the server ends a session (FATAL 57P01, then EOF): a call
        # made between the two finds the protocol still consuming the error. Only counted
        # as a fault in the restart window; anywhere else it stays an unexpected error.
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        return state.startswith("08") or state.startswith("57P")
    return isinstance(
        exc,
        (
            asyncpg.InterfaceError,
            ConnectionError,
            OSError,
            asyncio.TimeoutError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
        ),
    )


async def _client(
    i: int,
    dsn: str,
    hot: int,
    deadline: float,
    disconnect_rate: float,
    seed: int,
    log: ClientLog,
    statement_cache: int | None,
) -> None:
    rnd = random.Random(seed * 1000 + i)
    conn: asyncpg.Connection | None = None
    seq = 0
    try:
        while time.monotonic() < deadline:
            if conn is None:
                try:
                    # 0: unnamed statements, as behind pgbouncer in transaction mode
                    cache = rnd.choice([0, 100]) if statement_cache is None else statement_cache
                    conn = await asyncpg.connect(dsn, timeout=5, statement_cache_size=cache)
                except Exception:
                    log.connect_failures += 1
                    await asyncio.sleep(0.1 + rnd.random() * 0.2)
                    continue
            k = rnd.randint(1, hot)
            seq += 1
            wid = f"c{i}-{seq}"
            stage = "begin"
            try:
                await conn.execute("BEGIN", timeout=CALL_TIMEOUT)
                log.statements += 1
                row = await conn.fetchrow(
                    "SELECT id, n, version FROM counters WHERE id = $1", k, timeout=CALL_TIMEOUT
                )
                log.statements += 1
                stage = "write"
                if rnd.random() < 0.5:
                    await conn.execute(
                        "UPDATE counters SET n = $1 WHERE id = $2",
                        row["n"] + 1,
                        k,
                        timeout=CALL_TIMEOUT,
                    )
                else:  # simple protocol
                    await conn.execute(
                        f"UPDATE counters SET n = {row['n'] + 1} WHERE id = {k}",
                        timeout=CALL_TIMEOUT,
                    )
                log.statements += 1
                await conn.execute(
                    "INSERT INTO ledger VALUES ($1, $2, $3)", wid, k, i, timeout=CALL_TIMEOUT
                )
                log.statements += 1
                if rnd.random() < disconnect_rate:
                    # vanish mid-transaction: the write must not survive
                    log.abandoned[wid] = k
                    log.disconnects += 1
                    conn.terminate()
                    conn = None
                    continue
                stage = "commit"
                await conn.execute("COMMIT", timeout=CALL_TIMEOUT)
                log.statements += 1
                log.acked[wid] = k
            except asyncpg.SerializationError:
                log.conflicts += 1
                log.abandoned[wid] = k
                try:
                    await conn.execute("ROLLBACK", timeout=CALL_TIMEOUT)
                    log.statements += 1
                except Exception:
                    conn.terminate()
                    conn = None
                    log.faults_seen += 1
            except Exception as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    log.hangs += 1
                if stage == "commit":
                    log.in_doubt[wid] = k
                else:
                    log.abandoned[wid] = k
                if _connection_fault(exc):
                    log.faults_seen += 1
                else:
                    key = f"{stage}: {type(exc).__name__} {getattr(exc, 'sqlstate', '')}: {exc}"[
                        :160
                    ]
                    log.unexpected[key] = log.unexpected.get(key, 0) + 1
                if conn is not None:
                    conn.terminate()
                conn = None
    finally:
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()


async def _restart_later(server, at: float, report: Report) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    RESTART_WINDOW[:] = [time.monotonic()]
    await asyncio.to_thread(server.restart)
    RESTART_WINDOW.append(time.monotonic())
    report.restarts += 1


async def run(
    server,
    proxy,
    *,
    clients: int = 16,
    duration: float = 60.0,
    hot: int = 4,
    disconnect_rate: float = 0.02,
    restart: bool = True,
    seed: int = 1,
    database: str | None = None,
    statement_cache: int | None = None,
) -> Report:
    """Drive `proxy` (a ProxyProcess with the soak RULES and metrics, in front of `server`, an
    EmbeddedPostgres) and audit. `database` must hold SCHEMA (see prepare()).
    `statement_cache`: asyncpg's statement_cache_size for every client (None: 0 or 100 at
    random per connection)."""
    database = database or prepare(server.dsn, hot)
    report = Report(clients, duration)
    dsn = proxy.dsn_for(database)
    t0 = time.monotonic()
    deadline = t0 + duration
    logs = [ClientLog() for _ in range(clients)]
    tasks = [
        asyncio.create_task(
            _client(i, dsn, hot, deadline, disconnect_rate, seed, logs[i], statement_cache)
        )
        for i in range(clients)
    ]
    restarter = None
    if restart:
        restarter = asyncio.create_task(_restart_later(server, t0 + duration / 2, report))
    await asyncio.wait_for(asyncio.gather(*tasks), duration + 120)
    if restarter is not None:
        await asyncio.wait_for(restarter, 120)
    return await asyncio.to_thread(audit, server, proxy, database, hot, logs, report)


def prepare(admin_dsn: str, hot: int) -> str:
    import psycopg

    name = f"soak_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    with psycopg.connect(admin_dsn, autocommit=True, sslmode="disable") as c:
        c.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(
        admin_dsn.rsplit("/", 1)[0] + "/" + name, autocommit=True, sslmode="disable"
    ) as c:
        c.execute(SCHEMA.format(hot=hot))
    return name


def audit(server, proxy, database: str, hot: int, logs: list[ClientLog], report: Report) -> Report:
    import psycopg

    acked: dict[str, int] = {}
    abandoned: dict[str, int] = {}
    in_doubt: dict[str, int] = {}
    for log in logs:
        acked.update(log.acked)
        abandoned.update(log.abandoned)
        in_doubt.update(log.in_doubt)
        report.statements += log.statements
        report.conflicts_seen += log.conflicts
        report.disconnects += log.disconnects
        report.faults_seen += log.faults_seen
        report.hangs += log.hangs
        for k, v in log.unexpected.items():
            report.unexpected[k] = report.unexpected.get(k, 0) + v
    report.transactions = len(acked) + len(abandoned) + len(in_doubt)
    report.faults_injected = report.restarts + report.disconnects
    report.acked, report.abandoned, report.in_doubt = len(acked), len(abandoned), len(in_doubt)
    direct = server.dsn.rsplit("/", 1)[0] + "/" + database
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(
                direct, autocommit=True, sslmode="disable", connect_timeout=5
            ) as c:
                ledger = dict(c.execute("SELECT write_id, counter_id FROM ledger").fetchall())
                counters = {
                    k: (n, v)
                    for k, n, v in c.execute(
                        "SELECT id, n, version FROM counters ORDER BY id"
                    ).fetchall()
                }
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    report.writes_audited = len(acked) + len(abandoned) + len(in_doubt)
    lost = [w for w in acked if w not in ledger]
    phantom = [w for w in abandoned if w in ledger]
    unknown = [w for w in ledger if w not in acked and w not in in_doubt and w not in abandoned]
    report.writes_lost = len(lost)
    report.phantom_writes = len(phantom)
    report.in_doubt_committed = sum(1 for w in in_doubt if w in ledger)
    if lost:
        report.problems.append(f"{len(lost)} acknowledged write(s) missing, e.g. {lost[:5]}")
    if phantom:
        report.problems.append(f"{len(phantom)} abandoned write(s) committed, e.g. {phantom[:5]}")
    if unknown:
        report.problems.append(f"{len(unknown)} ledger row(s) no client wrote: {unknown[:5]}")
    per_counter = {k: 0 for k in range(1, hot + 1)}
    for _w, k in ledger.items():
        per_counter[k] += 1
    for k, (n, version) in counters.items():
        report.updates_lost += max(0, per_counter.get(k, 0) - n)
        if n != per_counter.get(k, 0) or version != n + 1:
            report.counter_mismatches.append((k, n, version, per_counter.get(k, 0)))
    if report.counter_mismatches:
        report.problems.append(
            "counters do not add up (id, n, version, committed increments): "
            f"{report.counter_mismatches}"
        )
    if proxy.metrics_url:
        text = scrape(proxy.metrics_url)
        report.conflicts_counted = sample_sum(
            text, "optimist_conflicts_total", table="public.counters"
        )
        report.unverified_writes = sample_sum(
            text, "optimist_unverified_writes_total", table="public.counters"
        )
        if report.conflicts_counted != report.conflicts_seen:
            report.problems.append(
                f"the proxy counted {report.conflicts_counted:.0f} conflicts, "
                f"clients saw {report.conflicts_seen}"
            )
        if report.unverified_writes:
            reasons = {}
            for line in text.splitlines():
                if (
                    line.startswith("optimist_unverified_writes_total{")
                    and "public.counters" in line
                ):
                    reason = re.search(r'reason="([^"]*)"', line)
                    value = float(line.rsplit(" ", 1)[1])
                    if reason and value:
                        reasons[reason.group(1)] = value
            report.problems.append(
                f"{report.unverified_writes:.0f} write(s) went unchecked: {reasons}"
            )
    if report.hangs:
        report.problems.append(f"{report.hangs} call(s) hung for {CALL_TIMEOUT:.0f}s")
    if report.unexpected:
        report.problems.append(f"unexpected errors: {report.unexpected}")
    if report.conflicts_seen == 0:
        report.problems.append("no conflicts at all: the hot set is not hot")
    if report.acked == 0:
        report.problems.append("no write was acknowledged")
    return report


# --------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--hot", type=int, default=4, help="rows the clients fight over (default 4)")
    ap.add_argument(
        "--disconnect-rate",
        type=float,
        default=0.02,
        help="share of transactions abandoned by dropping the connection",
    )
    ap.add_argument("--no-restart", action="store_true", help="no upstream restart")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--statement-cache",
        type=int,
        default=None,
        metavar="N",
        help="asyncpg statement_cache_size for every client (default: 0 or 100 "
        "at random per connection)",
    )
    args = ap.parse_args(argv)

    from proxy.embedded import EmbeddedPostgres
    from tests.support import ProxyProcess

    root = Path(tempfile.mkdtemp(prefix="optimist-soak-"))
    server = EmbeddedPostgres(root / "data", fast=True, die_with_parent=True)
    proxy = None
    try:
        server.start()
        database = prepare(server.dsn, args.hot)
        rules = root / "rules.yaml"
        rules.write_text(RULES)
        proxy = ProxyProcess(server.host, server.port, rules=rules, metrics=True).start()
        report = asyncio.run(
            run(
                server,
                proxy,
                clients=args.clients,
                duration=args.duration,
                hot=args.hot,
                disconnect_rate=args.disconnect_rate,
                restart=not args.no_restart,
                seed=args.seed,
                database=database,
                statement_cache=args.statement_cache,
            )
        )
        print("\n".join(report.lines()))
        if not proxy.alive:
            print("the proxy died:\n" + proxy.describe(), file=sys.stderr)
            return 1
        return 0 if report.ok else 1
    finally:
        if proxy is not None:
            proxy.stop()
            proxy.cleanup()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
