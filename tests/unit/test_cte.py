"""proxy.rewrite.cte: which write of a WITH statement is checked, what the others count, and
that the guard goes inside the CTE without touching its columns. What the SQL does is proven
against PostgreSQL in tests/integration/test_checked_cte.py."""

from __future__ import annotations

from proxy.rewrite.cte import plan_with
from proxy.rewrite.lexer import normalize
from tests.unit.test_planner import VERSIONED, table

OTHER = table(name="other", oid=2)


def _tables(schema, name):
    return {"accounts": VERSIONED, "other": OTHER}.get(name)


def _plan(sql: str):
    template, literals = normalize(sql)
    return plan_with(template, _tables), literals


def _sql(sql: str, reads=None) -> str:
    planned, literals = _plan(sql)
    plan = planned.plan
    if reads is None:
        reads = [{c: "7" for c in plan.checked_columns} for _ in plan.pinned_rows]
    return plan.render_simple(literals, reads)


def test_a_pinned_cte_update_is_guarded_in_place_and_forgets():
    sql = "WITH u AS (UPDATE accounts SET owner = 'x' WHERE id = 1 RETURNING id, owner) SELECT * FROM u"
    planned, _ = _plan(sql)
    assert planned.table is VERSIONED and planned.unverified == ()
    plan = planned.plan
    assert plan.forget_pinned and plan.unpinned is None and len(plan.pinned_rows) == 1
    assert plan.returned_columns(True) == ()  # nothing added to the CTE's RETURNING
    out = _sql(sql)
    head, guarded = out.split(" WHERE id = 1", 1)
    assert head == "WITH u AS (UPDATE accounts SET owner = 'x', version = accounts.version + 1"
    assert "optimist_modified" in guarded and "optimist_present" in guarded
    assert guarded.endswith(") RETURNING id, owner) SELECT * FROM u")
    # a row not read: the client's statement, only the bump added
    assert _sql(sql, [None]) == sql.replace("'x'", "'x', version = accounts.version + 1")


def test_the_main_statement_and_parameters():
    planned, literals = _plan(
        "WITH s AS (SELECT $2::int AS k) UPDATE accounts SET owner = 'm' FROM s WHERE id = $1"
    )
    assert planned.plan.pinned_rows[0][0].param == 1
    rendered = planned.plan.render_extended(literals, 0)
    assert "CAST($3 AS integer)" in rendered.sql  # the read values follow every client $n


def test_one_write_checked_the_others_with_clause_and_bumped():
    planned, _ = _plan(
        "WITH a AS (UPDATE other SET owner = 'x' WHERE owner = 'y'), "
        "b AS (DELETE FROM accounts WHERE id = 2), "
        "c AS (UPDATE other SET note = 'n' WHERE id = 3) SELECT 1"
    )
    assert planned.table is VERSIONED  # other is written twice: neither can be checked
    assert planned.unverified == (OTHER, OTHER)
    out = _sql(
        "WITH a AS (UPDATE other SET owner = 'x' WHERE owner = 'y'), "
        "b AS (DELETE FROM accounts WHERE id = 2), "
        "c AS (UPDATE other SET note = 'n' WHERE id = 3) SELECT 1"
    )
    assert "SET owner = 'x', version = other.version + 1 WHERE owner = 'y')" in out
    assert "SET note = 'n', version = other.version + 1 WHERE id = 3)" in out
    assert "DELETE FROM accounts WHERE id = 2 AND" in out


def test_nothing_checkable_still_bumps_counted_with_clause():
    sql = (
        "WITH i AS (INSERT INTO accounts VALUES (1, 'a', 0, '', 1) ON CONFLICT (id) "
        "DO UPDATE SET owner = 'q' RETURNING id) SELECT * FROM i"
    )
    planned, _ = _plan(sql)
    assert planned.table is VERSIONED and planned.plan.unpinned == "with_clause"
    assert "DO UPDATE SET owner = 'q', version = accounts.version + 1 RETURNING id)" in _sql(
        sql, []
    )
    planned, _ = _plan("WITH d AS (DELETE FROM accounts WHERE owner = 'x') SELECT 1")
    assert planned.table is None and planned.plan is None  # a bulk DELETE: nothing to add
    assert planned.unverified == (VERSIONED,)


def test_not_read_here():
    assert _plan("UPDATE accounts SET owner = 'x' WHERE id = 1")[0] is None  # not a WITH
    assert _plan("WITH s AS (SELECT 1) SELECT * FROM s")[0].plan is None  # writes nothing
    recursive = (
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) "
        "SEARCH DEPTH FIRST BY n SET o UPDATE accounts SET owner = 'x' WHERE id = 1"
    )
    assert _plan(recursive)[0] is None  # SEARCH clause: the caller counts it with_clause
