"""What a write's text says about its rows: the target, the values (literal, parameter or
expression), the key pins in WHERE, the SET items, and which columns must be checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

from sqlglot import exp
from sqlglot.tokens import TokenType

from proxy.rewrite.clauses import Clauses
from proxy.rewrite.lexer import PLACEHOLDER_BASE
from proxy.rewrite.tokens import SqlText
from proxy.rules.protected import ProtectedTable
from proxy.sqlnames import fold_identifier

__all__ = [
    "Pin",
    "SetItem",
    "Target",
    "Value",
    "classify_value",
    "column_checks",
    "where_conjuncts",
    "fold_ident",
    "matches",
    "pin_of",
    "set_items",
    "strip_parens",
    "target_of",
]


# ============================================================================ values


@dataclass(frozen=True)
class Value:
    kind: str  # 'literal' | 'param' | 'null' | 'expr'
    ref: int | str | None  # literal: slot (int) or inline text (str); param: n; else None
    span: tuple[int, int]  # characters of the value expression in the template
    referenceable: bool  # may be evaluated again in our additions (no DEFAULT/subquery/calls)


def strip_parens(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _is_default(node: exp.Expr) -> bool:
    return (
        isinstance(node, exp.Column)
        and not node.table
        and node.this is not None
        and isinstance(node.this, exp.Identifier)
        and not node.this.quoted
        and node.name.upper() == "DEFAULT"
    )


def _param_number(node: exp.Expression) -> int | None:
    if (
        isinstance(node, exp.Parameter)
        and isinstance(node.this, exp.Literal)
        and not node.this.is_string
        and node.this.this.isdigit()
    ):
        return int(node.this.this)
    return None


def classify_value(node: exp.Expression, span: tuple[int, int], text: SqlText) -> Value:
    inner = strip_parens(node)
    while isinstance(inner, (exp.Cast, exp.TryCast)):
        inner = strip_parens(inner.this)
    n = _param_number(inner)
    if n is not None:
        if n >= PLACEHOLDER_BASE:
            return Value("literal", n - PLACEHOLDER_BASE, span, True)
        return Value("param", n, span, True)
    if isinstance(inner, exp.Literal) or (
        isinstance(inner, exp.Neg) and isinstance(strip_parens(inner.this), exp.Literal)
    ):
        lit = inner if isinstance(inner, exp.Literal) else strip_parens(inner.this)
        meta = lit.meta if lit._meta else {}
        if "start" in meta and isinstance(inner, exp.Literal):
            source = text.sql[text.orig(meta["start"]) : text.orig(meta["end"]) + 1]
        else:
            source = text.sql[span[0] : span[1]]
        return Value("literal", source, span, True)
    if isinstance(inner, exp.Null):
        return Value("null", None, span, True)
    referenceable = not any(
        _is_default(n)
        or isinstance(n, (exp.Subquery, exp.Select, exp.Exists, exp.Query))
        or (isinstance(n, exp.Func) and not isinstance(n, (exp.Cast, exp.TryCast)))
        for n in node.walk()
    )
    return Value("expr", None, span, referenceable)


# ============================================================================ target & pins


@dataclass
class Target:
    schema: str | None
    name: str
    alias: str | None

    @property
    def qualifier(self) -> str:
        return self.alias or self.name


@overload
def fold_ident(ident: exp.Identifier) -> str: ...
@overload
def fold_ident(ident: exp.Identifier | None) -> str | None: ...
def fold_ident(ident: exp.Identifier | None) -> str | None:
    if ident is None:
        return None
    return ident.this if ident.quoted else fold_identifier(ident.this)


def target_of(table_node: exp.Expression) -> Target | None:
    if isinstance(table_node, exp.Schema):
        table_node = table_node.this
    if not isinstance(table_node, exp.Table) or not isinstance(table_node.this, exp.Identifier):
        return None
    alias = table_node.args.get("alias")
    alias_name = (
        fold_ident(alias.this) if isinstance(alias, exp.TableAlias) and alias.this else None
    )
    if table_node.args.get("catalog") is not None:
        return None
    return Target(fold_ident(table_node.args.get("db")), fold_ident(table_node.this), alias_name)


def matches(target: Target, table: ProtectedTable) -> bool:
    return target.name == table.name and target.schema in (None, table.schema)


def _is_target_column(node: exp.Expression, target: Target, table: ProtectedTable) -> str | None:
    """The folded column name when node is a (possibly qualified) column of the target."""
    node = strip_parens(node)
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
        return None
    qual = node.args.get("table")
    if qual is not None:
        if fold_ident(qual) != target.qualifier:
            return None
        db = node.args.get("db")
        if db is not None and (target.alias is not None or fold_ident(db) != table.schema):
            return None
        if node.args.get("catalog") is not None:
            return None
    return fold_ident(node.this)


@dataclass
class Pin:
    column: str
    values: list[Value]  # one per pinned row (several only for IN lists)
    span: tuple[int, int]  # characters of the whole predicate (for the presence subquery)
    is_in: bool
    # `= ANY(<array>)`: the array (a literal or $n), whose elements are the pinned keys,
    # known only at each execution (values is empty)
    array: Value | None = None


def _find_op(text: SqlText, lo: int, hi: int, tt: TokenType) -> int | None:
    return next((i for i, t in text.top(lo, hi) if t.token_type == tt), None)


def where_conjuncts(
    node: exp.Expression, lo: int, hi: int, text: SqlText
) -> list[tuple[exp.Expression, int, int]] | None:
    """Pair each leaf of the top-level AND chain with its token range; None if they disagree."""
    toks = text.toks
    while (
        isinstance(node, exp.Paren)
        and lo < hi
        and toks[lo].token_type == TokenType.L_PAREN
        and text.match.get(lo) == hi - 1
    ):
        node, lo, hi = node.this, lo + 1, hi - 1
    if not isinstance(node, exp.And):
        return [(node, lo, hi)]
    leaves: list[exp.Expression] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.And):
            stack.append(n.expression)
            stack.append(n.this)
        else:
            leaves.append(n)
    chunks = text.split(lo, hi, TokenType.AND)
    if len(chunks) != len(leaves) or any(a >= b for a, b in chunks):
        return None
    out: list[tuple[exp.Expression, int, int]] = []
    for leaf, (a, b) in zip(leaves, chunks):
        sub = where_conjuncts(leaf, a, b, text)
        if sub is None:
            return None
        out.extend(sub)
    return out


def pin_of(
    node: exp.Expression, lo: int, hi: int, text: SqlText, target: Target, table: ProtectedTable
) -> Pin | None:
    if isinstance(node, exp.EQ):
        eq = _find_op(text, lo, hi, TokenType.EQ)
        if eq is None or eq == lo or eq + 1 >= hi:
            return None
        for col_node, val_node, (vlo, vhi) in (
            (node.this, node.expression, (eq + 1, hi)),
            (node.expression, node.this, (lo, eq)),
        ):
            column = _is_target_column(col_node, target, table)
            if column in table.key and isinstance(val_node, exp.Any):
                array = _any_array(val_node, vlo, vhi, text)
                if array is not None:
                    return Pin(column, [], text.span(lo, hi), True, array)
                return None
            if column in table.key:
                value = classify_value(val_node, text.span(vlo, vhi), text)
                if value.kind in ("literal", "param"):
                    return Pin(column, [value], text.span(lo, hi), False)
        return None
    if isinstance(node, exp.In):
        column = _is_target_column(node.this, target, table)
        items = node.expressions
        if (
            column not in table.key
            or not items
            or node.args.get("query") is not None
            or node.args.get("unnest") is not None
            or node.args.get("field") is not None
        ):
            return None
        op = _find_op(text, lo, hi, TokenType.IN)
        if op is None or op + 1 >= hi or text.toks[op + 1].token_type != TokenType.L_PAREN:
            return None
        close = text.match.get(op + 1)
        if close is None or close != hi - 1:
            return None
        chunks = text.split(op + 2, close, TokenType.COMMA) if op + 2 < close else []
        if len(chunks) != len(items):
            return None
        values = []
        for item, (a, b) in zip(items, chunks):
            if a >= b:
                return None
            value = classify_value(item, text.span(a, b), text)
            if value.kind not in ("literal", "param"):
                return None
            values.append(value)
        return Pin(column, values, text.span(lo, hi), True)
    return None


def _any_array(node: exp.Any, lo: int, hi: int, text: SqlText) -> Value | None:
    """The array of `= ANY(<array>)` when it is a literal or a parameter (possibly cast)."""
    inner = node.this
    if isinstance(inner, exp.Paren):
        inner = inner.this
    toks = text.toks
    if hi - lo < 3 or toks[lo + 1].token_type != TokenType.L_PAREN:
        return None
    if text.match.get(lo + 1) != hi - 1 or toks[lo].text.upper() not in ("ANY", "SOME"):
        return None
    value = classify_value(inner, text.span(lo + 2, hi - 1), text)
    return value if value.kind in ("literal", "param") else None


# ============================================================================ SET items


@dataclass(frozen=True)
class SetItem:
    column: str
    value: Value | None  # None: the new value cannot be named (tuple from a subquery, a[1] = x)


def set_items(tree: exp.Update, text: SqlText, c: Clauses) -> list[SetItem] | None:
    chunks = text.split(c.set_lo, c.set_hi, TokenType.COMMA)
    if len(chunks) != len(tree.expressions):
        return None
    items: list[SetItem] = []
    for node, (lo, hi) in zip(tree.expressions, chunks):
        if not isinstance(node, exp.EQ) or lo >= hi:
            return None
        eq = _find_op(text, lo, hi, TokenType.EQ)
        if eq is None or eq + 1 >= hi:
            return None
        left, right = node.this, node.expression
        if isinstance(left, exp.Tuple):
            names = [_plain_column(x) for x in left.expressions]
            if None in names:
                return None
            values: list[Value | None] = [None] * len(names)
            rt = strip_parens(right)
            if (
                isinstance(rt, exp.Tuple)
                and len(rt.expressions) == len(names)
                and text.toks[eq + 1].token_type == TokenType.L_PAREN
                and text.match.get(eq + 1) == hi - 1
            ):
                parts = text.split(eq + 2, hi - 1, TokenType.COMMA)
                if len(parts) == len(names):
                    values = [
                        classify_value(x, text.span(a, b), text)
                        for x, (a, b) in zip(rt.expressions, parts)
                    ]
            items.extend(SetItem(n, v) for n, v in zip(names, values))  # type: ignore[arg-type]  # no None in names
            continue
        name = _plain_column(left)
        if name is not None:
            items.append(SetItem(name, classify_value(right, text.span(eq + 1, hi), text)))
            continue
        # partial write of an array element (a[1] = x) or a composite field (a.f = x)
        base = left
        while isinstance(base, (exp.Bracket, exp.Dot)):
            base = base.this
        name = _plain_column(base)
        if name is None and isinstance(base, exp.Column) and base.args.get("db") is None:
            name = fold_ident(base.args.get("table"))
        if name is None:
            return None
        items.append(SetItem(name, None))
    return items


def _plain_column(node: exp.Expression) -> str | None:
    if (
        isinstance(node, exp.Column)
        and isinstance(node.this, exp.Identifier)
        and node.args.get("table") is None
    ):
        return fold_ident(node.this)
    if isinstance(node, exp.Identifier):
        return fold_ident(node)
    return None


# ============================================================================ checks


def column_checks(
    table: ProtectedTable, kind: str, items: list[SetItem]
) -> tuple[dict[str, str], set[str]]:
    """column -> 'plain' | 'differing' for the checked columns; the sparse-written columns."""
    written = {it.column for it in items}
    checks: dict[str, str] = {}
    if table.mode not in ("enforce", "audit"):
        return checks, set()
    if table.strategy == "version":
        if table.version_column:
            checks[table.version_column] = "plain"
        return checks, set()
    for column, policy in table.policies.items():
        if column in table.key:
            continue
        if kind == "delete":
            if policy != "never":
                checks[column] = "plain"
        elif policy == "any" or (policy == "changed" and column in written):
            checks[column] = "plain"
        elif policy == "differing" and column in written:
            checks[column] = "differing"
    # a group is checked as a whole as soon as one member is written or checked
    changed = True
    while changed:
        changed = False
        for group in table.groups:
            if group & (written | checks.keys()):
                for column in group:
                    if column not in checks and column not in table.key:
                        checks[column] = "plain"
                        changed = True
    sparse: set[str] = set()
    if kind == "update" and table.sparse_update:
        for it in items:
            if (
                it.value is not None
                and it.value.kind in ("literal", "param", "null")
                and it.column not in table.key
                and it.column in table.column_types
            ):
                sparse.add(it.column)
    return checks, sparse
