"""Rules on tables whose names fold unusually: `Ärzte` created unquoted (PostgreSQL folds only
ASCII letters, so the capital Ä stays) and `"MixedCase"` created quoted. Through the real
proxy: the stale writer gets 40001, nothing of its write is applied, and the writes are
counted as checked (not unverified) in /metrics."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.support.locking import make_database, write_rules
from tests.support.pgutil import connect, wait_until
from tests.support.promtext import sample_sum, scrape

SCHEMA = """
CREATE TABLE Ärzte (id int PRIMARY KEY, name text, version int NOT NULL DEFAULT 1);
CREATE TABLE "MixedCase" (id int PRIMARY KEY, name text, version int NOT NULL DEFAULT 1);
INSERT INTO Ärzte VALUES (1, 'Dr. Ahn', 1);
INSERT INTO "MixedCase" VALUES (1, 'first', 1);
"""

# as a DBA writes them (rules/README.md, "Names"): unquoted folds like SQL, quotes keep case
RULES = """
version: 1
tables:
  - table: Ärzte
    strategy: version
    version_column: version
  - table: '"MixedCase"'
    strategy: version
    version_column: version
"""

CASES = {
    # catalog name, how the SQL names it
    "Ärzte": "Ärzte",
    "MixedCase": '"MixedCase"',
}


@pytest.fixture
def names_db(pg, proxy_factory, tmp_path):
    db = make_database(pg.dsn, SCHEMA)
    proxy = proxy_factory(rules=write_rules(tmp_path, RULES), metrics=True)
    direct = pg.dsn.rsplit("/", 1)[0] + "/" + db
    return proxy, proxy.dsn_for(db), direct


def _checked(url: str, table: str) -> float:
    return sample_sum(scrape(url), "optimist_checked_writes_total", table=table)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("catalog_name", list(CASES))
def test_stale_write_on_oddly_named_table_is_refused(names_db, catalog_name, protocol):
    proxy, dsn, direct = names_db
    sql_name = CASES[catalog_name]
    label = f"public.{catalog_name}"

    async def scenario():
        a = await asyncpg.connect(dsn)
        b = await asyncpg.connect(dsn)
        try:
            for conn in (a, b):
                rows = await conn.fetch(f"SELECT * FROM {sql_name} WHERE id = 1")
                assert rows[0]["version"] == 1
            if protocol == "simple":
                await a.execute(f"UPDATE {sql_name} SET name = 'from a' WHERE id = 1")
                with pytest.raises(asyncpg.SerializationError) as err:
                    await b.execute(f"UPDATE {sql_name} SET name = 'from b' WHERE id = 1")
            else:
                sql = f"UPDATE {sql_name} SET name = $1 WHERE id = $2"
                await a.execute(sql, "from a", 1)
                with pytest.raises(asyncpg.SerializationError) as err:
                    await b.execute(sql, "from b", 1)
            return err.value
        finally:
            await a.close()
            await b.close()

    exc = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert exc.sqlstate == "40001"
    assert label in str(exc)
    with connect(direct) as c:
        rows = c.execute(f"SELECT name, version FROM {sql_name} WHERE id = 1").fetchall()
    assert rows == [("from a", 2)]  # a's write, bumped once; nothing of b's
    assert wait_until(
        lambda: _checked(proxy.metrics_url, label) == 2,
        timeout=5,
        what=f"two checked writes on {label}",
    )
    text = scrape(proxy.metrics_url)
    assert sample_sum(text, "optimist_unverified_writes_total", table=label) == 0
    assert sample_sum(text, "optimist_conflicts_total", table=label, kind="modified") == 1
