"""Tables created, re-created or altered while the proxy runs are protected from the next
statement on, in open and new sessions, without a restart (migrations run while proxies run)."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.integration.test_locking_core import Locking
from tests.support.pgutil import connect
from tests.support.promtext import sample_sum as sample
from tests.support.promtext import scrape

LATE_RULES = """
version: 1
tables:
  - table: late
    strategy: version
    version_column: version
"""

CREATE_LATE = """
CREATE TABLE late (id int PRIMARY KEY, note text, version int NOT NULL DEFAULT 1);
INSERT INTO late VALUES (1, 'first', 1), (2, 'second', 1);
"""


@pytest.fixture
def locking(pg, proxy_factory, tmp_path):
    return Locking(pg, proxy_factory, tmp_path)


def start(locking, interval: float | None = None):
    from tests.support.locking import write_rules

    env = {} if interval is None else {"OPTIMIST_CATALOG_CHECK_INTERVAL": str(interval)}
    locking.proxy = locking.factory(
        rules=write_rules(locking.tmp_path, LATE_RULES), metrics=True, env=env
    )
    return locking.proxy.metrics_url


def lost_update(a, b, row: int = 1) -> None:
    """Both read the row, a writes it, then b writes it from what it read."""
    a.execute("SELECT * FROM late WHERE id = %s", (row,)).fetchall()
    b.execute("SELECT * FROM late WHERE id = %s", (row,)).fetchall()
    a.execute("UPDATE late SET note = 'a' WHERE id = %s", (row,))
    b.execute("UPDATE late SET note = 'b' WHERE id = %s", (row,))


def assert_protected(a, b, row: int = 1) -> None:
    with pytest.raises(psycopg.errors.SerializationFailure):
        lost_update(a, b, row)


def refreshes(url: str, reason: str) -> float:
    return sample(scrape(url), "optimist_catalog_refreshes_total", reason=reason)


def test_table_created_through_the_proxy_is_protected_in_open_and_new_sessions(locking):
    url = start(locking)
    with connect(locking.dsn) as a, connect(locking.dsn) as b, connect(locking.dsn) as ddl:
        a.execute("SELECT 1")
        b.execute("SELECT 1")
        ddl.execute(CREATE_LATE)
        # the sessions opened before the DDL (none dropped), then new ones
        assert_protected(a, b, 1)
        a.execute("SELECT 1")
        b.execute("SELECT 1")
    with connect(locking.dsn) as a, connect(locking.dsn) as b:
        assert_protected(a, b, 2)
    assert refreshes(url, "ddl") >= 1
    # the race is real: straight to PostgreSQL, b's write silently overwrites a's
    with connect(locking.direct) as a, connect(locking.direct) as b:
        lost_update(a, b, 1)
    assert locking.direct_rows("SELECT note FROM late WHERE id = 1") == [("b",)]


def test_table_dropped_and_created_again_is_protected_under_its_new_oid(locking):
    with connect(locking.direct) as c:
        c.execute(CREATE_LATE)
    start(locking)
    with connect(locking.dsn) as a, connect(locking.dsn) as b, connect(locking.dsn) as ddl:
        assert_protected(a, b, 1)
        old = ddl.execute("SELECT 'late'::regclass::oid").fetchone()
        ddl.execute("DROP TABLE late")
        ddl.execute("CREATE TABLE filler (id int)")  # the new table gets another oid
        ddl.execute(CREATE_LATE)
        assert ddl.execute("SELECT 'late'::regclass::oid").fetchone() != old
        assert_protected(a, b, 1)
    with connect(locking.dsn) as a, connect(locking.dsn) as b:
        assert_protected(a, b, 2)


def test_version_column_added_later_protects_the_table(locking):
    with connect(locking.direct) as c:
        c.execute("CREATE TABLE late (id int PRIMARY KEY, note text)")
        c.execute("INSERT INTO late VALUES (1, 'first'), (2, 'second')")
    start(locking)
    with connect(locking.dsn) as a, connect(locking.dsn) as b:
        lost_update(a, b, 1)  # no version column yet: the rule cannot apply
        a.execute("ALTER TABLE late ADD COLUMN version int NOT NULL DEFAULT 1")
        assert_protected(a, b, 1)


def test_ddl_run_directly_against_postgresql_is_picked_up_by_the_periodic_check(locking):
    url = start(locking, interval=0.5)
    with connect(locking.dsn) as a, connect(locking.dsn) as b:
        a.execute("SELECT 1")
        b.execute("SELECT 1")
        with connect(locking.direct) as c:  # another proxy, a migration tool, psql
            c.execute(CREATE_LATE)
        time.sleep(1.0)
        assert_protected(a, b, 1)
        with connect(locking.direct) as c:
            c.execute("DROP TABLE late")
            c.execute("CREATE TABLE filler (id int)")
            c.execute(CREATE_LATE)
        time.sleep(1.0)
        assert_protected(a, b, 2)
    assert refreshes(url, "check") >= 2


def test_ddl_rolled_back_leaves_the_protection_as_it_was(locking):
    with connect(locking.direct) as c:
        c.execute(CREATE_LATE)
    url = start(locking)
    with connect(locking.dsn) as a, connect(locking.dsn) as b, connect(locking.dsn) as ddl:
        with ddl.transaction():
            ddl.execute("ALTER TABLE late DROP COLUMN version")
            # its own transaction sees the table without the version column: nothing breaks
            ddl.execute("SELECT * FROM late WHERE id = 2").fetchall()
            ddl.execute("UPDATE late SET note = 'x' WHERE id = 2")
            raise psycopg.Rollback()
        assert_protected(a, b, 1)
        with ddl.transaction():
            ddl.execute("DROP TABLE late")
            raise psycopg.Rollback()
        assert_protected(a, b, 2)
    assert refreshes(url, "ddl") >= 1


def test_sessions_in_a_transaction_relearn_without_breaking_it(locking):
    start(locking)
    with connect(locking.dsn) as a, connect(locking.dsn) as b, connect(locking.dsn) as ddl:
        b.execute("BEGIN")
        b.execute("SELECT 1")
        ddl.execute(CREATE_LATE)
        a.execute("SELECT * FROM late WHERE id = 1").fetchall()
        b.execute("SELECT * FROM late WHERE id = 1").fetchall()
        a.execute("UPDATE late SET note = 'a' WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("UPDATE late SET note = 'b' WHERE id = 1")
        b.execute("ROLLBACK")
        # an aborted transaction learns once it has ended
        b.execute("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            b.execute("SELECT 1/0")
        ddl.execute("DROP TABLE late")
        ddl.execute("CREATE TABLE filler (id int)")
        ddl.execute(CREATE_LATE)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            b.execute("SELECT * FROM late")
        b.execute("ROLLBACK")
        assert_protected(a, b, 2)


def test_a_transaction_sees_its_own_ddl_protected(locking):
    start(locking)
    with connect(locking.dsn) as a, connect(locking.dsn) as b:
        a.execute("BEGIN")
        a.execute(CREATE_LATE)
        a.execute("COMMIT")
        b.execute("BEGIN")
        b.execute("SELECT * FROM late WHERE id = 1").fetchall()
        # a's transaction creates a table and is itself protected on it
        a.execute("BEGIN")
        a.execute("CREATE TABLE later (id int)")
        a.execute("SELECT * FROM late WHERE id = 1").fetchall()
        b.execute("UPDATE late SET note = 'b' WHERE id = 1")
        b.execute("COMMIT")
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("UPDATE late SET note = 'a' WHERE id = 1")
        a.execute("ROLLBACK")


def test_create_table_as_is_seen_though_its_tag_says_select(locking):
    from tests.support.locking import write_rules

    rules = LATE_RULES + "    key: id\n"
    locking.proxy = locking.factory(rules=write_rules(locking.tmp_path, rules))
    with connect(locking.dsn) as a, connect(locking.dsn) as b:
        a.execute("SELECT 1")
        b.execute(
            "CREATE TABLE late AS SELECT g AS id, 'n'::text AS note, 1 AS version"
            " FROM generate_series(1, 2) g"
        )
        assert_protected(a, b, 1)
