"""Planning the writes of a WITH statement: `WITH u AS (UPDATE t SET ... WHERE id = 1
RETURNING ...) SELECT ... FROM u`, data-modifying CTEs and a main statement that writes.

Each UPDATE / DELETE (and a main MERGE) is planned on its own text by the top-level planner,
and its edits are spliced back in place: an UPDATE or DELETE that pins the key of a protected
table by equality gets the same guard (checks, presence subquery, version bump) as on its own.
One write is checked per statement (the proxy follows one table's reads per statement), and
only when no other write of the statement touches its table (they see one snapshot and would
not see each other's changes). Every other write of a protected table is unverified
`with_clause`; an UPDATE of a version table among them still bumps the version (like a bulk
UPDATE), so another session's later checked write sees its change.

No RETURNING may be added inside a CTE (it would change the CTE's columns, and a `SELECT *`
over it the client's result), so nothing is learned: the checked rows are forgotten once the
statement completes (WritePlan.forget_pinned), never left at a version the bump moved on. A
`notify` rule sends nothing for these writes (its notification is a RETURNING item)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.tokens import TokenType

from proxy.conflicts import guard_schema_sql
from proxy.rewrite.clauses import Clauses
from proxy.rewrite.guards import GuardBuilder, splice
from proxy.rewrite.merge import plan_merge
from proxy.rewrite.pins import matches, target_of
from proxy.rewrite.planner import (
    WritePlan,
    _parse,
    _unverified_upsert_bump,
    _write_plan,
    plan_write,
)
from proxy.rewrite.render import compile_pieces
from proxy.rewrite.tokens import SqlText
from proxy.rules.protected import ProtectedTable

__all__ = ["WithPlan", "plan_with"]

TableFor = Callable[[str | None, str], ProtectedTable | None]

_WRITES = (exp.Update, exp.Delete, exp.Insert, exp.Merge)
_MAIN_WORDS = {
    TokenType.SELECT,
    TokenType.UPDATE,
    TokenType.DELETE,
    TokenType.INSERT,
    TokenType.MERGE,
    TokenType.VALUES,
    TokenType.TABLE,
    TokenType.L_PAREN,
}


@dataclass(frozen=True)
class WithPlan:
    """What a WITH statement writes: `plan` covers the whole statement (the checked write's
    guard, every bump) and is counted for `table` (checked, or its reason); every write in
    `unverified` is counted `with_clause`, once each."""

    table: ProtectedTable | None
    plan: WritePlan | None
    unverified: tuple[ProtectedTable, ...]


class CteGuardBuilder(GuardBuilder):
    """The whole statement: the client's text with each planned write's own pieces in place.
    Assembles what the inner builders build; needs none of GuardBuilder's own state."""

    def __init__(self, text: SqlText, parts: list[_Part], functions: str) -> None:
        self.text = text  # the whole statement's: extra parameters follow all of its $n
        self.parts = parts
        self.functions = functions

    def build(self, mask: tuple[bool, ...]) -> tuple[object, ...]:
        out: list[object] = []
        pos = 0
        for part in self.parts:
            out += self.text.pieces(pos, part.start)
            if isinstance(part.inner, GuardBuilder):
                # only the checked write sees the mask; the others only bump (no row read)
                out += part.inner.build(mask if part.checked else ())
            else:
                out += part.inner
            pos = part.end
        out += self.text.pieces(pos, len(self.text.sql))
        return compile_pieces(out)

    def returns(self, checked: bool) -> bool:
        return False  # nothing may be added to a CTE's RETURNING: learn nothing, forget


@dataclass
class _Part:
    write: _Write
    start: int  # characters of the write in the whole statement
    end: int
    inner: GuardBuilder | tuple[object, ...]  # its builder, or its fixed pieces
    checked: bool = False


@dataclass
class _Write:
    node: exp.Expression
    table: ProtectedTable
    span: tuple[int, int] | None  # token range, None: not where a WITH may write


def plan_with(template_sql: str, table_for: TableFor) -> WithPlan | None:
    """Plan a WITH statement's writes of protected tables (`table_for` resolves a written
    table); None when it is not a WITH statement this module reads (or does not parse)."""
    try:
        return _plan_with(template_sql, table_for)
    except Exception:  # a planner bug must cost unchecked writes (the caller's fallback)
        return None


def _plan_with(template_sql: str, table_for: TableFor) -> WithPlan | None:
    tree, text, _ = _parse(template_sql)
    if tree is None:
        return None
    assert text is not None  # parsed, so lexed
    with_ = tree.args.get("with_") or tree.args.get("with")
    if not isinstance(with_, exp.With):
        return None
    spans = _locate(text)
    ctes = list(with_.expressions)
    if spans is None or len(spans[0]) != len(ctes):
        return None
    bodies, main = spans
    where: dict[int, tuple[int, int]] = {id(tree): main}
    for cte, span in zip(ctes, bodies):
        where[id(cte.this)] = span
    writes: list[_Write] = []
    for node in tree.find_all(*_WRITES):
        target = target_of(node.this)
        table = None if target is None else table_for(target.schema, target.name)
        if table is not None and matches(target, table):  # type: ignore[arg-type]  # not None
            writes.append(_Write(node, table, where.get(id(node))))
    if not writes:
        return WithPlan(None, None, ())
    per_table: dict[int, int] = {}
    for w in writes:
        per_table[w.table.oid] = per_table.get(w.table.oid, 0) + 1
    parts: list[_Part] = []
    chosen: tuple[_Write, WritePlan] | None = None
    for w in writes:
        if w.span is None:
            continue  # not where PostgreSQL lets a WITH write: its error, not ours
        start, end = text.span(*w.span)
        sub = template_sql[start:end]
        if isinstance(w.node, exp.Insert):
            pieces = _upsert_bump(sub, w.table)
            if pieces is not None:
                parts.append(_Part(w, start, end, pieces))
            continue
        if isinstance(w.node, exp.Merge) and w.node is not tree:
            continue
        planner = plan_merge if isinstance(w.node, exp.Merge) else plan_write
        plan = planner(sub, w.table)
        if not isinstance(plan, WritePlan):
            continue  # nothing to add: relayed as written, with_clause
        inner = plan._builder
        inner.adds_returning = False  # a column added there changes the CTE's columns
        pinned = plan.unpinned is None and (bool(plan.pinned_rows) or plan.array_key is not None)
        checked = chosen is None and pinned and per_table[w.table.oid] == 1
        if checked:
            chosen = (w, plan)
        parts.append(_Part(w, start, end, inner, checked))
    if not parts:
        return WithPlan(None, None, tuple(x.table for x in writes))
    # the rows the unchecked parts change (and bump) are unknown: their tables are forgotten
    unnamed = tuple({p.write.table.oid: p.write.table for p in parts if not p.checked}.values())
    functions = guard_schema_sql(parts[0].write.table.guard_schema)
    builder = CteGuardBuilder(text, parts, functions)
    if chosen is not None:
        owner, inner_plan = chosen
        plan = dataclasses.replace(
            inner_plan,
            _builder=builder,
            client_returning=True,  # the statement's result is the client's, as it wrote it
            learned_columns=frozenset(),
            forget_pinned=True,
            forgets_tables=unnamed,
            _compiled={},
        )
    else:
        # nothing checked, only bumps: counted for the first bumped write, `with_clause`
        owner = parts[0].write
        plan = _write_plan(
            "update",
            owner.table,
            (),
            [],
            (),
            Clauses(main=0, returning=0),
            builder,
            learns=False,
            unpinned="with_clause",
            forget_pinned=True,
            forgets_tables=unnamed,
        )
    return WithPlan(owner.table, plan, tuple(x.table for x in writes if x is not owner))


def _locate(text: SqlText) -> tuple[list[tuple[int, int]], tuple[int, int]] | None:
    """Token ranges of each CTE's body and of the main statement:
    `WITH [RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (body), ... main`."""
    toks, match, n = text.toks, text.match, len(text.toks)
    if not toks or toks[0].token_type != TokenType.WITH:
        return None
    i = 1
    if i < n and toks[i].token_type == TokenType.RECURSIVE:
        i += 1
    bodies: list[tuple[int, int]] = []
    while True:  # tokens[i]: a CTE's name
        i += 1
        if i < n and toks[i].token_type == TokenType.L_PAREN:  # its column names
            close = match.get(i)
            if close is None:
                return None
            i = close + 1
        if i >= n or toks[i].token_type != TokenType.ALIAS:
            return None
        i += 1
        if i < n and toks[i].token_type == TokenType.NOT:
            i += 1
        if i < n and toks[i].text.upper() == "MATERIALIZED":
            i += 1
        if i >= n or toks[i].token_type != TokenType.L_PAREN:
            return None
        close = match.get(i)
        if close is None or close == i + 1:
            return None
        bodies.append((i + 1, close))
        i = close + 1
        if i < n and toks[i].token_type == TokenType.COMMA:
            i += 1
            continue
        break
    if i >= n or toks[i].token_type not in _MAIN_WORDS:
        return None  # SEARCH / CYCLE clauses, or what we cannot read
    return bodies, (i, n)


def _upsert_bump(sub: str, table: ProtectedTable) -> tuple[object, ...] | None:
    """An INSERT ... ON CONFLICT ... DO UPDATE: its DO UPDATE bumps the version, as a top-level
    unverified upsert's does; None when there is nothing to add."""
    tree, text, _ = _parse(sub)
    if not isinstance(tree, exp.Insert) or text is None:
        return None
    conflict = tree.args.get("conflict")
    target = target_of(tree.this)
    if conflict is None or target is None:
        return None
    edits = _unverified_upsert_bump(conflict, text, table, target)
    return splice(text, edits) if edits else None
