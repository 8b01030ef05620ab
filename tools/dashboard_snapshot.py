#!/usr/bin/env python3
"""Render the Grafana dashboard (deploy/grafana/dashboard.json) as one PNG, from real data.

Grafana cannot run on the build machine, so this is the closest honest thing:

1. start a private PostgreSQL (``proxy.embedded.EmbeddedPostgres``), load
   ``rules/example-schema.sql`` and some rows, start optimist on it with a *copy* of
   ``rules/example.yaml`` and ``--metrics``, and start Prometheus scraping it every second
   (own storage in a temporary directory, loopback only);
2. drive a workload through the proxy for ``--duration`` seconds (default 120) with asyncpg
   and psycopg: concurrent tellers, clerks, loan officers, managers and a catalogue team
   reading rows and writing them back (conflicts and retries), blind writes (unverified:
   ``not_read``, ``column_not_read``), bulk updates without a key pin, a report export that
   overflows the snapshot bounds, a freeze trigger that keeps some checked writes out
   (unapplied), short-lived connections, a load that rises and falls, and halfway a rule
   edit (``products`` from ``mode: audit`` to ``enforce``) whose first save is broken and
   refused, then fixed;
3. run every panel's queries against Prometheus' HTTP API (``query_range``, step 2 s;
   ``$__rate_interval`` -> ``--rate-interval``, ``$instance`` -> ``.*`` like the variable's
   "All", the datasource variable ignored) and draw the panels with matplotlib at their
   ``gridPos`` (24 columns), with titles, legends, units, stat panels as big numbers and a
   dark Grafana-like theme;
4. stop everything (also if interrupted: every child gets PR_SET_PDEATHSIG, and a watchdog
   alarm bounds the whole run).

    /tmp/venv/bin/pip install -e '.[docs]'
    /tmp/venv/bin/python tools/dashboard_snapshot.py            # -> docs/dashboard.png

Needs ``prometheus`` on PATH (Debian/Ubuntu: ``apt-get install prometheus``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FOOTER = (
    "rendered from dashboard.json with real Prometheus data by tools/dashboard_snapshot.py "
    "(Grafana not available on the build machine)"
)

# ----------------------------------------------------------------------------- processes


def _pdeathsig() -> None:  # in the child before exec: die with the script
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_or_free(preferred: int) -> int:
    """`preferred` (the metrics port of deploy/) if nothing listens there, else a free one."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds it
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(
    pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise SystemExit(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            if pred():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise SystemExit(f"timed out waiting for {what}\n{tail}")


class Child:
    """A subprocess that dies with us and is stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, name: str, cmd: list[str], log: Path, **kw) -> None:
        self.name, self.log = name, log
        self.fh = open(log, "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pdeathsig,
            **kw,
        )

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.fh.close()


# ----------------------------------------------------------------------------- database

SEED_SQL = """
INSERT INTO customers (id, salutation, first_name, last_name, credit_limit, credit_score, notes)
SELECT i, (ARRAY['Mr','Ms','Mrs','Dr'])[1 + i % 4],
       (ARRAY['Sue','Lou','Ann','Bob','Eva','Max','Ida','Tom','Zoe','Ray'])[1 + i % 10],
       (ARRAY['Smith','Jones','Brown','Garcia','Meyer','Rossi','Dubois','Novak'])[1 + (i / 10) % 8]
         || '-' || i,
       1000 + (i % 40) * 250, 450 + (i * 37) % 400, CASE WHEN i % 7 = 0 THEN 'prefers email' END
FROM generate_series(1, {customers}) i;
SELECT setval(pg_get_serial_sequence('customers', 'id'), {customers});

INSERT INTO accounts (id, owner, balance)
SELECT i, 'owner ' || i, 100 + (i * 7919) % 10000 FROM generate_series(1, {accounts}) i;
SELECT setval(pg_get_serial_sequence('accounts', 'id'), {accounts});

INSERT INTO reports (id, customer_id, title, amount, status, approved_by, attachment)
SELECT i, 1 + i % {customers}, 'trip #' || i, 20 + (i * 31) % 900,
       CASE WHEN i BETWEEN 41 AND 60 THEN 'paid' ELSE 'submitted' END,
       CASE WHEN i BETWEEN 41 AND 60 THEN 'carol' END,
       json_build_object('pages', 1 + i % 5)
FROM generate_series(1, {reports}) i;
SELECT setval(pg_get_serial_sequence('reports', 'id'), {reports});

INSERT INTO products (sku, name, price, stock)
SELECT 'SKU-' || lpad(i::text, 4, '0'), 'product ' || i, 5 + (i * 13) % 200, (i * 17) % 60
FROM generate_series(1, {products}) i;

-- paid reports are frozen: an update to one is silently skipped (optimist counts the
-- checked write that matched no row as "unapplied")
CREATE FUNCTION reports_freeze_paid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status = 'paid' THEN RETURN NULL; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER reports_freeze_paid BEFORE UPDATE ON reports
  FOR EACH ROW EXECUTE FUNCTION reports_freeze_paid();
"""

N_CUSTOMERS, N_ACCOUNTS, N_REPORTS, N_PRODUCTS = 2000, 15000, 3000, 500


def sku(i: int) -> str:
    return f"SKU-{i:04d}"


# ----------------------------------------------------------------------------- workload


class Load:
    """The load envelope (0..1) over the run: a morning ramp, a plateau, a lunch dip, a spike."""

    POINTS = [
        (0.0, 0.30),
        (0.08, 0.45),
        (0.30, 0.95),
        (0.45, 1.0),
        (0.52, 0.40),
        (0.62, 0.45),
        (0.70, 0.80),
        (0.80, 0.75),
        (0.84, 1.0),
        (0.90, 1.0),
        (0.94, 0.65),
        (1.0, 0.70),
    ]

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.t0 = time.monotonic()

    def u(self) -> float:
        return min(1.0, (time.monotonic() - self.t0) / self.duration)

    def level(self) -> float:
        u = self.u()
        pts = self.POINTS
        for (a, va), (b, vb) in zip(pts, pts[1:]):
            if a <= u <= b:
                v = va + (vb - va) * (u - a) / (b - a)
                break
        else:
            v = pts[-1][1]
        return max(0.1, min(1.0, v + 0.05 * math.sin(u * 40)))

    def over(self) -> bool:
        return time.monotonic() - self.t0 >= self.duration


class Stats:
    def __init__(self) -> None:
        self.c: Counter[str] = Counter()

    def __getitem__(self, k: str) -> int:
        return self.c[k]

    def inc(self, k: str, n: int = 1) -> None:
        self.c[k] += n


class Workload:
    def __init__(self, dsn: str, duration: float, rules_file: Path, seed: int, log=print) -> None:
        self.dsn = dsn
        self.load = Load(duration)
        self.rules_file = rules_file
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.log = log
        self.stop = asyncio.Event()
        self.closed_accounts: set[int] = set()

    # -- helpers

    async def pause(self, lo: float, hi: float) -> None:
        """Think time, longer when the load is low."""
        lvl = self.load.level()
        await asyncio.sleep(self.rng.uniform(lo, hi) * (1.6 - lvl))

    def active(self, index: int, count: int) -> bool:
        return index == 0 or index < round(self.load.level() * count)

    def hot(self, hot_n: int, total: int, p_hot: float = 0.75) -> int:
        return (
            self.rng.randint(1, hot_n) if self.rng.random() < p_hot else self.rng.randint(1, total)
        )

    async def pg_conn(self, client_side: bool = False):
        """psycopg; `client_side`: values bound into the SQL text (simple query protocol),
        the way many legacy applications talk."""
        import psycopg

        self.stats.inc("connections")
        kw = {"cursor_factory": psycopg.AsyncClientCursor} if client_side else {}
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, application_name="snapshot-workload", **kw
        )

    async def apg_conn(self):
        import asyncpg

        self.stats.inc("connections")
        return await asyncpg.connect(
            self.dsn, server_settings={"application_name": "snapshot-workload"}
        )

    async def worker_loop(self, name: str, index: int, count: int, kind: str, step) -> None:
        """Keep a connection while active (the load decides), run `step(conn)` repeatedly."""
        conn = None
        try:
            while not self.stop.is_set():
                if not self.active(index, count):
                    if conn is not None:
                        await conn.close()
                        conn = None
                    await asyncio.sleep(0.5)
                    continue
                if conn is None:
                    conn = await (
                        self.apg_conn()
                        if kind == "asyncpg"
                        else self.pg_conn(client_side=kind == "psycopg-client")
                    )
                try:
                    await step(conn)
                except Exception as exc:  # a workload must not die of one error
                    if self.stop.is_set():
                        break
                    self.stats.inc(f"error {name} {type(exc).__name__}")
                    try:
                        await conn.close()
                    except Exception:
                        pass
                    conn = None
                    await asyncio.sleep(0.2)
        finally:
            # hold connections until the driver says so (the snapshot's last scrape)
            await self.release.wait()
            if conn is not None:
                try:
                    await conn.close()
                except Exception:
                    pass

    # -- accounts: tellers (asyncpg, binary results), some in transactions

    async def teller(self, conn) -> None:
        import asyncpg

        aid = self.hot(25, N_ACCOUNTS, 0.7)
        in_tx = self.rng.random() < 0.3
        for attempt in range(4):
            try:
                tx = conn.transaction() if in_tx else None
                if tx:
                    await tx.start()
                try:
                    row = await conn.fetchrow(
                        "SELECT id, owner, balance, version FROM accounts WHERE id = $1", aid
                    )
                    self.stats.inc("reads")
                    if row is None:
                        self.stats.inc("accounts gone (closed)")
                        if tx:
                            await tx.rollback()
                        return
                    await asyncio.sleep(self.rng.uniform(0.02, 0.12))  # the teller types
                    delta = self.rng.choice([-50, -20, 10, 25, 100])
                    await conn.execute(
                        "UPDATE accounts SET balance = $1 WHERE id = $2",
                        row["balance"] + delta,
                        aid,
                    )
                    if tx:
                        await tx.commit()
                    self.stats.inc("accounts writes ok")
                    break
                except BaseException:
                    if tx:
                        try:
                            await tx.rollback()
                        except Exception:
                            pass
                    raise
            except asyncpg.exceptions.SerializationError:
                self.stats.inc("conflicts accounts")
                if attempt == 3:
                    self.stats.inc("gave up accounts")
                else:
                    self.stats.inc("retries accounts")
                    await asyncio.sleep(self.rng.uniform(0.005, 0.03))
        await self.pause(0.05, 0.25)

    async def closer(self, conn) -> None:
        """Closes (deletes) a hot account someone may be editing, reopens it later."""
        import asyncpg

        await self.pause(0.8, 2.0)
        if self.closed_accounts and self.rng.random() < 0.5:
            aid = self.closed_accounts.pop()
            await conn.execute(
                "INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, 0)",
                aid,
                f"reopened {aid}",
            )
            self.stats.inc("accounts reopened")
            return
        aid = self.rng.randint(1, 25)
        row = await conn.fetchrow("SELECT id, version FROM accounts WHERE id = $1", aid)
        if row is None:
            return
        await asyncio.sleep(0.05)
        try:
            await conn.execute("DELETE FROM accounts WHERE id = $1", aid)
            self.closed_accounts.add(aid)
            self.stats.inc("accounts closed")
        except asyncpg.exceptions.SerializationError:
            self.stats.inc("conflicts accounts")
            self.stats.inc("closer conflicts (gave up)")

    # -- customers: clerks write whole forms back (sparse_update), scorers, loan officers

    async def clerk(self, conn) -> None:
        import psycopg

        cid = self.hot(30, N_CUSTOMERS)
        for attempt in range(3):
            cur = await conn.execute("SELECT * FROM customers WHERE id = %s", (cid,))
            r = await cur.fetchone()
            self.stats.inc("reads")
            cols = [d.name for d in cur.description]
            form = dict(zip(cols, r))
            await asyncio.sleep(self.rng.uniform(0.02, 0.12))  # the clerk edits the form
            what = self.rng.random()
            if what < 0.4:
                form["notes"] = f"called {self.rng.randint(1, 999)}"
            elif what < 0.75:
                form["credit_limit"] = form["credit_limit"] + self.rng.choice([-250, 250, 500])
            elif what < 0.92:
                form["last_name"] = (
                    form["last_name"].split("-")[0] + f"-{cid}" + self.rng.choice(["", "a", "b"])
                )
            else:
                form["salutation"] = self.rng.choice(["Mr", "Ms", "Mrs", "Dr"])
            try:
                await conn.execute(
                    "UPDATE customers SET salutation = %s, first_name = %s, last_name = %s, "
                    "credit_limit = %s, notes = %s, updated_at = now() WHERE id = %s",
                    (
                        form["salutation"],
                        form["first_name"],
                        form["last_name"],
                        form["credit_limit"],
                        form["notes"],
                        cid,
                    ),
                )
                self.stats.inc("customers writes ok")
                break
            except psycopg.errors.SerializationFailure:
                self.stats.inc("conflicts customers")
                self.stats.inc("gave up customers" if attempt == 2 else "retries customers")
        await self.pause(0.1, 0.4)

    async def scorer(self, conn) -> None:
        import asyncpg

        cid = self.hot(30, N_CUSTOMERS, 0.6)
        r = await conn.fetchrow("SELECT id, credit_score FROM customers WHERE id = $1", cid)
        self.stats.inc("reads")
        try:
            await conn.execute(
                "UPDATE customers SET credit_score = $1 WHERE id = $2",
                max(300, min(850, r[1] + self.rng.randint(-40, 40))),
                cid,
            )
            self.stats.inc("customers writes ok")
        except asyncpg.exceptions.SerializationError:
            self.stats.inc("conflicts customers")
        await self.pause(0.4, 1.2)

    async def loan_officer(self, conn) -> None:
        import asyncpg

        cid = self.hot(30, N_CUSTOMERS)
        for attempt in range(3):
            r = await conn.fetchrow(
                "SELECT id, first_name, last_name, credit_limit, credit_score FROM customers "
                "WHERE id = $1",
                cid,
            )
            self.stats.inc("reads")
            await asyncio.sleep(self.rng.uniform(0.05, 0.2))  # decides on the score
            new_limit = r[3] + (500 if (r[4] or 0) > 600 else -500)
            try:
                await conn.execute(
                    "UPDATE customers SET credit_limit = $1 WHERE id = $2", new_limit, cid
                )
                self.stats.inc("customers writes ok")
                break
            except asyncpg.exceptions.SerializationError:
                self.stats.inc("conflicts customers")
                self.stats.inc("gave up customers" if attempt == 2 else "retries customers")
        await self.pause(0.2, 0.6)

    # -- reports: managers approve or reject (status: differing), resubmissions, frozen paid ones

    async def manager(self, conn) -> None:
        import asyncpg

        rid = self.rng.randint(1, 20)
        await conn.fetchrow("SELECT id, title, amount, status FROM reports WHERE id = $1", rid)
        self.stats.inc("reads")
        await asyncio.sleep(self.rng.uniform(0.03, 0.15))
        decision = "approved" if self.rng.random() < 0.6 else "rejected"
        try:
            await conn.execute(
                "UPDATE reports SET status = $1, approved_by = $2 WHERE id = $3",
                decision,
                f"manager{self.rng.randint(1, 5)}",
                rid,
            )
            self.stats.inc("reports writes ok")
        except asyncpg.exceptions.SerializationError:
            self.stats.inc("conflicts reports")
        await self.pause(0.15, 0.5)

    async def resubmitter(self, conn) -> None:
        import asyncpg

        rid = self.rng.randint(1, 20)
        r = await conn.fetchrow("SELECT id, status FROM reports WHERE id = $1", rid)
        self.stats.inc("reads")
        if r["status"] != "submitted":
            try:
                await conn.execute(
                    "UPDATE reports SET status = 'submitted', approved_by = NULL WHERE id = $1", rid
                )
                self.stats.inc("reports writes ok")
            except asyncpg.exceptions.SerializationError:
                self.stats.inc("conflicts reports")
        await self.pause(0.2, 0.5)

    async def clawback(self, conn) -> None:
        """Tries to reject paid reports; the freeze trigger keeps the write out."""
        rid = self.rng.randint(41, 60)
        await conn.fetchrow("SELECT * FROM reports WHERE id = $1", rid)
        self.stats.inc("reads")
        tag = await conn.execute("UPDATE reports SET status = 'rejected' WHERE id = $1", rid)
        self.stats.inc(
            "reports unapplied (frozen, 0 rows)" if tag.endswith(" 0") else "reports writes ok"
        )
        await self.pause(0.6, 1.6)

    async def mobile_approver(self, conn) -> None:
        """Approves without reading: unknown_original: reject refuses it (55000)."""
        import asyncpg

        await self.pause(2.0, 5.0)
        rid = self.rng.randint(1, 40)
        try:
            await conn.execute(
                "UPDATE reports SET status = 'approved', approved_by = 'mobile' WHERE id = $1", rid
            )
            self.stats.inc("reports writes ok")
        except asyncpg.exceptions.ObjectNotInPrerequisiteStateError:
            self.stats.inc("reports blind writes refused (55000)")

    # -- products: audit mode at first, enforced after the rule edit

    async def catalog(self, conn) -> None:
        import psycopg

        s = sku(self.hot(15, N_PRODUCTS, 0.8))
        for attempt in range(3):
            cur = await conn.execute(
                "SELECT sku, name, price, stock, modified_at FROM products WHERE sku = %s", (s,)
            )
            r = await cur.fetchone()
            self.stats.inc("reads")
            await asyncio.sleep(self.rng.uniform(0.02, 0.1))
            try:
                await conn.execute(
                    "UPDATE products SET stock = %s WHERE sku = %s",
                    (max(0, r[3] + self.rng.choice([-3, -1, 5, 10])), s),
                )
                self.stats.inc("products writes ok")
                break
            except psycopg.errors.SerializationFailure:
                self.stats.inc("conflicts products (enforced)")
                self.stats.inc("gave up products" if attempt == 2 else "retries products")
        await self.pause(0.1, 0.35)

    # -- unverified writes

    async def blind_writer(self, conn) -> None:
        """Writes rows it never read (not_read) or whose checked columns it did not read."""
        if self.rng.random() < 0.5:
            aid = self.rng.randint(41, N_ACCOUNTS)
            await conn.execute(
                "UPDATE accounts SET owner = %s WHERE id = %s", (f"renamed {aid}", aid)
            )
            self.stats.inc("blind writes accounts (not_read)")
        else:
            cid = self.rng.randint(31, N_CUSTOMERS)
            cur = await conn.execute("SELECT id, first_name FROM customers WHERE id = %s", (cid,))
            await cur.fetchone()
            await conn.execute(
                "UPDATE customers SET notes = 'migrated', credit_score = %s WHERE id = %s",
                (self.rng.randint(400, 800), cid),
            )
            self.stats.inc("partial-read writes customers (column_not_read)")
        await self.pause(0.3, 0.8)

    async def bulk(self, conn) -> None:
        """Maintenance jobs: bulk updates that pin no key."""
        await self.pause(4.0, 8.0)
        if self.stop.is_set():
            return
        job = self.rng.choice(["prices", "interest", "scores"])
        if job == "prices":
            cur = await conn.execute(
                "UPDATE products SET price = round(price * 1.01, 2) WHERE stock < 20"
            )
        elif job == "interest":
            lo = self.rng.randint(1, N_ACCOUNTS - 200)
            cur = await conn.execute(
                "UPDATE accounts SET balance = balance * 1.001 WHERE id BETWEEN %s AND %s",
                (lo, lo + 200),
            )
        else:
            cur = await conn.execute(
                "UPDATE customers SET updated_at = now() WHERE credit_score < 500"
            )
        self.stats.inc(f"bulk updates (no_key_pin) {job}")
        self.stats.inc("bulk rows updated", max(cur.rowcount, 0))

    # -- connections coming and going

    async def exporter(self) -> None:
        """A nightly-style export on a fresh connection: reads every account (more rows than
        a session may hold snapshots of), keeps the session a moment, disconnects."""
        await asyncio.sleep(6)
        while not self.stop.is_set():
            conn = await self.apg_conn()
            try:
                rows = await conn.fetch("SELECT * FROM accounts ORDER BY id")
                self.stats.inc("exports")
                self.stats.inc("export rows", len(rows))
                await asyncio.sleep(2.5)
            finally:
                await conn.close()
            await self._sleep_unless_stopped(self.rng.uniform(14, 22))

    async def web_requests(self) -> None:
        """Short-lived connections: connect, read a page, disconnect."""
        while not self.stop.is_set():
            if self.rng.random() < self.load.level():
                conn = await self.pg_conn()
                try:
                    cid = self.rng.randint(1, N_CUSTOMERS)
                    cur = await conn.execute("SELECT * FROM customers WHERE id = %s", (cid,))
                    await cur.fetchall()
                    cur = await conn.execute("SELECT * FROM reports WHERE customer_id = %s", (cid,))
                    await cur.fetchall()
                    self.stats.inc("reads", 2)
                finally:
                    await conn.close()
            await asyncio.sleep(self.rng.uniform(0.1, 0.4))

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    # -- the rule edit

    async def rule_edit(self, broken_hold: float = 8.0) -> None:
        await asyncio.sleep(self.load.duration * 0.5)
        original = self.rules_file.read_text()
        assert "    mode: audit" in original
        # the DBA finishes the products rollout... with a typo: refused, old rules stay
        # (saved twice: Prometheus cannot see the first failure, the failure counter's series
        # is born at 1 and rate()/increase() need a previous sample)
        for typo in ("enforced", "Enforce"):
            self.rules_file.write_text(original.replace("    mode: audit", f"    mode: {typo}"))
            self.log(f"[{self.elapsed():5.1f}s] rules: broken edit saved (mode: {typo})")
            self.stats.inc("rule edits broken (saved)")
            await asyncio.sleep(broken_hold / 2)
        self.rules_file.write_text(original.replace("    mode: audit", "    mode: enforce"))
        self.log(f"[{self.elapsed():5.1f}s] rules: fixed (products mode: enforce)")
        self.stats.inc("rule edits fixed")

    def elapsed(self) -> float:
        return time.monotonic() - self.load.t0

    async def run(self) -> None:
        self.release = asyncio.Event()
        self.load = Load(self.load.duration)
        plan = [
            ("teller", self.teller, 10, "asyncpg"),
            ("closer", self.closer, 1, "asyncpg"),
            ("clerk", self.clerk, 6, "psycopg-client"),
            ("scorer", self.scorer, 2, "asyncpg"),
            ("loan_officer", self.loan_officer, 3, "asyncpg"),
            ("manager", self.manager, 5, "asyncpg"),
            ("resubmitter", self.resubmitter, 2, "asyncpg"),
            ("clawback", self.clawback, 1, "asyncpg"),
            ("mobile_approver", self.mobile_approver, 1, "asyncpg"),
            ("catalog", self.catalog, 4, "psycopg-client"),
            ("blind_writer", self.blind_writer, 2, "psycopg-client"),
            ("bulk", self.bulk, 1, "psycopg"),
        ]
        tasks = [
            asyncio.create_task(self.worker_loop(name, i, n, kind, fn))
            for name, fn, n, kind in plan
            for i in range(n)
        ]
        extra = [
            asyncio.create_task(c) for c in (self.exporter(), self.web_requests(), self.rule_edit())
        ]
        while not self.load.over():
            await asyncio.sleep(0.25)
        self.stop.set()
        self.end_wall = time.time()
        for t in extra:
            t.cancel()
        await asyncio.gather(*extra, return_exceptions=True)
        return tasks

    async def finish(self, tasks) -> None:
        self.release.set()
        for res in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(res, BaseException):
                self.stats.inc(f"error worker died {type(res).__name__}")


# ----------------------------------------------------------------------------- Prometheus


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url, timeout=30)
        try:
            doc = json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {status}: {body[:200]!r}"}
        return doc

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict:
        return self._get(
            "/api/v1/query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step},
        )

    def query(self, expr: str, at: float) -> dict:
        return self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})


def substitute(expr: str, rate_interval: str, step: float, range_s: float) -> str:
    """Grafana's variables, as a Grafana would expand them for this panel."""
    out = expr
    out = out.replace("$__rate_interval", rate_interval).replace(
        "${__rate_interval}", rate_interval
    )
    out = out.replace("$__interval", f"{int(step)}s").replace("${__interval}", f"{int(step)}s")
    out = out.replace("$__range", f"{int(range_s)}s")
    # template variables: "All" (the dashboard's allValue is .*)
    out = re.sub(r"\$\{?instance\}?", ".*", out)
    return out


def legend_name(fmt: str, metric: dict) -> str:
    if not fmt:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
        return f"{metric.get('__name__', '')}{{{inner}}}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()


# ----------------------------------------------------------------------------- units


def _trim(s: str) -> str:
    return s.rstrip("0").rstrip(".") if "." in s else s


def _num(v: float, decimals: int | None = None) -> str:
    if decimals is not None:
        return f"{v:.{decimals}f}"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return _trim(f"{v:.1f}")
    if a >= 1:
        return _trim(f"{v:.2f}")
    return _trim(f"{v:.{max(2, 2 - int(math.floor(math.log10(a))))}f}")


def fmt_unit(v: float | None, unit: str | None, decimals: int | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    unit = unit or "short"
    if unit in ("ops", "reqps", "short", "none", "Bps"):
        suffix = {"ops": " ops/s", "reqps": " req/s", "short": "", "none": "", "Bps": "B/s"}[unit]
        steps = (
            [(1e9, " GB/s"), (1e6, " MB/s"), (1e3, " kB/s")]
            if unit == "Bps"
            else [(1e9, " Bil"), (1e6, " Mil"), (1e3, " K")]
        )
        for f, name in steps:
            if abs(v) >= f:
                if unit == "Bps":
                    return _num(v / f, decimals) + name
                return _num(v / f, decimals) + name + suffix
        return _num(v, decimals) + (" " + suffix.strip() if unit == "Bps" else suffix)
    if unit == "s":
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return _num(v * 1e6, decimals) + " µs"
        if a < 1:
            return _num(v * 1e3, decimals) + " ms"
        return _num(v, decimals) + " s"
    if unit == "percentunit":
        return _num(v * 100, decimals) + "%"
    if unit == "bool":
        return "true" if v else "false"
    if unit == "dateTimeAsIso":
        return dt.datetime.fromtimestamp(v / 1000).strftime("%Y-%m-%d %H:%M:%S")
    return _num(v, decimals)


# ----------------------------------------------------------------------------- rendering

THEME = {
    "bg": "#111217",
    "panel": "#181b1f",
    "border": "#2a2d33",
    "text": "#ccccdc",
    "muted": "#8e8e99",
    "grid": "#26282d",
    "header": "#1f2228",
}
GRAFANA_COLORS = {
    "green": "#73BF69",
    "red": "#F2495C",
    "yellow": "#FADE2A",
    "orange": "#FF9830",
    "blue": "#5794F2",
    "purple": "#B877D9",
}
PALETTE = [
    "#73BF69",
    "#F2CC0C",
    "#8AB8FF",
    "#FF780A",
    "#F2495C",
    "#5794F2",
    "#B877D9",
    "#705DA0",
    "#37872D",
    "#FADE2A",
    "#447EBC",
    "#C15C17",
]


def color_of(name: str) -> str:
    return GRAFANA_COLORS.get(name, name)


class Canvas:
    """Pixel coordinates (origin top left) on a matplotlib figure."""

    def __init__(self, width: int, height: int, dpi: int = 100) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.W, self.H, self.dpi = width, height, dpi
        self.fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=THEME["bg"])

    def fx(self, x: float) -> float:
        return x / self.W

    def fy(self, y: float) -> float:
        return 1 - y / self.H

    def rect(self, x, y, w, h, face, edge=None, radius=3, lw=1.0, alpha=1.0):
        from matplotlib.patches import FancyBboxPatch

        p = FancyBboxPatch(
            (self.fx(x), self.fy(y + h)),
            w / self.W,
            h / self.H,
            boxstyle=f"round,pad=0,rounding_size={radius / self.W}",
            transform=self.fig.transFigure,
            facecolor=face,
            edgecolor=edge or face,
            linewidth=lw,
            alpha=alpha,
            mutation_aspect=self.W / self.H,
            zorder=-10,
        )
        self.fig.add_artist(p)

    def text(self, x, y, s, size=9, color=None, weight="normal", ha="left", va="top", **kw):
        return self.fig.text(
            self.fx(x),
            self.fy(y),
            s,
            fontsize=size,
            color=color or THEME["text"],
            fontweight=weight,
            ha=ha,
            va=va,
            **kw,
        )

    def axes(self, x, y, w, h):
        ax = self.fig.add_axes([self.fx(x), self.fy(y + h), w / self.W, h / self.H])
        ax.set_facecolor("none")
        for s in ax.spines.values():
            s.set_visible(False)
        return ax

    def line(self, x0, y0, x1, y1, color, lw=1.0):
        from matplotlib.lines import Line2D

        self.fig.add_artist(
            Line2D(
                [self.fx(x0), self.fx(x1)],
                [self.fy(y0), self.fy(y1)],
                transform=self.fig.transFigure,
                color=color,
                linewidth=lw,
            )
        )


class Series:
    def __init__(self, name: str, times, values) -> None:
        self.name, self.times, self.values = name, times, values

    def finite(self):
        return [v for v in self.values if v is not None and not math.isnan(v)]

    def mean(self):
        f = self.finite()
        return sum(f) / len(f) if f else None

    def max(self):
        f = self.finite()
        return max(f) if f else None

    def last(self):
        f = self.finite()
        return f[-1] if f else None


def to_series(result: dict, fmt: str, grid: list[float]) -> list[Series]:
    out = []
    index = {round(t, 3): i for i, t in enumerate(grid)}
    for r in result.get("data", {}).get("result", []):
        vals = [math.nan] * len(grid)
        for t, v in r.get("values", []):
            i = index.get(round(float(t), 3))
            if i is not None:
                try:
                    vals[i] = float(v)
                except ValueError:
                    pass
                if math.isinf(vals[i]):
                    vals[i] = math.nan
        out.append(Series(legend_name(fmt, r.get("metric", {})), grid, vals))
    return out


class Renderer:
    COLS = 24
    ROW_H = 36  # px per grid row (Grafana: 30 + margins)
    GAP = 8
    MARGIN = 16
    HEADER = 92
    FOOTER = 36

    def __init__(self, dashboard: dict, width: int = 1600) -> None:
        self.d = dashboard
        self.width = width
        bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
        self.height = self.HEADER + bottom * self.ROW_H + self.FOOTER
        self.col_w = (width - 2 * self.MARGIN + self.GAP) / self.COLS
        self.cv = Canvas(width, self.height)

    def box(self, gp: dict) -> tuple[float, float, float, float]:
        x = self.MARGIN + gp["x"] * self.col_w
        y = self.HEADER + gp["y"] * self.ROW_H
        return x, y, gp["w"] * self.col_w - self.GAP, gp["h"] * self.ROW_H - self.GAP

    # -- chrome

    def header(self, start: float, end: float, variables: list[tuple[str, str]]) -> None:
        cv = self.cv
        cv.rect(0, 0, self.width, 40, THEME["header"], radius=0)
        cv.text(self.MARGIN, 12, "Dashboards  ›  ", size=11, color=THEME["muted"])
        cv.text(self.MARGIN + 112, 12, self.d.get("title", ""), size=11, weight="bold")
        a = dt.datetime.fromtimestamp(start)
        b = dt.datetime.fromtimestamp(end)
        rng = f"{a:%Y-%m-%d %H:%M:%S}  to  {b:%H:%M:%S}"
        cv.rect(self.width - self.MARGIN - 300, 7, 300, 26, THEME["panel"], THEME["border"])
        cv.text(self.width - self.MARGIN - 150, 13, "◷  " + rng, size=9, ha="center")
        x = self.MARGIN
        for label, value in variables:
            lw = 9 + 7.2 * len(label)
            vw = 14 + 7.2 * len(value)
            cv.rect(x, 52, lw, 26, THEME["header"], THEME["border"], radius=2)
            cv.text(x + 7, 58, label, size=9)
            cv.rect(x + lw, 52, vw, 26, THEME["panel"], THEME["border"], radius=2)
            cv.text(x + lw + 7, 58, value, size=9)
            x += lw + vw + 12

    def footer(self) -> None:
        self.cv.text(
            self.width / 2,
            self.height - self.FOOTER / 2,
            FOOTER,
            size=9,
            color=THEME["muted"],
            ha="center",
            va="center",
            style="italic",
        )

    def frame(self, panel: dict) -> tuple[float, float, float, float]:
        x, y, w, h = self.box(panel["gridPos"])
        self.cv.rect(x, y, w, h, THEME["panel"], THEME["border"], radius=3)
        self.cv.text(x + 10, y + 8, panel.get("title", ""), size=10, weight="bold")
        return x, y, w, h

    def row(self, panel: dict) -> None:
        x, y, w, h = self.box(panel["gridPos"])
        self.cv.text(
            x + 2,
            y + h / 2 + 3,
            "⌄  " + panel.get("title", ""),
            size=11,
            weight="bold",
            va="center",
        )

    def message(self, x, y, w, h, text, color=None) -> None:
        self.cv.text(
            x + w / 2,
            y + h / 2,
            text,
            size=11,
            color=color or THEME["muted"],
            ha="center",
            va="center",
        )

    # -- panel types

    def _xaxis(self, ax, t0: float, t1: float, width_px: float) -> None:
        span = t1 - t0
        for every in (5, 10, 15, 20, 30, 60, 120, 300, 600, 1800, 3600):
            if span / every <= width_px / 110:
                break
        first = math.ceil(t0 / every) * every
        ticks = [t for t in range(int(first), int(t1) + 1, every)]
        ax.set_xticks(ticks)
        ax.set_xticklabels([dt.datetime.fromtimestamp(t).strftime("%H:%M:%S") for t in ticks])
        ax.set_xlim(t0, t1)

    def _style_axes(self, ax, unit: str | None) -> None:
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        ax.tick_params(colors=THEME["muted"], labelsize=8, length=0, pad=4)
        ax.grid(True, color=THEME["grid"], linewidth=0.8)
        ax.set_axisbelow(True)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=3))

        def yfmt(v, _pos):
            if unit == "percentunit":
                return _trim(f"{v * 100:.1f}") + "%"
            return fmt_unit(v, unit)

        ax.yaxis.set_major_formatter(FuncFormatter(yfmt))

    def timeseries(self, panel: dict, series: list[Series], t0: float, t1: float) -> None:
        import numpy as np

        x, y, w, h = self.frame(panel)
        fc = panel.get("fieldConfig", {}).get("defaults", {})
        unit = fc.get("unit")
        custom = fc.get("custom", {})
        stacked = custom.get("stacking", {}).get("mode", "none") == "normal"
        bars = custom.get("drawStyle") == "bars"
        fill = custom.get("fillOpacity", 0) / 100
        legend = panel.get("options", {}).get("legend", {})
        calcs = legend.get("calcs", []) if legend.get("displayMode") == "table" else []
        series = [s for s in series if s.finite()]
        if not series:
            self.message(x, y + 20, w, h - 20, "No data")
            return
        # legend table at the bottom, capped at ~45% of the panel
        row_h = 16
        max_rows = max(1, int((h * 0.45 - row_h) / row_h))
        shown = series[:max_rows]
        leg_h = row_h * (len(shown) + 1 + (1 if len(series) > max_rows else 0)) + 6
        ax = self.cv.axes(x + 66, y + 32, w - 80, h - 32 - leg_h - 30)
        self._style_axes(ax, unit)
        times = np.array(series[0].times)
        base = np.zeros(len(times))
        colors = {}
        for i, s in enumerate(series):
            c = PALETTE[i % len(PALETTE)]
            colors[s.name] = c
            v = np.array([np.nan if (vv is None) else vv for vv in s.values], dtype=float)
            if bars:
                step = (times[1] - times[0]) if len(times) > 1 else 1
                vz = np.nan_to_num(v)
                ax.bar(
                    times,
                    vz,
                    width=step * 0.8,
                    bottom=base if stacked else 0,
                    color=c,
                    alpha=fill or 0.6,
                    edgecolor=c,
                    linewidth=0.6,
                )
                if stacked:
                    base = base + vz
                continue
            if stacked:
                top = base + np.nan_to_num(v)
                shown_top = np.where(np.isnan(v), np.nan, top)
                ax.plot(times, shown_top, color=c, linewidth=1.1)
                if fill:
                    ax.fill_between(
                        times,
                        base,
                        top,
                        where=~np.isnan(v),
                        color=c,
                        alpha=fill,
                        linewidth=0,
                        interpolate=False,
                    )
                base = top
            else:
                ax.plot(times, v, color=c, linewidth=1.1)
                if fill:
                    ax.fill_between(
                        times, 0, v, where=~np.isnan(v), color=c, alpha=fill, linewidth=0
                    )
        lo = fc.get("min")
        ymax = ax.get_ylim()[1]
        if lo is not None:
            ax.set_ylim(bottom=lo, top=max(ymax, 1e-9))
        if unit == "percentunit" and ymax <= 0:
            ax.set_ylim(0, 1)
        self._xaxis(ax, t0, t1, w - 76)
        # legend
        ly = y + h - leg_h - 4
        colx = [x + w - 12 - 92 * (len(calcs) - 1 - k) for k in range(len(calcs))]
        names = {
            "mean": "Mean",
            "max": "Max",
            "lastNotNull": "Last *",
            "last": "Last",
            "min": "Min",
            "sum": "Total",
        }
        self.cv.text(x + 12, ly, "Name", size=8, color=THEME["muted"])
        for cx, c in zip(colx, calcs):
            self.cv.text(cx, ly, names.get(c, c), size=8, color="#6e9fff", ha="right")
        self.cv.line(x + 8, ly + row_h - 1, x + w - 8, ly + row_h - 1, THEME["border"])
        for i, s in enumerate(shown):
            ry = ly + row_h * (i + 1) + 2
            self.cv.line(x + 12, ry + 6, x + 26, ry + 6, colors[s.name], lw=3)
            self.cv.text(x + 32, ry, s.name, size=8)
            vals = {"mean": s.mean(), "max": s.max(), "lastNotNull": s.last(), "last": s.last()}
            for cx, c in zip(colx, calcs):
                self.cv.text(cx, ry, fmt_unit(vals.get(c), unit), size=8, ha="right")
        if len(series) > max_rows:
            self.cv.text(
                x + 32,
                ly + row_h * (len(shown) + 1) + 2,
                f"+ {len(series) - max_rows} more",
                size=8,
                color=THEME["muted"],
            )

    def stat(self, panel: dict, series: list[Series], t0: float, t1: float) -> None:
        import numpy as np

        x, y, w, h = self.frame(panel)
        fc = panel.get("fieldConfig", {}).get("defaults", {})
        unit = fc.get("unit")
        series = [s for s in series if s.finite()]
        if not series:
            self.message(x, y + 20, w, h - 20, "No data")
            return
        s = series[0]
        value = s.last()
        text = fmt_unit(value, unit)
        color = None
        for m in fc.get("mappings", []):
            if m.get("type") == "value":
                for k, res in m.get("options", {}).items():
                    if value is not None and float(k) == value:
                        text = res.get("text", text)
                        color = color_of(res["color"]) if res.get("color") else None
        if color is None:
            # Grafana's default thresholds when a panel has none: green, red from 80
            steps = fc.get("thresholds", {}).get("steps") or [
                {"color": "green", "value": None},
                {"color": "red", "value": 80},
            ]
            color = color_of(steps[0]["color"])
            for st in steps[1:]:
                if value is not None and st.get("value") is not None and value >= st["value"]:
                    color = color_of(st["color"])
        if panel.get("options", {}).get("graphMode") == "area":
            ax = self.cv.axes(x + 1, y + h * 0.52, w - 2, h * 0.48 - 2)
            ax.set_xticks([])
            ax.set_yticks([])
            v = np.array(s.values, dtype=float)
            ax.fill_between(s.times, 0, v, where=~np.isnan(v), color=color, alpha=0.18, linewidth=0)
            ax.plot(s.times, v, color=color, linewidth=1.0, alpha=0.8)
            ax.set_xlim(t0, t1)
            fv = s.finite()
            top = max(fv) if fv else 1
            ax.set_ylim(min(0, min(fv)) if fv else 0, (top or 1) * 1.15)
        self.cv.text(
            x + w / 2,
            y + h * 0.48,
            text,
            size=24,
            color=color,
            weight="bold",
            ha="center",
            va="center",
        )

    def table(self, panel: dict, frames: dict[str, list[dict]]) -> None:
        x, y, w, h = self.frame(panel)
        rows = self._merge(panel, frames)
        if not rows:
            self.message(x, y + 20, w, h - 20, "No data")
            return
        overrides = panel.get("fieldConfig", {}).get("overrides", [])
        units = {}
        for o in overrides:
            if o.get("matcher", {}).get("id") == "byName":
                for p in o.get("properties", []):
                    if p.get("id") == "unit":
                        units[o["matcher"]["options"]] = p["value"]
        cols = list(rows[0].keys())
        cw = (w - 20) / len(cols)
        hy = y + 32
        self.cv.rect(x + 6, hy - 4, w - 12, 22, THEME["header"], radius=1)
        for i, c in enumerate(cols):
            self.cv.text(x + 12 + i * cw, hy, c, size=8.5, color="#6e9fff", weight="bold")
        for r, row in enumerate(rows):
            ry = hy + 26 + r * 22
            for i, c in enumerate(cols):
                v = row[c]
                if isinstance(v, float):
                    v = fmt_unit(v, units.get(c))
                self.cv.text(x + 12 + i * cw, ry, str(v), size=8.5)
            self.cv.line(x + 8, ry + 17, x + w - 8, ry + 17, THEME["border"])

    @staticmethod
    def _merge(panel: dict, frames: dict[str, list[dict]]) -> list[dict]:
        """Grafana's `merge` then `organize` transformations over instant table frames."""
        merged: dict[tuple, dict] = {}
        order: list[tuple] = []
        for ref, samples in frames.items():
            for smp in samples:
                labels = {k: v for k, v in smp["metric"].items() if k != "__name__"}
                key = labels.get("instance", "")
                rec = merged.setdefault(key, {})
                if key not in order:
                    order.append(key)
                rec.update(labels)
                rec[f"Value #{ref}"] = float(smp["value"][1])
        org = {}
        for t in panel.get("transformations", []):
            if t.get("id") == "organize":
                org = t.get("options", {})
        exclude = {k for k, v in org.get("excludeByName", {}).items() if v}
        rename = org.get("renameByName", {})
        fields: list[str] = []
        for key in order:
            for f in merged[key]:
                if f not in fields:
                    fields.append(f)
        label_fields = [f for f in fields if not f.startswith("Value #")]
        value_fields = sorted(f for f in fields if f.startswith("Value #"))
        out = []
        for key in order:
            rec = merged[key]
            row = {}
            for f in ["Time"] + label_fields + value_fields:
                if f in exclude:
                    continue
                row[rename.get(f, f)] = rec.get(f, "")
            out.append(row)
        return out

    def save(self, path: Path) -> None:
        self.cv.fig.savefig(path, dpi=self.cv.dpi, facecolor=THEME["bg"])
        self.cv.plt.close(self.cv.fig)


def render(
    dashboard: dict,
    prom: Prom,
    start: float,
    end: float,
    step: float,
    rate_interval: str,
    out: Path,
    width: int,
) -> list[str]:
    """Query every panel and draw the dashboard; returns problems found (no data, errors)."""
    problems = []
    grid = []
    t = start
    while t <= end + 1e-6:
        grid.append(round(t, 3))
        t += step
    r = Renderer(dashboard, width)
    r.header(start, end, [("Data source", "Prometheus"), ("Instance", "All")])
    for panel in dashboard["panels"]:
        ptype = panel.get("type")
        if ptype == "row":
            r.row(panel)
            continue
        title = panel.get("title", "")
        if ptype == "table":
            frames = {}
            for tgt in panel.get("targets", []):
                expr = substitute(tgt["expr"], rate_interval, step, end - start)
                res = prom.query(expr, end)
                if res.get("status") != "success":
                    problems.append(f"{title} [{tgt.get('refId')}]: error {res.get('error')}")
                    continue
                frames[tgt.get("refId", "A")] = res["data"]["result"]
                if not res["data"]["result"]:
                    problems.append(f"{title} [{tgt.get('refId')}]: no data ({expr})")
            r.table(panel, frames)
            continue
        series: list[Series] = []
        for tgt in panel.get("targets", []):
            expr = substitute(tgt["expr"], rate_interval, step, end - start)
            res = prom.query_range(expr, start, end, step)
            if res.get("status") != "success":
                problems.append(f"{title} [{tgt.get('refId')}]: error {res.get('error')}")
                continue
            got = to_series(res, tgt.get("legendFormat", ""), grid)
            if not any(s.finite() for s in got):
                problems.append(f"{title} [{tgt.get('refId')}]: no data ({expr})")
            series += got
        if ptype == "stat":
            r.stat(panel, series, start, end)
        elif ptype == "timeseries":
            r.timeseries(panel, series, start, end)
        else:
            x, y, w, h = r.frame(panel)
            r.message(x, y, w, h, f"panel type {ptype} not rendered")
            problems.append(f"{title}: panel type {ptype} not rendered")
    r.footer()
    r.save(out)
    return problems


def shrink_png(path: Path, limit: int) -> None:
    """Store as optimized RGB; quantize to a 256-colour palette if still over `limit` bytes."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.save(path, optimize=True)
    if path.stat().st_size > limit:
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="workload seconds (120)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    ap.add_argument(
        "--dashboard", type=Path, default=REPO / "deploy" / "grafana" / "dashboard.json"
    )
    ap.add_argument("--rate-interval", default="10s", help="value of $__rate_interval (10s)")
    ap.add_argument("--step", type=float, default=2.0, help="query_range step in s (2)")
    ap.add_argument("--width", type=int, default=1600, help="image width in px (1600)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if not shutil.which(args.prometheus):
        ap.error("prometheus not found (Debian/Ubuntu: apt-get install prometheus)")
    dashboard = json.loads(args.dashboard.read_text())

    # everything below is bounded: a watchdog ends the run if something hangs
    signal.signal(
        signal.SIGALRM,
        lambda *_: (_ for _ in ()).throw(TimeoutError("dashboard_snapshot watchdog")),
    )
    signal.alarm(int(args.duration) + 300)

    import psycopg

    from proxy.embedded import EmbeddedPostgres

    tmp = Path(tempfile.mkdtemp(prefix="optimist-snapshot-"))
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        with ExitStack() as stack:
            pg = EmbeddedPostgres(tmp / "pg", fast=True, die_with_parent=True).start()
            stack.callback(pg.stop)
            say(f"postgres on {pg.port}")
            with psycopg.connect(pg.dsn, autocommit=True) as c:
                c.execute((REPO / "rules" / "example-schema.sql").read_text())
                c.execute(
                    SEED_SQL.format(
                        customers=N_CUSTOMERS,
                        accounts=N_ACCOUNTS,
                        reports=N_REPORTS,
                        products=N_PRODUCTS,
                    )
                )
            rules_dir = tmp / "rules"
            rules_dir.mkdir()
            rules_file = rules_dir / "example.yaml"
            shutil.copy(REPO / "rules" / "example.yaml", rules_file)

            listen, mport = free_port(), port_or_free(9187)
            proxy = Child(
                "optimist",
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{listen}",
                    "--upstream",
                    f"127.0.0.1:{pg.port}",
                    "--rules",
                    str(rules_dir),
                    "--metrics",
                    f"127.0.0.1:{mport}",
                ],
                tmp / "optimist.log",
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            stack.callback(proxy.stop)
            wait_until(
                lambda: http_get(f"http://127.0.0.1:{mport}/readyz", 2)[0] == 200,
                30,
                "optimist /readyz",
                proxy.proc,
                proxy.log,
            )
            say(f"optimist on {listen}, metrics on {mport}")

            pport = free_port()
            (tmp / "prometheus.yml").write_text(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                "  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: optimist\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{mport}']\n"
            )
            prom_proc = Child(
                "prometheus",
                [
                    args.prometheus,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{pport}",
                    "--storage.tsdb.retention.time=1d",
                    "--log.level=warn",
                ],
                tmp / "prometheus.log",
                cwd=tmp,
            )
            stack.callback(prom_proc.stop)
            prom = Prom(f"http://127.0.0.1:{pport}")
            wait_until(
                lambda: http_get(prom.base + "/-/ready", 2)[0] == 200,
                60,
                "prometheus ready",
                prom_proc.proc,
                prom_proc.log,
            )

            def scraped() -> bool:
                res = prom.query('up{job="optimist"}', time.time())
                return any(s["value"][1] == "1" for s in res.get("data", {}).get("result", []))

            wait_until(scraped, 30, "the first scrape", prom_proc.proc, prom_proc.log)
            say(f"prometheus on {pport}, scraping every 1 s")

            dsn = f"postgresql://postgres@127.0.0.1:{listen}/postgres"
            wl = Workload(dsn, args.duration, rules_file, args.seed, log=say)
            start = time.time()
            say(f"workload: {args.duration:.0f} s")

            async def drive():
                tasks = await wl.run()
                # connections stay open until Prometheus has scraped the end of the run
                end = wl.end_wall
                await asyncio.sleep(2.5)
                await wl.finish(tasks)
                return end

            end = asyncio.run(drive())

            # the window: from a little before the first request to the last moment of load
            t0 = math.floor((start - 4) / args.step) * args.step
            t1 = math.floor(end / args.step) * args.step
            problems = render(
                dashboard, prom, t0, t1, args.step, args.rate_interval, args.out, args.width
            )
            shrink_png(args.out, 950_000)

            # what the proxy itself counted, for the report
            _, body = http_get(f"http://127.0.0.1:{mport}/metrics")
            totals: dict[str, float] = defaultdict(float)
            for line in body.decode().splitlines():
                m = re.match(
                    r"(optimist_(?:conflicts|audit_conflicts|checked_writes|"
                    r"unverified_writes|unapplied_writes|rule_reloads|"
                    r"snapshot_evictions|client_connections_opened)_total)"
                    r"(\{[^}]*\})?\s+(\S+)$",
                    line,
                )
                if m:
                    totals[m.group(1) + (m.group(2) or "")] += float(m.group(3))
            reloads = [
                ln
                for ln in proxy.log.read_text().splitlines()
                if "rules" in ln and ("reload" in ln or "refused" in ln)
            ]
        say("\n== workload (client side)")
        for k, v in sorted(wl.stats.c.items()):
            say(f"  {k:45s} {v}")
        say("\n== proxy metrics at the end")
        for k, v in sorted(totals.items()):
            say(f"  {k:100s} {v:g}")
        say("\n== rule reload log lines")
        for ln in reloads:
            say("  " + ln[:220])
        say("\n== panels with no data or errors")
        for p in problems or ["(none)"]:
            say("  " + p)
        say(f"\nwrote {args.out} ({args.out.stat().st_size} bytes)")
        return 0
    finally:
        signal.alarm(0)
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
