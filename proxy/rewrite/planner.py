"""Write planning: how to guard one UPDATE / DELETE (or learn from one INSERT) on a protected table.

Cold path (results are cached by the normalized template, see cache.py). sqlglot's parse tells
us what the statement *means*; its tokenizer tells us *where* things are. The client's text is
never regenerated: our additions are spliced into it at token offsets, so what the client wrote
runs byte for byte. The only in-place change is sparse_update wrapping a SET value in a CASE that
still contains the client's text.

Guard shape (one pinned row; `q` is the client's alias or table name):

    UPDATE t SET <client items>[, v = q.v + 1] [FROM ...]
    WHERE <client where>
      AND (<checks> OR pg_temp.optimist_modified(<info>, <state json>))
      AND pg_temp.optimist_present(ARRAY(SELECT <key json> FROM ONLY? s.t WHERE <key pin>
                                         FOR NO KEY UPDATE), ARRAY[<read key json>], <info>)
    RETURNING <client returning>, <captured columns>

Several pinned rows (`id IN (...)`) dispatch on the key so each row is checked against its own
read values: `AND CASE WHEN q.id = k1 THEN (<checks_1> OR ...) WHEN ... ELSE true END`.
"""
from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from proxy.rewrite.lexer import PLACEHOLDER_BASE, literal_text
from proxy.rewrite.lexer import _tokens as _lexer_tokens
from proxy.rewrite.render import (
    Lit,
    Read,
    RenderedSql,
    cast,
    column_ref,
    compile_pieces,
    fill_extended,
    fill_simple,
    jsonb_object,
)
from proxy.rules.protected import ProtectedTable
from proxy.sqlnames import fold_identifier, quote_ident, quote_literal_any

__all__ = [
    "InsertPlan",
    "KeyRef",
    "REASONS",
    "RenderedSql",
    "Unverified",
    "WritePlan",
    "plan_insert",
    "plan_write",
    "written_tables",
]

REASONS = frozenset({"no_key_pin", "where_current_of", "parse_error", "not_target_table",
                     "unsupported"})


@dataclass(frozen=True)
class Unverified:
    """The statement cannot be guarded; reason is one of REASONS (a metric label)."""
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class KeyRef:
    """Where the value of one key column of one pinned row comes from."""
    column: str
    param: int | None = None  # 1-based client $n
    literal_slot: int | None = None  # index into normalize()'s literals
    literal: str | None = None  # a literal left inline in the template (not normalized)

    def value_text(self, literals: Sequence[str] = (), params: Sequence[str | None] = (),
                   scs: bool = True) -> str | None:
        """The key value as text (None when unknown, e.g. a binary or missing parameter)."""
        if self.param is not None:
            return params[self.param - 1] if self.param <= len(params) else None
        if self.literal_slot is not None:
            if self.literal_slot >= len(literals):
                return None
            return literal_text(literals[self.literal_slot], scs)
        if self.literal is not None:
            return literal_text(self.literal, scs)
        return None


# ============================================================================ token analysis

_CURRENT_OF = re.compile(r"\bwhere\s+current\s+of\b", re.I)
_OPEN = {TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.CASE}
_CLOSE = {TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.END}
_TOKENIZER = Postgres().tokenizer_class


class _Tok(NamedTuple):
    token_type: TokenType
    text: str
    start: int  # offsets in the template (inclusive, like sqlglot's)
    end: int


class _Text:
    """The template, its tokens with nesting depth, and where the placeholders are.

    sqlglot's tokenizer fails on parameters followed directly by another '$' ("$1,$2": it
    tries a $tag$ there), so sqlglot reads `parse_sql`, a copy with a space after every $n;
    token offsets are mapped back to the template.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        inserted: list[int] = []  # template offsets where parse_sql has an extra space
        parts: list[str] = []
        last = 0
        for tok in _lexer_tokens(sql):
            if tok.kind == "param" and tok.end < len(sql) and not sql[tok.end].isspace():
                parts.append(sql[last:tok.end])
                parts.append(" ")
                last = tok.end
                inserted.append(tok.end)
        parts.append(sql[last:])
        self.parse_sql = "".join(parts)
        # the k-th extra space sits at parse offset inserted[k] + k
        self._inserted_at = [at + k for k, at in enumerate(inserted)]
        toks = [
            _Tok(t.token_type, t.text, self.orig(t.start), self.orig(t.end))
            for t in _TOKENIZER().tokenize(self.parse_sql)
        ]
        while toks and toks[-1].token_type == TokenType.SEMICOLON:
            toks.pop()
        self.toks = toks
        depth: list[int] = []
        match: dict[int, int] = {}
        stack: list[int] = []
        d = 0
        for i, t in enumerate(toks):
            tt = t.token_type
            if tt in _CLOSE and stack:
                d -= 1
                match[stack.pop()] = i
            depth.append(d)
            if tt in _OPEN:
                d += 1
                stack.append(i)
        self.depth = depth
        self.match = match
        # placeholders ($90001...) are PARAMETER + NUMBER token pairs
        holes: list[tuple[int, int, int]] = []
        max_param = 0
        for i in range(len(toks) - 1):
            if toks[i].token_type == TokenType.PARAMETER and toks[i + 1].token_type == TokenType.NUMBER \
                    and toks[i + 1].start == toks[i].end + 1 and toks[i + 1].text.isdigit():
                n = int(toks[i + 1].text)
                if n >= PLACEHOLDER_BASE:
                    holes.append((toks[i].start, toks[i + 1].end + 1, n - PLACEHOLDER_BASE))
                else:
                    max_param = max(max_param, n)
        self.holes = holes
        self._hole_starts = [h[0] for h in holes]
        self.max_param = max_param
        self.end = toks[-1].end + 1 if toks else 0

    def orig(self, parse_pos: int) -> int:
        """A parse_sql offset as a template offset."""
        return parse_pos - bisect_left(self._inserted_at, parse_pos)

    def start_of(self, i: int) -> int:
        return self.toks[i].start if i < len(self.toks) else self.end

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Character span of tokens[lo:hi] (hi exclusive)."""
        return self.toks[lo].start, self.toks[hi - 1].end + 1

    def pieces(self, start: int, end: int) -> list[object]:
        """The client's text[start:end] with placeholders as Lit holes."""
        out: list[object] = []
        pos = start
        for hs, he, slot in self.holes[bisect_left(self._hole_starts, start):]:
            if hs >= end:
                break
            out.append(self.sql[pos:hs])
            out.append(Lit(slot))
            pos = he
        out.append(self.sql[pos:end])
        return out

    def top(self, lo: int, hi: int, base: int | None = None):
        """(index, token) of tokens[lo:hi] at the nesting depth of tokens[lo]."""
        if lo >= hi:
            return
        base = self.depth[lo] if base is None else base
        depth = self.depth
        for i in range(lo, hi):
            if depth[i] == base:
                yield i, self.toks[i]

    def split(self, lo: int, hi: int, sep: TokenType) -> list[tuple[int, int]]:
        """Split tokens[lo:hi] on top-level separators (ANDs of BETWEEN x AND y excluded)."""
        chunks = []
        start = lo
        between = False
        for i, t in self.top(lo, hi):
            tt = t.token_type
            if tt == TokenType.BETWEEN:
                between = True
            elif tt == sep:
                if sep == TokenType.AND and between:
                    between = False
                    continue
                chunks.append((start, i))
                start = i + 1
        chunks.append((start, hi))
        return chunks


@dataclass
class _Clauses:
    main: int  # index of UPDATE / DELETE / INSERT
    set_lo: int = -1  # SET items tokens[set_lo:set_hi]
    set_hi: int = -1
    where: int = -1  # index of the WHERE keyword
    where_hi: int = -1  # end (exclusive) of the WHERE condition
    returning: int = -1  # index of RETURNING
    only: bool = False


def _clauses(text: _Text, kinds: set[TokenType]) -> _Clauses | None:
    toks = text.toks
    n = len(toks)
    main = next((i for i, t in text.top(0, n, 0) if t.token_type in kinds), None)
    if main is None:
        return None
    c = _Clauses(main)
    after = main + 1
    if toks[main].token_type == TokenType.DELETE and after < n and toks[after].token_type == TokenType.FROM:
        after += 1
    elif toks[main].token_type == TokenType.INSERT and after < n and toks[after].token_type == TokenType.INTO:
        after += 1
    c.only = after < n and toks[after].text.upper() == "ONLY"
    prev = None
    for i, t in text.top(after, n, 0):
        tt = t.token_type
        if tt == TokenType.SET and c.set_lo < 0 and c.where < 0 and toks[main].token_type == TokenType.UPDATE:
            c.set_lo = i + 1
        elif c.set_lo >= 0 and c.set_hi < 0 and (
            tt in (TokenType.WHERE, TokenType.RETURNING)
            or (tt == TokenType.FROM and prev != TokenType.DISTINCT)
        ):
            c.set_hi = i
        if tt == TokenType.WHERE and c.where < 0 and toks[main].token_type != TokenType.INSERT:
            c.where = i
        elif tt == TokenType.RETURNING and c.returning < 0:
            c.returning = i
            break
        prev = tt
    if c.set_lo >= 0 and c.set_hi < 0:
        c.set_hi = c.returning if c.returning >= 0 else n
    if c.where >= 0:
        c.where_hi = c.returning if c.returning >= 0 else n
    return c


# ============================================================================ values

@dataclass(frozen=True)
class _Value:
    kind: str  # 'literal' | 'param' | 'null' | 'expr'
    ref: object  # literal: slot (int) or inline text (str); param: n; else None
    span: tuple[int, int]  # characters of the value expression in the template
    referenceable: bool  # may be evaluated again in our additions (no DEFAULT/subquery/calls)


def _strip_parens(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _is_default(node: exp.Expression) -> bool:
    return isinstance(node, exp.Column) and not node.table and node.this is not None \
        and isinstance(node.this, exp.Identifier) and not node.this.quoted \
        and node.name.upper() == "DEFAULT"


def _param_number(node: exp.Expression) -> int | None:
    if isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal) \
            and not node.this.is_string and node.this.this.isdigit():
        return int(node.this.this)
    return None


def _classify_value(node: exp.Expression, span: tuple[int, int], text: _Text) -> _Value:
    inner = _strip_parens(node)
    while isinstance(inner, (exp.Cast, exp.TryCast)):
        inner = _strip_parens(inner.this)
    n = _param_number(inner)
    if n is not None:
        if n >= PLACEHOLDER_BASE:
            return _Value("literal", n - PLACEHOLDER_BASE, span, True)
        return _Value("param", n, span, True)
    if isinstance(inner, exp.Literal) or (
        isinstance(inner, exp.Neg) and isinstance(_strip_parens(inner.this), exp.Literal)
    ):
        lit = inner if isinstance(inner, exp.Literal) else _strip_parens(inner.this)
        meta = lit.meta if lit._meta else {}
        if "start" in meta and isinstance(inner, exp.Literal):
            source = text.sql[text.orig(meta["start"]):text.orig(meta["end"]) + 1]
        else:
            source = text.sql[span[0]:span[1]]
        return _Value("literal", source, span, True)
    if isinstance(inner, exp.Null):
        return _Value("null", None, span, True)
    referenceable = not any(
        _is_default(n) or isinstance(n, (exp.Subquery, exp.Select, exp.Exists, exp.Query))
        or (isinstance(n, exp.Func) and not isinstance(n, (exp.Cast, exp.TryCast)))
        for n in node.walk()
    )
    return _Value("expr", None, span, referenceable)


# ============================================================================ target & pins

@dataclass
class _Target:
    schema: str | None
    name: str
    alias: str | None

    @property
    def qualifier(self) -> str:
        return self.alias or self.name


def _fold(ident: exp.Identifier | None) -> str | None:
    if ident is None:
        return None
    return ident.this if ident.quoted else fold_identifier(ident.this)


def _target_of(table_node: exp.Expression) -> _Target | None:
    if isinstance(table_node, exp.Schema):
        table_node = table_node.this
    if not isinstance(table_node, exp.Table) or not isinstance(table_node.this, exp.Identifier):
        return None
    alias = table_node.args.get("alias")
    alias_name = _fold(alias.this) if isinstance(alias, exp.TableAlias) and alias.this else None
    if table_node.args.get("catalog") is not None:
        return None
    return _Target(_fold(table_node.args.get("db")), _fold(table_node.this), alias_name)


def _matches(target: _Target, table: ProtectedTable) -> bool:
    return target.name == table.name and target.schema in (None, table.schema)


def _is_target_column(node: exp.Expression, target: _Target, table: ProtectedTable) -> str | None:
    """The folded column name when node is a (possibly qualified) column of the target."""
    node = _strip_parens(node)
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
        return None
    qual = node.args.get("table")
    if qual is not None:
        if _fold(qual) != target.qualifier:
            return None
        db = node.args.get("db")
        if db is not None and (target.alias is not None or _fold(db) != table.schema):
            return None
        if node.args.get("catalog") is not None:
            return None
    return _fold(node.this)


@dataclass
class _Pin:
    column: str
    values: list[_Value]  # one per pinned row (several only for IN lists)
    span: tuple[int, int]  # characters of the whole predicate (for the presence subquery)
    is_in: bool


def _find_op(text: _Text, lo: int, hi: int, tt: TokenType) -> int | None:
    return next((i for i, t in text.top(lo, hi) if t.token_type == tt), None)


def _conjuncts(node: exp.Expression, lo: int, hi: int, text: _Text):
    """Pair each leaf of the top-level AND chain with its token range; None if they disagree."""
    toks = text.toks
    while isinstance(node, exp.Paren) and lo < hi and toks[lo].token_type == TokenType.L_PAREN \
            and text.match.get(lo) == hi - 1:
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
    out = []
    for leaf, (a, b) in zip(leaves, chunks):
        sub = _conjuncts(leaf, a, b, text)
        if sub is None:
            return None
        out.extend(sub)
    return out


def _pin_of(node, lo, hi, text: _Text, target: _Target, table: ProtectedTable) -> _Pin | None:
    if isinstance(node, exp.EQ):
        eq = _find_op(text, lo, hi, TokenType.EQ)
        if eq is None or eq == lo or eq + 1 >= hi:
            return None
        for col_node, val_node, (vlo, vhi) in (
            (node.this, node.expression, (eq + 1, hi)),
            (node.expression, node.this, (lo, eq)),
        ):
            column = _is_target_column(col_node, target, table)
            if column in table.key:
                value = _classify_value(val_node, text.span(vlo, vhi), text)
                if value.kind in ("literal", "param"):
                    return _Pin(column, [value], text.span(lo, hi), False)
        return None
    if isinstance(node, exp.In):
        column = _is_target_column(node.this, target, table)
        items = node.expressions
        if column not in table.key or not items or node.args.get("query") is not None \
                or node.args.get("unnest") is not None or node.args.get("field") is not None:
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
            value = _classify_value(item, text.span(a, b), text)
            if value.kind not in ("literal", "param"):
                return None
            values.append(value)
        return _Pin(column, values, text.span(lo, hi), True)
    return None


# ============================================================================ SET items

@dataclass(frozen=True)
class _SetItem:
    column: str
    value: _Value | None  # None: the new value cannot be named (tuple from a subquery, a[1] = x)


def _set_items(tree: exp.Update, text: _Text, c: _Clauses) -> list[_SetItem] | None:
    chunks = text.split(c.set_lo, c.set_hi, TokenType.COMMA)
    if len(chunks) != len(tree.expressions):
        return None
    items: list[_SetItem] = []
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
            values: list[_Value | None] = [None] * len(names)
            rt = _strip_parens(right)
            if isinstance(rt, exp.Tuple) and len(rt.expressions) == len(names) \
                    and text.toks[eq + 1].token_type == TokenType.L_PAREN \
                    and text.match.get(eq + 1) == hi - 1:
                parts = text.split(eq + 2, hi - 1, TokenType.COMMA)
                if len(parts) == len(names):
                    values = [_classify_value(x, text.span(a, b), text)
                              for x, (a, b) in zip(rt.expressions, parts)]
            items.extend(_SetItem(n, v) for n, v in zip(names, values))
            continue
        name = _plain_column(left)
        if name is not None:
            items.append(_SetItem(name, _classify_value(right, text.span(eq + 1, hi), text)))
            continue
        # partial write of an array element (a[1] = x) or a composite field (a.f = x)
        base = left
        while isinstance(base, (exp.Bracket, exp.Dot)):
            base = base.this
        name = _plain_column(base)
        if name is None and isinstance(base, exp.Column) and base.args.get("db") is None:
            name = _fold(base.args.get("table"))
        if name is None:
            return None
        items.append(_SetItem(name, None))
    return items


def _plain_column(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier) \
            and node.args.get("table") is None:
        return _fold(node.this)
    if isinstance(node, exp.Identifier):
        return _fold(node)
    return None


# ============================================================================ plans

@dataclass(frozen=True)
class _Edit:
    start: int
    end: int  # == start for an insertion
    pieces: tuple[object, ...]


def _splice(text: _Text, edits: list[_Edit]) -> tuple[object, ...]:
    out: list[object] = []
    pos = 0
    for e in sorted(edits, key=lambda e: e.start):  # stable: insertions keep their order
        out.extend(text.pieces(pos, e.start))
        out.extend(e.pieces)
        pos = e.end
    out.extend(text.pieces(pos, len(text.sql)))
    return compile_pieces(out)


def _notify_expr(table: ProtectedTable, qualifier: str, op: str) -> str:
    """pg_notify() as one more RETURNING item: PostgreSQL delivers it at commit, and drops it
    if the transaction rolls back, which is exactly 'after a protected write commits'."""
    key = ", ".join(f"{quote_literal_any(k)}, {column_ref(qualifier, k)}" for k in table.key)
    version = (column_ref(qualifier, table.version_column)
               if table.strategy == "version" and table.version_column else "NULL")
    payload = (f"json_build_object('table', {quote_literal_any(table.qualified_name)}, "
               f"'op', '{op}', 'key', json_build_object({key}), 'version', {version})::text")
    return f"pg_notify({quote_literal_any(table.notify)}, {payload})"


def _returning_edit(text: _Text, c: _Clauses, qualifier: str, columns: Sequence[str],
                    table: ProtectedTable | None = None, op: str = "update") -> _Edit:
    """RETURNING grows by the captured columns, then (rules with `notify`) the notification;
    the proxy strips all of them before the client sees its rows."""
    refs = ", ".join(column_ref(qualifier, col) for col in columns)
    if table is not None and table.notify:
        refs += ", " + _notify_expr(table, qualifier, op)
    if c.returning >= 0:
        return _Edit(text.end, text.end, (", " + refs,))
    return _Edit(text.end, text.end, (" RETURNING " + refs,))


@dataclass(frozen=True)
class InsertPlan:
    """An INSERT: only RETURNING grows, so the proxy learns the rows it created."""
    table: ProtectedTable
    extra_returning: tuple[str, ...]
    client_returning: bool
    on_conflict: str | None  # None | 'nothing' | 'update' (an upsert may overwrite blindly)
    _pieces: tuple[object, ...] = field(repr=False, compare=False)
    _max_param: int = field(default=0, repr=False, compare=False)
    kind: str = "insert"

    def render_simple(self, literals: Sequence[str] = (), scs: bool = True) -> str:
        return fill_simple(self._pieces, literals, (), scs)

    def render_extended(self, literals: Sequence[str] | int = (), n_params: int | None = None,
                        scs: bool = True) -> RenderedSql:
        literals, _ = _extended_args(literals, n_params)
        return fill_extended(self._pieces, literals, 0)


def _extended_args(literals, n_params) -> tuple[Sequence[str], int]:
    # accepts render_extended(n_params) as well as render_extended(literals, n_params, scs)
    if isinstance(literals, int):
        return (), literals
    return literals, n_params or 0


@dataclass(frozen=True)
class WritePlan:
    kind: str  # 'update' | 'delete'
    table: ProtectedTable
    pinned_rows: tuple[tuple[KeyRef, ...], ...]
    written_columns: frozenset[str]
    set_items: Mapping[str, tuple[str, object]]
    checked_columns: tuple[str, ...]
    extra_returning: tuple[str, ...]
    client_returning: bool
    _builder: "_GuardBuilder" = field(repr=False, compare=False)
    _compiled: dict = field(default_factory=dict, repr=False, compare=False)

    def render_simple(self, literals: Sequence[str], reads: Sequence[Mapping[str, str | None] | None],
                      scs: bool = True) -> str:
        """The statement with literals put back and read values inlined. A pinned row whose
        reads are missing (None, absent, or lacking a checked column) is left unchecked."""
        mask = tuple(
            i < len(reads) and reads[i] is not None
            and all(c in reads[i] for c in self.checked_columns)
            for i in range(len(self.pinned_rows))
        )
        pieces = self._compiled.get(mask)
        if pieces is None:
            pieces = self._compiled[mask] = self._builder.build(mask)
        return fill_simple(pieces, literals, reads, scs)

    def render_extended(self, literals: Sequence[str] | int = (), n_params: int | None = None,
                        scs: bool = True, mask: tuple[bool, ...] | None = None) -> RenderedSql:
        """The statement with the pinned rows checked against extra parameters numbered after
        the client's: bind, for each `extra_params` entry (row, column), the value the session
        read there. Same SQL for every execution with the same `mask` (which pinned rows are
        checked; default all), so it is prepared once. An all-False mask adds no guard: the
        write passes as written and only RETURNING grows."""
        literals, n_params = _extended_args(literals, n_params)
        if mask is None:
            mask = (True,) * len(self.pinned_rows)
        pieces = self._compiled.get(mask)
        if pieces is None:
            pieces = self._compiled[mask] = self._builder.build(mask)
        return fill_extended(pieces, literals, max(n_params, self._builder.text.max_param) + 1)

    def key_texts(self, literals: Sequence[str] = (), params: Sequence[str | None] = (),
                  scs: bool = True) -> list[tuple[str | None, ...]]:
        """Each pinned row's key values as text, in table.key order."""
        return [tuple(ref.value_text(literals, params, scs) for ref in row)
                for row in self.pinned_rows]


class _GuardBuilder:
    """Everything needed to assemble the guarded statement for one set of read rows."""

    def __init__(self, *, text: _Text, table: ProtectedTable, kind: str, clauses: _Clauses,
                 target: _Target, pins: list[_Pin], rows: list[list[_Value]],
                 items: list[_SetItem], checks: dict[str, str], sparse: list[str],
                 bump: str | None, wrap_where: bool) -> None:
        self.text = text
        self.table = table
        self.kind = kind
        self.c = clauses
        self.q = target.qualifier
        self.pins = pins
        self.rows = rows  # rows[i][k]: value of key column k for pinned row i
        self.items = {it.column: it for it in items}
        self.checks = checks  # column -> 'plain' | 'differing', in checked order
        self.sparse = sparse
        self.bump = bump
        self.wrap_where = wrap_where
        guarded = table.mode in ("enforce", "audit")
        self.guarded = guarded
        suffix = "_audit" if table.mode == "audit" else ""
        self.f_modified = "pg_temp.optimist_modified" + suffix
        self.f_present = "pg_temp.optimist_present" + suffix
        self.info = quote_literal_any(json.dumps(
            {"table": table.qualified_name, "schema": table.schema, "name": table.name,
             "key": list(table.key), "op": kind},
            ensure_ascii=False, separators=(",", ":")))
        key_written = any(k in self.items for k in table.key)
        self.lock = "FOR UPDATE" if kind == "delete" or key_written else "FOR NO KEY UPDATE"
        self.relation = ("ONLY " if clauses.only else "") + quote_ident(table.schema) + "." \
            + quote_ident(table.name)

    # ---- small pieces

    def col(self, column: str) -> str:
        return column_ref(self.q, column)

    def value(self, v: _Value) -> list[object]:
        return self.text.pieces(*v.span)

    def new_value(self, column: str) -> list[object] | None:
        item = self.items.get(column)
        if item is None or item.value is None or not item.value.referenceable:
            return None
        return cast(self.value(item.value), self.table.column_types[column])

    def read(self, row: int, column: str) -> Read:
        return Read(row, column, self.table.column_types[column])

    def row_pin(self, row: int) -> list[object]:
        out: list[object] = []
        for k, value in zip(self.table.key, self.rows[row]):
            if out:
                out.append(" AND ")
            out += [self.col(k), " = ", *self.value(value)]
        return out

    def key_json(self, row: int | None) -> list[object]:
        if row is None:  # inside the presence subquery: the scanned row's own key
            return jsonb_object([(k, [quote_ident(k)]) for k in self.table.key])
        return jsonb_object([
            (k, cast(self.value(v), self.table.column_types[k]))
            for k, v in zip(self.table.key, self.rows[row])
        ])

    # ---- checks

    def column_check(self, row: int, column: str) -> list[object]:
        r = self.read(row, column)
        plain = [self.col(column), " IS NOT DISTINCT FROM ", r]
        check = plain
        if self.checks.get(column) == "differing":
            new = self.new_value(column)
            if new is not None:
                check = ["(", *plain, " OR ", self.col(column), " IS NOT DISTINCT FROM ", *new, ")"]
        if column in self.sparse:
            # writing back what was read is not a write: no conflict on that column
            new = self.new_value(column)
            check = ["(", *new, " IS NOT DISTINCT FROM ", r, " OR ", *check, ")"]
        return check

    def row_checks(self, row: int) -> list[object] | None:
        columns = [c for c in self.checks]
        if not columns:
            return None
        out: list[object] = ["("]
        for i, column in enumerate(columns):
            if i:
                out.append(" AND ")
            out += self.column_check(row, column)
        out.append(")")
        # [read, current, attempted, passed]: the function reports the columns that failed
        state_columns = []
        for column in columns:
            attempted = self.new_value(column)
            state_columns.append((column, [
                "jsonb_build_array(to_jsonb(", self.read(row, column), "), to_jsonb(",
                self.col(column), "), ",
                *(["to_jsonb(", *attempted, ")"] if attempted is not None else ["NULL"]),
                ", to_jsonb(", *self.column_check(row, column), "))",
            ]))
        state = jsonb_object([("key", self.key_json_current()), ("columns", jsonb_object(state_columns))])
        return ["(", *out, " OR ", self.f_modified, "(", self.info, ", ", *state, "))"]

    def key_json_current(self) -> list[object]:
        return jsonb_object([(k, [self.col(k)]) for k in self.table.key])

    # ---- assembly

    def build(self, mask: tuple[bool, ...]) -> tuple[object, ...]:
        text, c = self.text, self.c
        edits: list[_Edit] = []
        rows = [i for i, read in enumerate(mask) if read]
        guarded = self.guarded and bool(rows)
        if guarded:
            for column in self.sparse:
                edits.append(self.sparse_edit(column, rows))
        if self.bump is not None:
            edits.append(_Edit(text.span(c.set_lo, c.set_hi)[1], text.span(c.set_lo, c.set_hi)[1],
                               (self.bump,)))
        if guarded:
            where_end = text.span(c.where + 1, c.where_hi)[1]
            if self.wrap_where:
                after_where = text.toks[c.where].end + 1
                edits.append(_Edit(after_where, after_where, (" (",)))
                edits.append(_Edit(where_end, where_end, (")",)))
            edits.append(_Edit(where_end, where_end, tuple(self.guard(rows))))
        edits.append(_returning_edit(text, c, self.q, self.table.captured_columns, self.table,
                                     self.kind))
        return _splice(text, edits)

    def guard(self, rows: list[int]) -> list[object]:
        out: list[object] = []
        per_row = [(i, self.row_checks(i)) for i in rows]
        if any(check is not None for _, check in per_row):
            if len(self.rows) == 1:
                out += [" AND ", *per_row[0][1]]
            else:
                out.append(" AND CASE")
                for i, check in per_row:
                    if check is not None:
                        out += [" WHEN ", *self.row_pin(i), " THEN ", *check]
                out.append(" ELSE true END")
        # presence: lock the pinned rows first, then require every read row still to exist
        existing = ["ARRAY(SELECT ", *self.key_json(None), " FROM ", self.relation, " WHERE "]
        for n, pin in enumerate(self.pins):
            if n:
                existing.append(" AND ")
            existing += self.unqualified_pin(pin)
        existing += [" ", self.lock, ")"]
        wanted: list[object] = ["ARRAY["]
        for n, i in enumerate(rows):
            if n:
                wanted.append(", ")
            wanted += self.key_json(i)
        wanted.append("]")
        out += [" AND ", self.f_present, "(", *existing, ", ", *wanted, ", ", self.info, ")"]
        return out

    def unqualified_pin(self, pin: _Pin) -> list[object]:
        col = quote_ident(pin.column)
        if not pin.is_in:
            return [col, " = ", *self.value(pin.values[0])]
        out: list[object] = [col, " IN ("]
        for n, v in enumerate(pin.values):
            if n:
                out.append(", ")
            out += self.value(v)
        out.append(")")
        return out

    def sparse_edit(self, column: str, rows: list[int]) -> _Edit:
        item = self.items[column]
        original = self.value(item.value)
        new = self.new_value(column)
        out: list[object] = ["CASE"]
        for i in rows:
            out.append(" WHEN ")
            if len(self.rows) > 1:
                out += [*self.row_pin(i), " AND "]
            out += [*new, " IS NOT DISTINCT FROM ", self.read(i, column), " THEN ", self.col(column)]
        out += [" ELSE ", *original, " END"]
        return _Edit(item.value.span[0], item.value.span[1], tuple(out))


# ============================================================================ entry points

def _parse(sql: str):
    try:
        text = _Text(sql)
        tree = sqlglot.parse_one(text.parse_sql, read="postgres")
        if isinstance(tree, exp.Block):  # "stmt; -- comment" parses as a block
            stmts = [e for e in tree.expressions if not isinstance(e, exp.Semicolon)]
            if len(stmts) != 1:
                return None, None, "several statements"
            tree = stmts[0]
    except (ParseError, TokenError) as exc:
        return None, None, str(exc).splitlines()[0] if str(exc) else "parse error"
    except Exception as exc:  # sqlglot may fail in other ways on odd input: never crash
        return None, None, f"{type(exc).__name__}: {exc}"
    return tree, text, ""


def _nested_writes(tree: exp.Expression, table: ProtectedTable, top: exp.Expression | None) -> bool:
    for node in tree.find_all(exp.Update, exp.Delete, exp.Insert, exp.Merge):
        if node is top:
            continue
        target = _target_of(node.this)
        if target is None or _matches(target, table):
            return True
    return False


def written_tables(sql: str) -> list[tuple[str | None, str]] | None:
    """Every table a statement writes (UPDATE/DELETE/INSERT/MERGE anywhere, data-modifying CTEs
    included), folded; None if it does not parse. For write_target's MUST_PARSE statements."""
    try:
        tree, _, _ = _parse(sql)
        if tree is None:
            return None
        out = []
        for node in tree.find_all(exp.Update, exp.Delete, exp.Insert, exp.Merge):
            target = _target_of(node.this)
            if target is not None:
                out.append((target.schema, target.name))
        return out
    except Exception:  # a statement sqlglot reads oddly ($1 as a table name...): unknown
        return None


def _write_target(tree: exp.Expression, table: ProtectedTable) -> "_Target | Unverified":
    """The statement's target when it is `table` and nothing else in it writes `table`."""
    target = _target_of(tree.this)
    if target is None or not _matches(target, table):
        return Unverified("not_target_table")
    if _nested_writes(tree, table, tree):
        return Unverified("unsupported", "data-modifying CTE on the same table")
    return target


def plan_write(template_sql: str, table: ProtectedTable, n_params: int = 0) -> WritePlan | Unverified:
    """Plan the guard of an UPDATE or DELETE on `table` (template_sql may hold normalize()
    placeholders and client $n parameters)."""
    try:
        return _plan_write(template_sql, table, n_params)
    except Exception as exc:  # a planner bug must cost one unchecked write, not the session
        return Unverified("unsupported", f"planner error: {type(exc).__name__}: {exc}")


def _plan_write(template_sql: str, table: ProtectedTable, n_params: int) -> WritePlan | Unverified:
    if _CURRENT_OF.search(template_sql):
        return Unverified("where_current_of")
    tree, text, error = _parse(template_sql)
    if tree is None:
        return Unverified("parse_error", error)
    if isinstance(tree, exp.Insert):
        return Unverified("not_target_table", "an INSERT: plan_insert's job")
    if not isinstance(tree, (exp.Update, exp.Delete)):
        if _nested_writes(tree, table, None):
            return Unverified("unsupported", f"{type(tree).__name__.upper()} writing {table.qualified_name}")
        return Unverified("not_target_table")
    target = _write_target(tree, table)
    if isinstance(target, Unverified):
        return target
    kind = "update" if isinstance(tree, exp.Update) else "delete"
    c = _clauses(text, {TokenType.UPDATE, TokenType.DELETE})
    if c is None or (kind == "update" and (c.set_lo < 0 or c.set_lo >= c.set_hi)):
        return Unverified("unsupported", "could not locate the clauses")
    items: list[_SetItem] = []
    if kind == "update":
        found = _set_items(tree, text, c)
        if found is None:
            return Unverified("unsupported", "SET list")
        items = found
    where = tree.args.get("where")
    if where is None or c.where < 0 or c.where + 1 >= c.where_hi:
        return Unverified("no_key_pin", "no WHERE")
    conjuncts = _conjuncts(where.this, c.where + 1, c.where_hi, text)
    if conjuncts is None:
        return Unverified("no_key_pin", "WHERE is not an AND chain we can read")
    pins: dict[str, _Pin] = {}
    for node, lo, hi in conjuncts:
        pin = _pin_of(node, lo, hi, text, target, table)
        if pin is not None and (pin.column not in pins or pins[pin.column].is_in and not pin.is_in):
            pins[pin.column] = pin
    missing = [k for k in table.key if k not in pins]
    if missing:
        return Unverified("no_key_pin", "key column(s) not pinned: " + ", ".join(missing))
    ordered = [pins[k] for k in table.key]
    if len(table.key) > 1 and any(p.is_in for p in ordered):
        return Unverified("no_key_pin", "composite keys must be pinned by equality")
    n_rows = len(ordered[0].values)
    rows = [[p.values[i] if p.is_in else p.values[0] for p in ordered] for i in range(n_rows)]
    pinned = tuple(
        tuple(_key_ref(k, v) for k, v in zip(table.key, row)) for row in rows
    )
    checks, sparse = _checks(table, kind, items)
    written = frozenset(it.column for it in items)
    bump = None
    if kind == "update" and table.mode in ("enforce", "audit") and table.strategy == "version" \
            and table.version_column and table.version_column not in written and table.bump != "none":
        v = table.version_column
        if table.bump == "increment":
            bump = f", {quote_ident(v)} = {column_ref(target.qualifier, v)} + 1"
        else:
            # clock_timestamp(), not statement_timestamp(): it is read when the row is written,
            # i.e. after the row lock was granted and the previous writer committed, so a new
            # version is always later than the one it replaces; statement_timestamp() is taken
            # before a lock wait and could equal/precede the version just committed.
            bump = f", {quote_ident(v)} = clock_timestamp()"
    checked_columns = tuple(c_ for c_ in table.columns if c_ in checks or c_ in sparse)
    wrap = any(t.token_type == TokenType.OR for _, t in text.top(c.where + 1, c.where_hi))
    builder = _GuardBuilder(
        text=text, table=table, kind=kind, clauses=c, target=target, pins=ordered, rows=rows,
        items=items, checks={col: checks[col] for col in table.columns if col in checks},
        sparse=[col for col in table.columns if col in sparse], bump=bump, wrap_where=wrap)
    return WritePlan(
        kind=kind,
        table=table,
        pinned_rows=pinned,
        written_columns=written,
        set_items={it.column: _set_item_ref(it) for it in items},
        checked_columns=checked_columns,
        extra_returning=table.captured_columns,
        client_returning=c.returning >= 0,
        _builder=builder,
    )


def _key_ref(column: str, value: _Value) -> KeyRef:
    if value.kind == "param":
        return KeyRef(column, param=value.ref)
    if isinstance(value.ref, int):
        return KeyRef(column, literal_slot=value.ref)
    return KeyRef(column, literal=value.ref)


def _set_item_ref(item: _SetItem) -> tuple[str, object]:
    v = item.value
    if v is None:
        return ("expr", None)
    return (v.kind, v.ref)


def _checks(table: ProtectedTable, kind: str, items: list[_SetItem]) -> tuple[dict[str, str], set[str]]:
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
            if it.value is not None and it.value.kind in ("literal", "param", "null") \
                    and it.column not in table.key and it.column in table.column_types:
                sparse.add(it.column)
    return checks, sparse


def plan_insert(template_sql: str, table: ProtectedTable, n_params: int = 0) -> InsertPlan | Unverified:
    """An INSERT on `table`: RETURNING the captured columns, nothing else changes."""
    try:
        return _plan_insert(template_sql, table)
    except Exception as exc:  # see plan_write
        return Unverified("unsupported", f"planner error: {type(exc).__name__}: {exc}")


def _plan_insert(template_sql: str, table: ProtectedTable) -> InsertPlan | Unverified:
    tree, text, error = _parse(template_sql)
    if tree is None:
        return Unverified("parse_error", error)
    if not isinstance(tree, exp.Insert):
        return Unverified("not_target_table")
    target = _write_target(tree, table)
    if isinstance(target, Unverified):
        return target
    c = _clauses(text, {TokenType.INSERT})
    if c is None:
        return Unverified("unsupported", "could not locate the clauses")
    conflict = tree.args.get("conflict")
    on_conflict = None
    if conflict is not None:
        action = conflict.args.get("action")
        on_conflict = "nothing" if "NOTHING" in str(getattr(action, "this", action)).upper() \
            else "update"
    pieces = _splice(text, [_returning_edit(text, c, target.qualifier, table.captured_columns,
                                            table, "insert")])
    return InsertPlan(table=table, extra_returning=table.captured_columns,
                      client_returning=c.returning >= 0, on_conflict=on_conflict,
                      _pieces=pieces, _max_param=text.max_param)

