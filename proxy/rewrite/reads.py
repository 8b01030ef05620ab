"""Which row a SELECT reads when its result does not carry the key.

`SELECT balance FROM accounts WHERE id = 1` returns protected columns without the key, so the
rows alone cannot say which row they are. The statement can, when it reads exactly one
relation and its WHERE pins the whole key by equality to a literal or a parameter: then every
row it returns is that one row. Cold path: the analysis is cached by statement template.

Conservative by design: anything that could return rows of other origins or several rows per
key pin (joins, several FROM items, GROUP BY, DISTINCT, WITH, UNION, IN lists, OR) is refused,
and the caller still captures only a result of exactly one row.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp
from sqlglot.tokens import TokenType

from proxy.rewrite.pins import Pin, matches, pin_of, target_of, where_conjuncts
from proxy.rewrite.planner import KeyRef, _key_ref, _parse

__all__ = ["ReadSource", "plan_read_pin"]

# the clauses a pinned single-relation SELECT may have: none of them adds rows or origins
_ALLOWED_ARGS = frozenset({"expressions", "from_", "where", "order", "limit", "offset", "locks"})
# top-level tokens that end a SELECT's WHERE condition
_WHERE_END = frozenset(
    {
        TokenType.ORDER_BY,
        TokenType.LIMIT,
        TokenType.OFFSET,
        TokenType.FETCH,
        TokenType.FOR,
        TokenType.WINDOW,
    }
)


@dataclass(frozen=True, slots=True)
class ReadSource:
    """The relation a result's columns come from, as a SELECT names it (a protected table, or
    a simple view over one); `key` in the base table's key order, in the relation's names."""

    schema: str
    name: str
    key: tuple[str, ...]


def plan_read_pin(template_sql: str, source: ReadSource) -> tuple[KeyRef, ...] | None:
    """Where each key column's value comes from (literal slot or $n), in source.key order,
    when the SELECT reads only `source` and pins its whole key by equality; else None."""
    try:
        return _plan_read_pin(template_sql, source)
    except Exception:  # an analysis bug must cost one uncaptured read, never the session
        return None


def _plan_read_pin(template_sql: str, source: ReadSource) -> tuple[KeyRef, ...] | None:
    tree, text, _ = _parse(template_sql)
    if type(tree) is not exp.Select or text is None:
        return None
    if any(v for k, v in tree.args.items() if k not in _ALLOWED_ARGS):
        return None
    from_ = tree.args.get("from_")
    where = tree.args.get("where")
    if from_ is None or where is None or not isinstance(from_.this, exp.Table):
        return None
    target = target_of(from_.this)
    if target is None or not matches(target, source):  # type: ignore[arg-type]
        return None
    toks = text.toks
    n = len(toks)
    start = next((i for i, t in text.top(0, n, 0) if t.token_type == TokenType.WHERE), None)
    if start is None:
        return None
    end = next((i for i, t in text.top(start + 1, n, 0) if t.token_type in _WHERE_END), n)
    conjuncts = where_conjuncts(where.this, start + 1, end, text)
    if conjuncts is None:
        return None
    pins: dict[str, Pin] = {}
    for node, lo, hi in conjuncts:
        if not isinstance(node, exp.EQ):  # IN lists pin several rows: which one is which?
            continue
        pin = pin_of(node, lo, hi, text, target, source)  # type: ignore[arg-type]
        if pin is not None:
            pins.setdefault(pin.column, pin)
    if not all(k in pins for k in source.key):
        return None
    return tuple(_key_ref(k, pins[k].values[0]) for k in source.key)
