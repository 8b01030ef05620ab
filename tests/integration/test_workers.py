"""--workers N: several processes serve one port; one endpoint aggregates their metrics;
cancel requests reach the right session whichever worker receives them."""

from __future__ import annotations

import threading
import time

import psutil
import psycopg
import pytest

from tests.support.locking import VERSION_RULES, write_rules
from tests.support.pgutil import wait_until
from tests.support.promtext import sample_sum as sample
from tests.support.promtext import scrape


def test_two_workers_share_the_port_and_the_metrics(proxy_factory, tmp_path):
    proxy = proxy_factory(
        "--workers", "2", rules=write_rules(tmp_path, VERSION_RULES), metrics=True
    )
    supervisor = psutil.Process(proxy.proc.pid)
    workers = wait_until(
        lambda: len(supervisor.children()) == 2 and supervisor.children(),
        timeout=10,
        what="two worker processes",
    )

    def listening(worker) -> bool:
        return any(
            k.status == psutil.CONN_LISTEN and k.laddr.port == proxy.port
            for k in worker.net_connections(kind="tcp")
        )

    # a worker started late (a loaded machine) would get no connection: wait for both
    wait_until(lambda: all(listening(w) for w in workers), timeout=15, what="both listening")
    conns = [psycopg.connect(proxy.dsn, autocommit=True) for _ in range(16)]
    try:
        for c in conns:
            assert c.execute("SELECT 1").fetchone() == (1,)

        def served(worker) -> int:
            return sum(
                1
                for k in worker.net_connections(kind="tcp")
                if k.status == psutil.CONN_ESTABLISHED and k.laddr.port == proxy.port
            )

        counts = [served(w) for w in workers]
        assert sum(counts) == 16
        assert all(n > 0 for n in counts), f"connections per worker: {counts}"
        text = scrape(proxy.metrics_url)
        assert sample(text, "optimist_client_connections") == 16
        assert sample(text, "optimist_client_connections_opened_total") >= 16
        # each worker loaded the rules once
        assert sample(text, "optimist_rule_reloads_total", result="success") == 2
    finally:
        for c in conns:
            c.close()


def test_cancel_reaches_its_session_across_workers(proxy_factory):
    proxy = proxy_factory("--workers", "2")
    # several sessions each cancelled from a new connection, which the kernel may hand to
    # either worker: every cancel must land
    for _ in range(6):
        with psycopg.connect(proxy.dsn, autocommit=True) as c:
            timer = threading.Timer(0.3, c.cancel)
            timer.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                c.execute("SELECT pg_sleep(10)")
            assert time.monotonic() - started < 5
            assert c.execute("SELECT 1").fetchone() == (1,)
