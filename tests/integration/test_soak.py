"""The soak (tests/soak/soak.py) with bounded defaults: 16 asyncpg clients for 60 s on 4 hot
rows through the proxy, random disconnects mid-transaction, one upstream restart, and the audit
of every write. OPTIMIST_SOAK_CLIENTS / OPTIMIST_SOAK_DURATION override the defaults."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest

from tests.soak import soak
from tests.support.promtext import sample_sum, scrape


@pytest.mark.timeout(300)
def test_soak_no_write_lost(pg_factory, proxy_factory, tmp_path):
    clients = int(os.environ.get("OPTIMIST_SOAK_CLIENTS", "16"))
    duration = float(os.environ.get("OPTIMIST_SOAK_DURATION", "60"))
    server = pg_factory()
    database = soak.prepare(server.dsn, hot=4)
    rules = tmp_path / "rules.yaml"
    rules.write_text(soak.RULES)
    p = proxy_factory(rules=rules, metrics=True, upstream=(server.host, server.port))
    report = asyncio.run(
        soak.run(server, p, clients=clients, duration=duration, hot=4, database=database)
    )
    print("\n" + "\n".join(report.lines()))
    assert p.alive, p.describe()
    assert report.restarts == 1 and report.disconnects > 0
    assert report.writes_lost == 0, "\n".join(report.lines())
    assert report.updates_lost == 0, "\n".join(report.lines())
    assert report.ok, "\n".join(report.lines())


@pytest.mark.parametrize("cache", [100, 0])
def test_asyncpg_reads_are_captured_whatever_the_statement_cache(
    pg_factory, proxy_factory, tmp_path, cache
):
    """Found by the soak. With statement_cache_size=0 (what pgbouncer's transaction mode
    needs) asyncpg sends Parse("")/Describe/Flush, then Parse("") again with Bind/Execute:
    the read must still be captured, so the next write is checked (not 'not_read')."""
    server = pg_factory()
    database = soak.prepare(server.dsn, hot=2)
    rules = tmp_path / "rules.yaml"
    rules.write_text(soak.RULES)
    p = proxy_factory(rules=rules, metrics=True, upstream=(server.host, server.port))

    async def lost_update():
        a = await asyncpg.connect(p.dsn_for(database), statement_cache_size=cache)
        b = await asyncpg.connect(p.dsn_for(database), statement_cache_size=cache)
        try:
            ra = await a.fetchrow("SELECT id, n, version FROM counters WHERE id = $1", 1)
            rb = await b.fetchrow("SELECT id, n, version FROM counters WHERE id = $1", 1)
            await a.execute("UPDATE counters SET n = $1 WHERE id = $2", ra["n"] + 1, 1)
            with pytest.raises(asyncpg.SerializationError):
                await b.execute("UPDATE counters SET n = $1 WHERE id = $2", rb["n"] + 1, 1)
        finally:
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(lost_update(), 30))
    text = scrape(p.metrics_url)
    assert sample_sum(text, "optimist_unverified_writes_total", table="public.counters") == 0
