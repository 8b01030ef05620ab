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

The plans and entry points live here; the parts, by concern: tokens.py (token geometry),
clauses.py (where the clauses are), pins.py (values, key pins, SET items, checks), guards.py
(assembling the guarded statement).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from proxy.rewrite.clauses import Clauses, find_clauses
from proxy.rewrite.guards import Edit, GuardBuilder, bump_edits, returning_edit, splice
from proxy.rewrite.lexer import literal_text
from proxy.rewrite.pins import (
    Pin,
    SetItem,
    Target,
    Value,
    classify_value,
    column_checks,
    fold_ident,
    matches,
    pin_of,
    set_items,
    target_of,
    where_conjuncts,
)
from proxy.rewrite.render import Printed, RenderedSql, column_ref, fill_extended, fill_simple
from proxy.rewrite.tokens import SqlText
from proxy.rules.protected import ProtectedTable
from proxy.sqlnames import quote_ident

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

REASONS = frozenset(
    {
        "merge",
        "no_key_pin",
        "key_array",
        "where_current_of",
        "parse_error",
        "not_target_table",
        "unsupported",
    }
)


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

    def value_text(
        self, literals: Sequence[str] = (), params: Sequence[str | None] = (), scs: bool = True
    ) -> str | None:
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


# compiled forms kept per plan (one per mask: which pinned rows were read)
_COMPILED_FORMS = 64
_CURRENT_OF = re.compile(r"\bwhere\s+current\s+of\b", re.I)


# ============================================================================ plans


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

    def render_extended(
        self, literals: Sequence[str] | int = (), n_params: int | None = None, scs: bool = True
    ) -> RenderedSql:
        literals, _ = _extended_args(literals, n_params)
        return fill_extended(self._pieces, literals, 0)


def _extended_args(
    literals: Sequence[str] | int, n_params: int | None
) -> tuple[Sequence[str], int]:
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
    # what a checked row's RETURNING may teach the session: the columns it wrote or verified
    # (and the version, bumped after its check passed); any other column may hold a change
    # the session never saw, so it stays as last read
    learned_columns: frozenset[str]
    _builder: GuardBuilder = field(repr=False, compare=False)
    # `WHERE id = ANY(<array>)`: where the array comes from; its elements are the pinned rows,
    # known at each execution (pinned_rows is empty), their keys as Read holes of the key column
    array_key: KeyRef | None = None
    # why no row can be checked (a bulk UPDATE: no key pin), when the plan only bumps the
    # version so that every other session's check still sees the change
    unpinned: str | None = None
    # INSERT ... ON CONFLICT (<key>) DO UPDATE: the pinned row is the inserted key's; a row
    # absent is inserted (no presence check), a row never read is unverified `upsert`
    upsert: bool = False
    # no RETURNING can say what the write did (MERGE before PostgreSQL 17): the pinned rows
    # are forgotten once it completes, never left at a version the proxy's bump moved on
    forget_pinned: bool = False
    # tables whose rows it changes without saying which (every unpinned plan: a bulk write, an
    # unpinned MERGE, the unchecked parts of a WITH statement), their version bumped: what the
    # session read of them is forgotten
    forgets_tables: tuple[ProtectedTable, ...] = ()
    _compiled: dict[tuple[bool, ...], tuple[object, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def _pieces(self, mask: tuple[bool, ...]) -> tuple[object, ...]:
        pieces = self._compiled.get(mask)
        if pieces is None:
            if len(self._compiled) >= _COMPILED_FORMS:  # arrays of every length: stay bounded
                self._compiled.clear()
            pieces = self._compiled[mask] = self._builder.build(mask)
        return pieces

    def render_simple(
        self,
        literals: Sequence[str],
        reads: Sequence[Mapping[str, str | Printed | None] | None],
        scs: bool = True,
    ) -> str:
        """The statement with literals put back and read values inlined. A pinned row whose
        reads are missing (None, absent, or lacking a checked column) is left unchecked."""
        n_rows = len(reads) if self.array_key is not None else len(self.pinned_rows)
        mask = tuple(
            i < len(reads)
            and reads[i] is not None
            and all(c in reads[i] for c in self.checked_columns)  # type: ignore[operator]
            for i in range(n_rows)
        )
        return fill_simple(self._pieces(mask), literals, reads, scs, self._builder.functions)

    def returned_columns(self, checked: bool) -> tuple[str, ...]:
        """The columns the checked form adds to RETURNING (none when no row is checked)."""
        return self.extra_returning if self._builder.returns(checked) else ()

    def render_extended(
        self,
        literals: Sequence[str] | int = (),
        n_params: int | None = None,
        scs: bool = True,
        mask: tuple[bool, ...] | None = None,
        kinds: Mapping[tuple[int, str], str] | None = None,
    ) -> RenderedSql:
        """The statement with the pinned rows checked against extra parameters numbered after
        the client's: bind, for each `extra_params` entry (row, column, role), what the session
        read there. Same SQL for every execution with the same `mask` (which pinned rows are
        checked; default all) and `kinds` (how each read is compared, proxy.rewrite.render),
        so it is prepared once. An all-False mask adds no guard: the
        write passes as written and only RETURNING grows."""
        literals, n_params = _extended_args(literals, n_params)
        if mask is None:
            mask = (True,) * len(self.pinned_rows)
        first = max(n_params, self._builder.text.max_param) + 1
        functions = self._builder.functions
        return fill_extended(self._pieces(mask), literals, first, kinds, functions)

    def key_texts(
        self, literals: Sequence[str] = (), params: Sequence[str | None] = (), scs: bool = True
    ) -> list[tuple[str | None, ...]]:
        """Each pinned row's key values as text, in table.key order."""
        return [
            tuple(ref.value_text(literals, params, scs) for ref in row) for row in self.pinned_rows
        ]


# ============================================================================ entry points


def _parse(sql: str) -> tuple[exp.Expr | None, SqlText | None, str]:
    try:
        text = SqlText(sql)
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


def _nested_writes(tree: exp.Expr, table: ProtectedTable, top: exp.Expr | None) -> bool:
    for node in tree.find_all(exp.Update, exp.Delete, exp.Insert, exp.Merge):
        if node is top:
            continue
        target = target_of(node.this)
        if target is None or matches(target, table):
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
            target = target_of(node.this)
            if target is not None:
                out.append((target.schema, target.name))
        return out
    except Exception:  # a statement sqlglot reads oddly ($1 as a table name...): unknown
        return None


def _write_target(tree: exp.Expression, table: ProtectedTable) -> Target | Unverified:
    """The statement's target when it is `table` and nothing else in it writes `table`."""
    target = target_of(tree.this)
    if target is None or not matches(target, table):
        return Unverified("not_target_table")
    if _nested_writes(tree, table, tree):
        return Unverified("unsupported", "data-modifying CTE on the same table")
    return target


def plan_write(
    template_sql: str, table: ProtectedTable, n_params: int = 0
) -> WritePlan | Unverified:
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
    assert text is not None  # parsed, so lexed
    if isinstance(tree, exp.Insert):
        return Unverified("not_target_table", "an INSERT: plan_insert's job")
    if not isinstance(tree, (exp.Update, exp.Delete)):
        if _nested_writes(tree, table, None):
            return Unverified(
                "unsupported", f"{type(tree).__name__.upper()} writing {table.qualified_name}"
            )
        return Unverified("not_target_table")
    target = _write_target(tree, table)
    if isinstance(target, Unverified):
        return target
    kind = "update" if isinstance(tree, exp.Update) else "delete"
    c = find_clauses(text, {TokenType.UPDATE, TokenType.DELETE})
    if c is None or (kind == "update" and (c.set_lo < 0 or c.set_lo >= c.set_hi)):
        return Unverified("unsupported", "could not locate the clauses")
    items: list[SetItem] = []
    if kind == "update":
        found = set_items(tree, text, c)  # type: ignore[arg-type]  # an Update
        if found is None:
            return Unverified("unsupported", "SET list")
        items = found

    def unpinned(reason: str, detail: str) -> WritePlan | Unverified:
        """A write no row of which can be checked. An UPDATE of a version table still bumps
        the version: relayed as written, it would change rows while leaving their version,
        and another session's checked write would then overwrite that change unseen."""
        bumps = _version_bumps(table, kind, target, items)
        if isinstance(bumps, Unverified) or bumps == (None, None):
            return Unverified(reason, detail)
        builder = GuardBuilder(
            text=text,
            table=table,
            kind=kind,
            clauses=c,
            target=target,
            pins=[],
            rows=[],
            items=items,
            checks={},
            sparse=[],
            bump=bumps[0],
            wrap_where=False,
            version_bump=bumps[1],
            key_array=False,
        )
        # no row's check runs, so its RETURNING (if any) teaches nothing
        return _write_plan(
            kind,
            table,
            (),
            items,
            (),
            c,
            builder,
            learns=False,
            unpinned=reason,
            forgets_tables=(table,),
        )

    where = tree.args.get("where")
    if where is None or c.where < 0 or c.where + 1 >= c.where_hi:
        return unpinned("no_key_pin", "no WHERE")
    conjuncts = where_conjuncts(where.this, c.where + 1, c.where_hi, text)
    if conjuncts is None:
        return unpinned("no_key_pin", "WHERE is not an AND chain we can read")
    pins: dict[str, Pin] = {}
    for node, lo, hi in conjuncts:
        pin = pin_of(node, lo, hi, text, target, table)
        if pin is not None and (pin.column not in pins or pins[pin.column].is_in and not pin.is_in):
            pins[pin.column] = pin
    missing = [k for k in table.key if k not in pins]
    if missing:
        return unpinned("no_key_pin", "key column(s) not pinned: " + ", ".join(missing))
    ordered = [pins[k] for k in table.key]
    if len(table.key) > 1 and any(p.is_in for p in ordered):
        reason = "key_array" if any(p.array for p in ordered) else "no_key_pin"
        return unpinned(reason, "composite keys must be pinned by equality")
    array = ordered[0].array
    n_rows = len(ordered[0].values)
    rows = [[p.values[i] if p.is_in else p.values[0] for p in ordered] for i in range(n_rows)]
    pinned = tuple(tuple(_key_ref(k, v) for k, v in zip(table.key, row)) for row in rows)
    checks, sparse = column_checks(table, kind, items)
    bumps = _version_bumps(table, kind, target, items)
    if isinstance(bumps, Unverified):
        return bumps
    bump, version_bump = bumps
    checked_columns = tuple(c_ for c_ in table.columns if c_ in checks or c_ in sparse)
    wrap = any(t.token_type == TokenType.OR for _, t in text.top(c.where + 1, c.where_hi))
    builder = GuardBuilder(
        text=text,
        table=table,
        kind=kind,
        clauses=c,
        target=target,
        pins=ordered,
        rows=rows,
        items=items,
        checks={col: checks[col] for col in table.columns if col in checks},
        sparse=[col for col in table.columns if col in sparse],
        bump=bump,
        wrap_where=wrap,
        version_bump=version_bump,
        key_array=array is not None,
    )
    return _write_plan(
        kind,
        table,
        pinned,
        items,
        checked_columns,
        c,
        builder,
        array_key=None if array is None else _key_ref(table.key[0], array),
    )


def _version_bumps(
    table: ProtectedTable, kind: str, target: Target, items: list[SetItem]
) -> tuple[str | None, str | None] | Unverified:
    """The SET item bumping the version, or the bump of the version the client writes."""
    if not (
        kind == "update"
        and table.mode in ("enforce", "audit")
        and table.strategy == "version"
        and table.version_column
        and table.bump != "none"
    ):
        return None, None
    v = table.version_column
    if table.bump == "increment":
        bumped = f"{column_ref(target.qualifier, v)} + 1"
    else:
        # clock_timestamp(), not statement_timestamp(): it is read when the row is written,
        # i.e. after the row lock was granted and the previous writer committed, so a new
        # version is always later than the one it replaces; statement_timestamp() is taken
        # before a lock wait and could equal/precede the version just committed.
        bumped = "clock_timestamp()"
    item = next((it for it in items if it.column == v), None)
    if item is None:
        return f", {quote_ident(v)} = {bumped}", None
    # the client writes the version itself: a form writing back every field sends the
    # version it read, which would leave it unchanged and let every stale write pass.
    # The proxy owns the column: never less than the bump (an ORM that increments it
    # itself gets the same value).
    if item.value is None or item.value.kind == "default":
        return Unverified("unsupported", f"{v} written from an expression we cannot name")
    return None, bumped


def _write_plan(
    kind: str,
    table: ProtectedTable,
    pinned: tuple[tuple[KeyRef, ...], ...],
    items: list[SetItem],
    checked: tuple[str, ...],
    c: Clauses,
    builder: GuardBuilder,
    *,
    learns: bool = True,
    **extra: Any,
) -> WritePlan:
    """The plan of an UPDATE (or an upsert's DO UPDATE) from what its planning found."""
    written = frozenset(it.column for it in items)
    return WritePlan(
        kind=kind,
        table=table,
        pinned_rows=pinned,
        written_columns=written,
        set_items={it.column: _set_item_ref(it) for it in items},
        checked_columns=checked,
        extra_returning=table.captured_columns,
        client_returning=c.returning >= 0,
        learned_columns=_learned_columns(table, written, checked) if learns else frozenset(),
        _builder=builder,
        **extra,
    )


def _learned_columns(
    table: ProtectedTable, written: frozenset[str], checked: tuple[str, ...]
) -> frozenset[str]:
    """What a checked row's RETURNING may teach: the columns written or verified, and the
    version (bumped after its check passed)."""
    version = (
        {table.version_column} if table.strategy == "version" and table.version_column else set()
    )
    return frozenset(written | set(checked) | version)


def _key_ref(column: str, value: Value) -> KeyRef:
    if value.kind == "param":
        return KeyRef(column, param=value.ref)  # type: ignore[arg-type]  # a param ref is its $n
    if isinstance(value.ref, int):
        return KeyRef(column, literal_slot=value.ref)
    return KeyRef(column, literal=value.ref)


def _set_item_ref(item: SetItem) -> tuple[str, object]:
    v = item.value
    if v is None:
        return ("expr", None)
    return (v.kind, v.ref)


def plan_insert(
    template_sql: str, table: ProtectedTable, n_params: int = 0
) -> InsertPlan | WritePlan | Unverified:
    """An INSERT on `table`: RETURNING the captured columns, nothing else changes."""
    try:
        return _plan_insert(template_sql, table)
    except Exception as exc:  # see plan_write
        return Unverified("unsupported", f"planner error: {type(exc).__name__}: {exc}")


def _plan_insert(template_sql: str, table: ProtectedTable) -> InsertPlan | WritePlan | Unverified:
    tree, text, error = _parse(template_sql)
    if tree is None:
        return Unverified("parse_error", error)
    assert text is not None  # parsed, so lexed
    if not isinstance(tree, exp.Insert):
        return Unverified("not_target_table")
    target = _write_target(tree, table)
    if isinstance(target, Unverified):
        return target
    c = find_clauses(text, {TokenType.INSERT})
    if c is None:
        return Unverified("unsupported", "could not locate the clauses")
    conflict = tree.args.get("conflict")
    on_conflict = None
    if conflict is not None:
        action = conflict.args.get("action")
        on_conflict = (
            "nothing" if "NOTHING" in str(getattr(action, "this", action)).upper() else "update"
        )
        if on_conflict == "update":
            upsert = _plan_upsert(tree, conflict, text, table, target)
            if upsert is not None:
                return upsert
    # the bump first: at the text's end it goes before the RETURNING added there
    edits = []
    if conflict is not None and on_conflict == "update":
        edits = _unverified_upsert_bump(conflict, text, table, target)
    edits.append(returning_edit(text, c, target.qualifier, table.captured_columns, table, "insert"))
    pieces = splice(text, edits)
    return InsertPlan(
        table=table,
        extra_returning=table.captured_columns,
        client_returning=c.returning >= 0,
        on_conflict=on_conflict,
        _pieces=pieces,
        _max_param=text.max_param,
    )


def _plan_upsert(
    tree: exp.Insert, conflict: exp.Expression, text: SqlText, table: ProtectedTable, target: Target
) -> WritePlan | None:
    """`INSERT INTO t [(cols)] VALUES (<one row>) ON CONFLICT (<key>) DO UPDATE SET ...`: the
    row it may update is the one with the inserted key, checked in the DO UPDATE's WHERE
    (through the guard function: a WHERE merely false would skip the row silently). A row
    absent is simply inserted. None: another shape, left to InsertPlan (unverified upsert)."""
    if table.mode not in ("enforce", "audit") or conflict.args.get("index_predicate"):
        return None
    keys = conflict.args.get("conflict_keys") or []
    folded = set()
    for k in keys:
        node = k.this if isinstance(k, exp.Ordered) else k
        if not isinstance(node, exp.Column) or node.args.get("table") is not None:
            return None
        folded.add(fold_ident(node.this))
    if len(keys) != len(table.key) or folded != set(table.key):
        return None  # another arbiter (or ON CONSTRAINT): which row conflicts is not the key's
    values = tree.expression
    if not isinstance(values, exp.Values) or len(values.expressions) != 1:
        return None
    row = values.expressions[0]
    if not isinstance(row, exp.Tuple):
        return None
    schema = tree.this
    if isinstance(schema, exp.Schema) and schema.expressions:
        names = [
            fold_ident(c) if isinstance(c, exp.Identifier) else None for c in schema.expressions
        ]
    else:
        names = list(table.columns)
    if None in names or len(names) < len(row.expressions):
        return None
    # where things are: the VALUES row, DO UPDATE SET items, their WHERE, RETURNING
    toks, n = text.toks, len(text.toks)
    top = list(text.top(0, n, 0))
    at = {i: t for i, t in top}
    v = next((i for i, t in top if t.token_type == TokenType.VALUES), None)
    if v is None or v + 1 >= n or toks[v + 1].token_type != TokenType.L_PAREN:
        return None
    close = text.match.get(v + 1)
    if close is None or at.get(close + 1) is None or toks[close + 1].token_type != TokenType.ON:
        return None
    chunks = text.split(v + 2, close, TokenType.COMMA)
    if len(chunks) != len(row.expressions) or any(a >= b for a, b in chunks):
        return None
    c = _do_update(text, close)
    if c is None:
        return None
    key_values: dict[str, Value] = {}
    for name, node, (a, b) in zip(names, row.expressions, chunks):
        if name in table.key:
            value = classify_value(node, text.span(a, b), text)
            if value.kind not in ("literal", "param"):
                return None
            key_values[name] = value
    if set(key_values) != set(table.key):
        return None
    items = set_items(conflict, text, c)  # type: ignore[arg-type]  # has the SET expressions
    if items is None or any(it.column in table.key for it in items):
        return None  # a DO UPDATE moving the key: the row it leaves is not the one read
    bumps = _version_bumps(table, "update", target, items)
    if isinstance(bumps, Unverified):
        return None
    checks, _ = column_checks(table, "update", items)
    key_row = [key_values[k] for k in table.key]
    pins = [Pin(k, [key_values[k]], key_values[k].span, False) for k in table.key]
    checked_columns = tuple(col for col in table.columns if col in checks)
    builder = GuardBuilder(
        text=text,
        table=table,
        kind="update",
        clauses=c,
        target=target,
        pins=pins,
        rows=[key_row],
        items=items,
        checks={col: checks[col] for col in table.columns if col in checks},
        sparse=[],
        bump=bumps[0],
        wrap_where=c.where >= 0,
        version_bump=bumps[1],
        upsert=True,
    )
    pinned = (tuple(_key_ref(k, val) for k, val in zip(table.key, key_row)),)
    return _write_plan("update", table, pinned, items, checked_columns, c, builder, upsert=True)


def _do_update(text: SqlText, after: int = 0) -> Clauses | None:
    """Where the DO UPDATE of `ON CONFLICT ... DO UPDATE SET` has its SET items, WHERE and
    RETURNING (top-level tokens after `after`); None when they cannot be located."""
    toks, n = text.toks, len(text.toks)
    top = list(text.top(0, n, 0))
    do = next((i for i, t in top if i > after and t.text.upper() == "DO"), None)
    if (
        do is None
        or do + 2 >= n
        or toks[do + 1].token_type != TokenType.UPDATE
        or toks[do + 2].token_type != TokenType.SET
    ):
        return None
    c = Clauses(main=0, set_lo=do + 3)
    for i, t in top:
        if i <= do + 2:
            continue
        if t.token_type == TokenType.WHERE and c.where < 0:
            c.where = i
        elif t.token_type == TokenType.RETURNING:
            c.returning = i
            break
    c.set_hi = next(x for x in (c.where, c.returning, n) if x >= 0)
    if c.where >= 0:
        c.where_hi = c.returning if c.returning >= 0 else n
        if c.where + 1 >= c.where_hi:
            return None
    if c.set_lo >= c.set_hi:
        return None
    return c


def _unverified_upsert_bump(
    conflict: exp.Expression, text: SqlText, table: ProtectedTable, target: Target
) -> list[Edit]:
    """An upsert that cannot be checked still bumps the version in its DO UPDATE, as a bulk
    UPDATE does: relayed as written it would change a row and leave its version, and another
    session's checked write would then overwrite that change unseen."""
    c = _do_update(text)
    if c is None:
        return []
    items = set_items(conflict, text, c)  # type: ignore[arg-type]  # has the SET expressions
    if items is None:
        return []
    bumps = _version_bumps(table, "update", target, items)
    if isinstance(bumps, Unverified):
        return []
    return bump_edits(text, c, {it.column: it for it in items}, bumps[0], bumps[1], table)
