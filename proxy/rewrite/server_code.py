"""Statements that run server-side code the proxy cannot see into: DO blocks, CALL, and
statements calling a function that is not one of PostgreSQL's own (pg_catalog).

Such code may write any table, so a write it makes can never be checked. The rule, precise
and documented in rules/README.md ("Which writes are checked"):

* `DO ...` and `CALL ...` always run server-side code;
* a SELECT / VALUES / WITH / INSERT / UPDATE / DELETE / MERGE / TABLE runs it when it calls a
  function schema-qualified with a schema other than pg_catalog (`public.f()`), or unqualified
  with a name that no pg_catalog function has (`transfer(1, 2)`).

So `SELECT now()`, `count(*)`, `coalesce(a, b)`, `x::numeric(10,2)` are never server code. A
function of another schema that shares a pg_catalog name (an overload of `lower`, say) is not
seen: PostgreSQL looks in pg_catalog first, so only a different argument type can pick it.

Cold path: callers cache the answer by statement template.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from proxy.rewrite import lexer
from proxy.sqlnames import fold_identifier, identifier_value

__all__ = ["may_run_server_code", "runs_server_code"]

# statements whose expressions may call functions (DDL, COPY, utility commands are not read)
_EXPRESSION_STATEMENTS = frozenset(
    {"SELECT", "VALUES", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "TABLE"}
)
_ALWAYS = frozenset({"DO", "CALL"})
_HEAD = re.compile(r"\s*(?:do|call)(?![\w$])", re.I)

# words followed by '(' that are SQL syntax, not a function call (keywords with special
# argument syntax, type names with a typmod that pg_catalog has no function for)
_SYNTAX = frozenset(
    """
    all and any array as between by case cast char character check coalesce collate conflict cube
    current_time current_timestamp dec decimal default distinct do else except exists extract
    fetch filter float for from greatest grouping groups having ilike in intersect into is
    join json json_array json_arrayagg json_exists json_object json_objectagg json_query
    json_scalar json_serialize json_table json_value key lateral least like limit localtime
    localtimestamp materialized merge_action national nchar not nullif nulls offset on only
    or order over overlay partition position precision primary range recursive references
    repeatable returning rollup row rows select set sets similar some substring table
    tablesample then treat trim union unique using values varying when where window with
    within xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi
    xmlroot xmlserialize xmltable
    """.split()
)
# a name after one of these (not a keyword) followed by '(' is a column list: `t AS x(a, b)`
_BEFORE_COLUMN_LIST = frozenset({"as", "into", "with", "recursive", "table", "only", "update"})


@lru_cache(maxsize=1)
def _builtins() -> frozenset[str]:
    text = resources.files("proxy.rewrite").joinpath("builtin_functions.txt").read_text()
    return frozenset(line for line in text.split() if line)


def may_run_server_code(stmt: str) -> bool:
    """The hot-path prefilter: False for most statements (no '(' and no DO/CALL head)."""
    return "(" in stmt or _HEAD.match(stmt) is not None


def runs_server_code(keyword: str, template: str, scs: bool = True) -> bool:
    """Whether a statement (its scan's keyword and template) runs code the proxy cannot
    see into. Errs towards True on what it cannot read."""
    if keyword in _ALWAYS:
        return True
    if keyword not in _EXPRESSION_STATEMENTS:
        return False
    toks = [(t.kind, template[t.start : t.end]) for t in lexer._tokens(template, 0, scs)]
    builtins = _builtins()
    for i, (kind, text) in enumerate(toks):
        if kind not in ("ident", "qident") or i + 1 >= len(toks) or toks[i + 1][1] != "(":
            continue
        name = _name(kind, text)
        if name is None:
            return True
        prev_kind, prev = toks[i - 1] if i else ("", "")
        if prev == ".":
            schema_kind, schema_text = toks[i - 2] if i >= 2 else ("", "")
            schema = _name(schema_kind, schema_text)
            if schema != "pg_catalog":
                return True
            continue
        if prev == "::" or prev == ")":
            continue  # a typmod (x::varchar(20)) or an alias's column list (f(x) AS g(i))
        if prev_kind == "ident" and (
            prev.lower() in _BEFORE_COLUMN_LIST or prev.lower() not in _SYNTAX
        ):
            continue  # `AS x(a)`, `INTO t(a)`, `FROM t x(a)`: a column list
        if kind == "ident" and name in _SYNTAX:
            continue
        if _cte_column_list(toks, i + 1):
            continue  # `WITH w(a) AS (...)`, `, w2(b) AS MATERIALIZED (...)`
        if name not in builtins:
            return True
    return False


def _name(kind: str, text: str) -> str | None:
    try:
        return fold_identifier(text) if kind == "ident" else identifier_value(text)
    except ValueError:
        return None


def _cte_column_list(toks: list[tuple[str, str]], open_at: int) -> bool:
    """The '(' at open_at closes before `AS (` / `AS [NOT] MATERIALIZED`: a CTE's columns."""
    depth = 0
    for j in range(open_at, len(toks)):
        text = toks[j][1]
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth == 0:
                after = [t.lower() for _, t in toks[j + 1 : j + 3]]
                return after[:1] == ["as"] and after[1:2] in (["("], ["materialized"], ["not"])
    return False
