"""Operations: metrics that move with the right labels, health probes, hot rule reloads."""

from __future__ import annotations

import re
import signal
import urllib.error
import urllib.request

import psycopg
import pytest

from tests.integration.test_locking_core import Locking
from tests.support.locking import VERSION_RULES, write_rules
from tests.support.pgutil import wait_until
from tests.support.promtext import sample_sum as sample
from tests.support.promtext import scrape


@pytest.fixture
def locking(pg, proxy_factory, tmp_path):
    return Locking(pg, proxy_factory, tmp_path)


def conflict(dsn, sql_read, sql_a, sql_b):
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        a.execute(sql_read).fetchall()
        b.execute(sql_read).fetchall()
        a.execute(sql_a)
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute(sql_b)


def test_metrics_count_conflicts_checked_and_unverified_writes(locking):
    locking.proxy = locking.factory(
        rules=write_rules(locking.tmp_path, VERSION_RULES), metrics=True
    )
    url = locking.proxy.metrics_url
    conflict(
        locking.dsn,
        "SELECT * FROM accounts WHERE id = 1",
        "UPDATE accounts SET balance = 1 WHERE id = 1",
        "UPDATE accounts SET balance = 2 WHERE id = 1",
    )
    with (
        psycopg.connect(locking.dsn, autocommit=True) as a,
        psycopg.connect(locking.dsn, autocommit=True) as b,
    ):
        b.execute("SELECT * FROM accounts WHERE id = 2").fetchall()
        a.execute("DELETE FROM accounts WHERE id = 2")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE accounts SET balance = 0 WHERE id = 2")
        a.execute("UPDATE accounts SET balance = balance + 1 WHERE balance > 0")  # no key pin
        a.execute("UPDATE counters SET n = 1 WHERE id = 1")  # never read
        a.execute(
            "WITH w AS (UPDATE accounts SET owner = 'w' WHERE owner = 'x' RETURNING id) "
            "SELECT * FROM w"
        )  # a bulk write inside a WITH: relayed (its version bumped), counted
        # what open sessions read is held (and released when they close); sampled each second
        wait_until(
            lambda: sample(scrape(url), "optimist_snapshot_entries") >= 1,
            timeout=5,
            what="snapshot entries while sessions are open",
        )
    wait_until(
        lambda: sample(scrape(url), "optimist_snapshot_entries") == 0,
        timeout=5,
        what="snapshot entries released",
    )
    text = scrape(url)
    t = "public.accounts"
    assert sample(text, "optimist_conflicts_total", table=t, kind="modified") == 1
    assert sample(text, "optimist_conflicts_total", table=t, kind="deleted") == 1
    assert sample(text, "optimist_checked_writes_total", table=t) >= 3
    assert sample(text, "optimist_unverified_writes_total", table=t, reason="no_key_pin") == 1
    assert (
        sample(text, "optimist_unverified_writes_total", table="public.counters", reason="not_read")
        == 1
    )
    assert sample(text, "optimist_unverified_writes_total", table=t, reason="with_clause") == 1
    assert sample(text, "optimist_client_connections_opened_total") >= 4
    assert sample(text, "optimist_bytes_total", direction="client_to_server") > 0
    assert sample(text, "optimist_query_duration_seconds_count") > 0
    assert sample(text, "optimist_rule_reloads_total", result="success") == 1
    assert sample(text, "optimist_statements_total", type="update") >= 5
    assert sample(text, "optimist_statements_total", type="select") == 3
    assert sample(text, "optimist_statements_total", type="with") == 1
    assert sample(text, "optimist_upstream_up") == 1
    # no key values or SQL in any label
    assert "UPDATE" not in text and "balance" not in text


def test_health_endpoints(locking):
    locking.proxy = locking.factory(
        rules=write_rules(locking.tmp_path, VERSION_RULES), metrics=True
    )
    base = locking.proxy.metrics_url.rsplit("/", 1)[0]
    assert scrape(base + "/healthz").strip() == "ok"
    assert scrape(base + "/readyz").strip() == "ready"


def test_readyz_fails_while_upstream_is_unreachable(proxy_factory, tmp_path):
    from proxy.embedded import free_port

    dead = proxy_factory(metrics=True, upstream=("127.0.0.1", free_port()))
    base = dead.metrics_url.rsplit("/", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(base + "/readyz")
    assert err.value.code == 503
    assert scrape(base + "/healthz").strip() == "ok"


def test_hot_reload_applies_to_next_statement_and_keeps_sessions(locking):
    rules = write_rules(locking.tmp_path, VERSION_RULES)
    locking.proxy = locking.factory(rules=rules, metrics=True)
    url = locking.proxy.metrics_url
    with (
        psycopg.connect(locking.dsn, autocommit=True) as a,
        psycopg.connect(locking.dsn, autocommit=True) as b,
    ):
        # before: customers is unprotected, a lost update goes through
        a.execute("SELECT * FROM customers WHERE id = 1").fetchall()
        b.execute("SELECT * FROM customers WHERE id = 1").fetchall()
        a.execute("UPDATE customers SET credit_limit = 1 WHERE id = 1")
        b.execute("UPDATE customers SET credit_limit = 2 WHERE id = 1")
        # the DBA adds a rule; the proxy notices the file change
        rules.write_text(
            VERSION_RULES
            + """
  - table: customers
    strategy: columns
    check: changed
"""
        )
        wait_until(
            lambda: sample(scrape(url), "optimist_rule_reloads_total", result="success") == 2,
            timeout=10,
            what="the reload",
        )
        # same sessions, next statements: now protected
        a.execute("SELECT * FROM customers WHERE id = 1").fetchall()
        b.execute("SELECT * FROM customers WHERE id = 1").fetchall()
        a.execute("UPDATE customers SET credit_limit = 3 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE customers SET credit_limit = 4 WHERE id = 1")
        # a broken edit is refused, counted, and the rules in force stay
        version_before = re.search(
            r'optimist_rules_version_info\{version="(\w+)"', scrape(url)
        ).group(1)
        rules.write_text("version: 1\ntables:\n  - table: customers\n    strategy: sideways\n")
        wait_until(
            lambda: sample(scrape(url), "optimist_rule_reloads_total", result="failure") == 1,
            timeout=10,
            what="the failed reload",
        )
        assert f'version="{version_before}"' in scrape(url)
        a.execute("SELECT * FROM customers WHERE id = 1").fetchall()
        b.execute("SELECT * FROM customers WHERE id = 1").fetchall()
        a.execute("UPDATE customers SET credit_limit = 5 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE customers SET credit_limit = 6 WHERE id = 1")
    assert "strategy" in locking.proxy.stderr_text() and "refused" in locking.proxy.stderr_text()


def test_sighup_reloads(locking):
    rules = write_rules(locking.tmp_path, VERSION_RULES)
    locking.proxy = locking.factory(rules=rules, metrics=True)
    url = locking.proxy.metrics_url
    locking.proxy.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: sample(scrape(url), "optimist_rule_reloads_total", result="success") == 2,
        timeout=10,
        what="the SIGHUP reload",
    )


def test_conflicts_are_logged_as_one_json_line_each(locking):
    import json as _json

    locking.proxy = locking.factory(
        "--log-format", "json", rules=write_rules(locking.tmp_path, VERSION_RULES)
    )
    dsn = locking.proxy.dsn_for(locking.db, application_name="billing")
    conflict(
        dsn,
        "SELECT * FROM accounts WHERE id = 1",
        "UPDATE accounts SET balance = 1 WHERE id = 1",
        "UPDATE accounts SET balance = 2 WHERE id = 1",
    )
    lines = [_json.loads(line) for line in locking.proxy.stderr_text().splitlines() if line.strip()]
    hits = [e for e in lines if e.get("logger") == "optimist.conflicts"]
    assert len(hits) == 1, lines
    entry = hits[0]
    assert entry["table"] == "public.accounts" and entry["kind"] == "modified"
    assert entry["key"] == {"id": 1} and entry["user"] == "postgres"
    assert entry["application_name"] == "billing"
    assert entry["client"].startswith("127.0.0.1:")
    assert entry["columns"] == ["version"]
    # values never reach the log
    assert "balance" not in _json.dumps(entry)


def test_unverified_prepared_writes_count_at_each_execution(locking):
    import asyncio

    import asyncpg

    locking.proxy = locking.factory(
        rules=write_rules(locking.tmp_path, VERSION_RULES), metrics=True
    )

    async def scenario():
        c = await asyncpg.connect(locking.dsn)
        try:
            stmt = await c.prepare("UPDATE accounts SET balance = balance + $1 WHERE balance > 0")
            for _ in range(4):
                await stmt.fetch(1)
        finally:
            await c.close()

    asyncio.run(scenario())
    wait_until(
        lambda: (
            sample(
                scrape(locking.proxy.metrics_url),
                "optimist_unverified_writes_total",
                table="public.accounts",
                reason="no_key_pin",
            )
            == 4
        ),
        timeout=5,
        what="four counted executions",
    )
