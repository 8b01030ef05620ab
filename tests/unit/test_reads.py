"""Which SELECTs pin the one row they read (proxy.rewrite.reads), and simple views' column
mapping from their stored query (proxy.catalog_views)."""

from __future__ import annotations

import pytest

from proxy.catalog_views import simple_views
from proxy.rewrite.reads import ReadSource, plan_read_pin
from proxy.rewrite.scan import scan

ACCOUNTS = ReadSource("public", "accounts", ("id",))
PAIRS = ReadSource("public", "pairs", ("a", "b"))


def pin(sql, source=ACCOUNTS):
    refs = plan_read_pin(scan(sql).template, source)
    if refs is None:
        return None
    return [(r.column, r.param, r.literal_slot) for r in refs]


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELECT balance FROM accounts WHERE id = 1", [("id", None, 0)]),
        (
            "SELECT balance FROM public.accounts a WHERE a.id = $1 AND balance > 0",
            [("id", 1, None)],
        ),
        (
            "SELECT balance FROM accounts WHERE 7 = id ORDER BY 1 LIMIT 1 FOR UPDATE",
            [("id", None, 0)],
        ),
        ("SELECT balance FROM accounts WHERE (id = 1 OR id = 2) AND id = 3", [("id", None, 2)]),
    ],
)
def test_pinned_reads(sql, expected):
    assert pin(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT balance FROM accounts WHERE id = 1 OR id = 2",
        "SELECT balance FROM accounts WHERE id IN (1)",
        "SELECT balance FROM accounts WHERE id = 1 + 1",
        "SELECT balance FROM accounts WHERE id = other_id",
        "SELECT a.balance FROM accounts a JOIN x ON true WHERE a.id = 1",
        "SELECT a.balance FROM accounts a, x WHERE a.id = 1",
        "SELECT balance FROM other.accounts WHERE id = 1",
        "SELECT balance FROM accounts a WHERE b.id = 1",
        "SELECT DISTINCT balance FROM accounts WHERE id = 1",
        "SELECT balance FROM accounts WHERE id = 1 GROUP BY balance",
        "SELECT balance FROM accounts WHERE id = 1 UNION SELECT 1",
        "WITH w AS (SELECT 1) SELECT balance FROM accounts WHERE id = 1",
        "SELECT balance FROM accounts",
        "UPDATE accounts SET balance = 1 WHERE id = 1",
        "SELECT balance FROM accounts WHERE",
    ],
)
def test_reads_never_guessed(sql):
    assert pin(sql) is None


def test_composite_key_needs_every_column():
    assert pin("SELECT v FROM pairs WHERE a = 1 AND b = 'x'", PAIRS) == [
        ("a", None, 0),
        ("b", None, 1),
    ]
    assert pin("SELECT v FROM pairs WHERE a = 1", PAIRS) is None


def _target_entry(resno, name, table, column, varattno=None):
    return (
        f"{{TARGETENTRY :expr {{VAR :varno 1 :varattno {varattno or column} :vartype 23"
        f" :vartypmod -1 :varcollid 0 :varnullingrels (b) :varlevelsup 0 :varreturningtype 0"
        f" :varnosyn 1 :varattnosyn {column} :location -1}} :resno {resno} :resname {name}"
        f" :ressortgroupref 0 :resorigtbl {table} :resorigcol {column} :resjunk false}}"
    )


def _action(*entries, sublinks=False):
    return (
        f"({{QUERY :commandType 1 :hasSubLinks {'true' if sublinks else 'false'}"
        f" :cteList <> :rtable ({{RANGETBLENTRY :relid 100}}) :targetList ({' '.join(entries)})"
        f" :override 0}})"
    )


ATTNAMES = {100: {1: "id", 2: "owner", 3: "balance"}}


def test_view_columns_map_to_base_columns_by_origin():
    action = _action(_target_entry(1, "account_id", 100, 1), _target_entry(2, "amount", 100, 3))
    views = simple_views(
        [("200", "public", "v", '["account_id", "amount", "dbl"]', action)], ATTNAMES
    )
    view = views[200]
    assert view.base_oid == 100 and dict(view.columns) == {1: "id", 2: "balance"}
    assert dict(view.names) == {"id": "account_id", "balance": "amount"}


@pytest.mark.parametrize(
    "action",
    [
        _action(_target_entry(1, "id", 100, 1), sublinks=True),
        _action(_target_entry(1, "id", 100, 1), _target_entry(1, "id", 100, 1)),
        _action(_target_entry(1, "id", 100, 1), _target_entry(2, "id2", 100, 1)),
        _action(_target_entry(1, "id", 100, 1), _target_entry(2, "x", 300, 1)),
        _action(_target_entry(1, "id", 100, 9)),
        "garbage",
    ],
)
def test_views_read_conservatively(action):
    assert simple_views([("200", "public", "v", '["id", "x"]', action)], ATTNAMES) == {}


def test_rows_of_another_shape_map_no_view():
    """An answer that is not the views query's (a row of another width) maps nothing and
    raises nothing: the bootstrap must never crash a session on an unexpected reply."""
    good = ("200", "public", "v", '["id", "x"]', _action(_target_entry(1, "id", 100, 1)))
    assert simple_views([("1", "sue", "1.00", "7"), good[:4], (*good, "extra")], ATTNAMES) == {}
