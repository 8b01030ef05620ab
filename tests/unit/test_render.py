"""proxy.rewrite.render (filling compiled pieces) and proxy.rewrite.cache (the plan LRU)."""

from __future__ import annotations

import time

import pytest

from proxy.rewrite.cache import RewriteCache
from proxy.rewrite.lexer import normalize, write_target
from proxy.rewrite.planner import plan_write
from proxy.rewrite.render import (
    Lit,
    Read,
    RenderedSql,
    compile_pieces,
    fill_extended,
    fill_simple,
    jsonb_object,
)
from proxy.rules.protected import ProtectedTable

# ------------------------------------------------------------------------ render


def test_compile_merges_adjacent_strings():
    assert compile_pieces(["a", "b", Lit(0), "c", Read(0, "v", "int"), "d", "e"]) == (
        "ab",
        Lit(0),
        "c",
        Read(0, "v", "int"),
        "de",
    )
    assert compile_pieces([]) == ()


def test_fill_simple_inlines_literals_and_quoted_reads():
    pieces = (
        "x = ",
        Lit(1),
        " AND v = ",
        Read(0, "v", "integer"),
        " AND w = ",
        Read(1, "w", "text"),
    )
    reads = [{"v": "3"}, {"w": None}]
    assert fill_simple(pieces, ["'a'", "42"], reads, True) == (
        "x = 42 AND v = CAST('3' AS integer) AND w = CAST(NULL AS text)"
    )
    assert fill_simple(("v = ", Read(0, "v", "text")), [], [{"v": "a\\'"}], False) == (
        "v = CAST(E'a\\\\''' AS text)"
    )


def test_fill_extended_numbers_each_read_once():
    pieces = (
        Read(0, "v", "integer"),
        " ",
        Read(1, "v", "integer"),
        " ",
        Read(0, "v", "integer"),
        " ",
        Lit(0),
    )
    assert fill_extended(pieces, ["7"], 3) == RenderedSql(
        "CAST($3 AS integer) CAST($4 AS integer) CAST($3 AS integer) 7",
        ((0, "v", "value"), (1, "v", "value")),
    )


def test_fill_extended_needs_the_literals_of_a_normalized_template():
    with pytest.raises(ValueError):
        fill_extended(("a = ", Lit(0)), [], 1)


def test_jsonb_object_stays_under_the_argument_limit():
    pairs = [(f"c{i}", [f"v{i}"]) for i in range(95)]
    sql = "".join(jsonb_object(pairs))
    calls = sql.split(" || ")
    assert len(calls) == 3
    for call in calls:
        assert call.startswith("jsonb_build_object(")
        assert call.count(", ") + 1 <= 100  # arguments per call
    assert "'c94', v94" in sql
    assert jsonb_object([]) == ["'{}'::jsonb"]


# ------------------------------------------------------------------------ cache


def test_cache_counts_and_evicts_least_recently_used():
    cache = RewriteCache(2)
    made = []

    def factory(value):
        def make():
            made.append(value)
            return value

        return make

    assert cache.get("a", factory(1)) == 1
    assert cache.get("b", factory(2)) == 2
    assert cache.get("a", factory(99)) == 1  # hit, and 'a' is now the most recent
    assert cache.get("c", factory(3)) == 3  # evicts 'b'
    assert "b" not in cache and "a" in cache and len(cache) == 2
    assert cache.get("b", factory(4)) == 4
    assert made == [1, 2, 3, 4]
    assert (cache.hits, cache.misses) == (1, 4)
    assert "a" not in cache  # re-adding b evicted a, then the least recent
    assert cache.peek("b", None) == 4 and cache.hits == 1  # peek does not count
    cache.clear()
    assert len(cache) == 0


def test_cache_refuses_zero_size():
    with pytest.raises(ValueError):
        RewriteCache(0)


ACCOUNTS = ProtectedTable(
    schema="public",
    name="accounts",
    oid=1,
    columns=("id", "owner", "balance", "version"),
    column_types={
        "id": "integer",
        "owner": "text",
        "balance": "numeric(10,2)",
        "version": "integer",
    },
    column_type_oids={"id": 23, "owner": 25, "balance": 1700, "version": 23},
    key=("id",),
    strategy="version",
    version_column="version",
)


def test_statements_differing_in_literals_share_a_plan():
    cache = RewriteCache(10)
    out = []
    for sql, version in (
        ("UPDATE accounts SET balance = 1 WHERE id = 5", "1"),
        ("UPDATE accounts SET balance = 2 WHERE id = 7", "2"),
    ):
        template, literals = normalize(sql)
        plan = cache.get(
            ("v1", template, 0), lambda template=template: plan_write(template, ACCOUNTS, 0)
        )
        out.append(plan.render_simple(literals, [{"version": version}], True))
    assert (cache.hits, cache.misses) == (1, 1)
    assert "SET balance = 1" in out[0] and "id = 5" in out[0] and "'1' AS integer" in out[0]
    assert "SET balance = 2" in out[1] and "id = 7" in out[1] and "'2' AS integer" in out[1]


def _per_call_us(f, n=20000) -> float:
    f()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def test_hot_path_costs_are_printed():
    cache = RewriteCache(10)
    sql = "UPDATE accounts SET balance = 5, owner = 'bob' WHERE id = 42"
    template, literals = normalize(sql)
    reads = [{"version": "7"}]

    def cached_render():
        plan = cache.get(
            ("v1", template, 0), lambda template=template: plan_write(template, ACCOUNTS, 0)
        )
        return plan.render_simple(literals, reads, True)

    def full():
        t, lits = normalize(sql)
        plan = cache.get(("v1", t, 0), lambda: plan_write(t, ACCOUNTS, 0))
        return plan.render_simple(lits, reads, True)

    select = "SELECT id, owner, balance FROM accounts WHERE id = 42"
    print(f"\ncached lookup + render_simple: {_per_call_us(cached_render):.2f} us (target < 20)")
    print(f"normalize + lookup + render:   {_per_call_us(full):.2f} us")
    print(
        f"write_target(non-write):       {_per_call_us(lambda: write_target(select)):.2f} us"
        " (target < 2)"
    )
    print(
        f"plan_write (cold):             "
        f"{_per_call_us(lambda: plan_write(template, ACCOUNTS, 0), 200):.0f} us"
    )
