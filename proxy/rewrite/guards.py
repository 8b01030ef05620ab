"""Assembling the guarded statement: edits spliced into the client's text (checks, presence
subquery, version bump, sparse CASEs, RETURNING additions) as render pieces."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.conflicts import guard_schema_sql
from proxy.rewrite.clauses import Clauses
from proxy.rewrite.pins import Pin, SetItem, Target, Value
from proxy.rewrite.render import (
    Own,
    Read,
    Same,
    Shown,
    cast,
    column_ref,
    compile_pieces,
    jsonb_object,
)
from proxy.rewrite.tokens import SqlText
from proxy.rules.protected import ProtectedTable
from proxy.sqlnames import quote_ident, quote_literal_any

__all__ = ["Edit", "GuardBuilder", "bump_edits", "returning_edit", "splice"]


@dataclass(frozen=True)
class Edit:
    start: int
    end: int  # == start for an insertion
    pieces: tuple[object, ...]


def splice(text: SqlText, edits: list[Edit]) -> tuple[object, ...]:
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
    version = (
        column_ref(qualifier, table.version_column)
        if table.strategy == "version" and table.version_column
        else "NULL"
    )
    payload = (
        f"json_build_object('table', {quote_literal_any(table.qualified_name)}, "
        f"'op', '{op}', 'key', json_build_object({key}), 'version', {version})::text"
    )
    return f"pg_notify({quote_literal_any(table.notify)}, {payload})"  # type: ignore[arg-type]  # only for tables that notify


def returning_edit(
    text: SqlText,
    c: Clauses,
    qualifier: str,
    columns: Sequence[str],
    table: ProtectedTable | None = None,
    op: str = "update",
    overrides: dict[str, list[object]] | None = None,
) -> Edit:
    """RETURNING grows by the captured columns, then (rules with `notify`) the notification;
    the proxy strips all of them before the client sees its rows. `overrides`: the expression
    to return instead of a column (what the session now knows of it, not what the row holds)."""
    pieces: list[object] = [", " if c.returning >= 0 else " RETURNING "]
    for n, col in enumerate(columns):
        if n:
            pieces.append(", ")
        if overrides and col in overrides:
            pieces += overrides[col]
        else:
            pieces.append(column_ref(qualifier, col))
    if table is not None and table.notify:
        pieces.append(", " + _notify_expr(table, qualifier, op))
    return Edit(text.end, text.end, tuple(pieces))


def bump_edits(
    text: SqlText,
    c: Clauses,
    items: dict[str, SetItem],
    bump: str | None,
    version_bump: str | None,
    table: ProtectedTable,
) -> list[Edit]:
    """The version bump of one SET list: `, v = q.v + 1` after its items, or, when the client
    writes the version itself, its value wrapped as GREATEST(<its value>, <the bump>)."""
    edits = []
    if bump is not None:
        end = text.span(c.set_lo, c.set_hi)[1]
        edits.append(Edit(end, end, (bump,)))
    if version_bump is not None and table.version_column is not None:
        value = items[table.version_column].value
        assert value is not None
        edits.append(
            Edit(
                value.span[0],
                value.span[1],
                ("GREATEST((", *text.pieces(*value.span), "), ", version_bump, ")"),
            )
        )
    return edits


class GuardBuilder:
    """Everything needed to assemble the guarded statement for one set of read rows."""

    # whether the guard may excuse a row version of the session's own transaction (its own
    # trigger's change: proxy.locking.side_effects), which needs the row's xmin
    excuses_own_changes = True

    def __init__(
        self,
        *,
        text: SqlText,
        table: ProtectedTable,
        kind: str,
        clauses: Clauses,
        target: Target,
        pins: list[Pin],
        rows: list[list[Value]],
        items: list[SetItem],
        checks: dict[str, str],
        sparse: list[str],
        bump: str | None,
        wrap_where: bool,
        version_bump: str | None = None,
        key_array: bool = False,
        upsert: bool = False,
    ) -> None:
        self.text = text
        self.table = table
        self.kind = kind
        self.c = clauses
        self.q = target.qualifier
        self.pins = pins
        self.rows = rows  # rows[i][k]: value of key column k for pinned row i
        # `= ANY(<array>)`: as many rows as the mask says, each key a Read hole of the key
        # column (the caller fills it with that element); always dispatched by key
        self.key_array = key_array
        self.dispatch = key_array or len(rows) > 1
        # an upsert's DO UPDATE: the check goes into its WHERE, no presence (absent: inserted)
        self.upsert = upsert
        self.items = {it.column: it for it in items}
        self.checks = checks  # column -> 'plain' | 'differing', in checked order
        self.sparse = sparse
        self.bump = bump
        # the bump of a version column the client writes itself (a form writing back the
        # version it read): its value becomes GREATEST(client's, bump)
        self.version_bump = version_bump
        self.wrap_where = wrap_where
        # False inside a WITH (proxy.rewrite.cte): a column added there changes the CTE's
        self.adds_returning = True
        guarded = table.mode in ("enforce", "audit")
        self.guarded = guarded
        suffix = "_audit" if table.mode == "audit" else ""
        # the schema of the guard functions, as written before their names (render's too)
        self.functions = guard_schema_sql(table.guard_schema)
        self.f_modified = self.functions + ".optimist_modified" + suffix
        self.f_present = self.functions + ".optimist_present" + suffix
        self.info = quote_literal_any(
            json.dumps(
                {
                    "table": table.qualified_name,
                    "schema": table.schema,
                    "name": table.name,
                    "key": list(table.key),
                    "op": kind,
                },
                ensure_ascii=False,
                separators=(",", ":"),
            )
        )
        key_written = any(k in self.items for k in table.key)
        self.lock = "FOR UPDATE" if kind == "delete" or key_written else "FOR NO KEY UPDATE"
        self.relation = (
            ("ONLY " if clauses.only else "")
            + quote_ident(table.schema)
            + "."
            + quote_ident(table.name)
        )

    # ---- small pieces

    def col(self, column: str) -> str:
        return column_ref(self.q, column)

    def value(self, v: Value) -> list[object]:
        return self.text.pieces(*v.span)

    def new_value(self, column: str) -> list[object] | None:
        item = self.items.get(column)
        if item is None or item.value is None or not item.value.referenceable:
            return None
        return cast(self.value(item.value), self.table.column_types[column])

    def read(self, row: int, column: str) -> Read:
        return Read(row, column, self.table.column_types[column])

    def key_value(self, row: int, n: int) -> list[object]:
        """Key column n of pinned row `row`, typed as the column."""
        column = self.table.key[n]
        if self.key_array:
            return [self.read(row, column)]
        return cast(self.value(self.rows[row][n]), self.table.column_types[column])

    def same(self, row: int, column: str, expr: list[object]) -> list[object]:
        """`expr` still holds what was read (compared in the domain it was read in)."""
        sql_type = self.table.column_types[column]
        return [Same(row, column, sql_type, False), *expr, Same(row, column, sql_type, True)]

    def row_pin(self, row: int) -> list[object]:
        out: list[object] = []
        for n, k in enumerate(self.table.key):
            if out:
                out.append(" AND ")
            if self.key_array:
                out += [self.col(k), " = ", *self.key_value(row, n)]
            else:
                out += [self.col(k), " = ", *self.value(self.rows[row][n])]
        return out

    def key_json(self, row: int | None) -> list[object]:
        if row is None:  # inside the presence subquery: the scanned row's own key
            return jsonb_object([(k, [quote_ident(k)]) for k in self.table.key])
        return jsonb_object([(k, self.key_value(row, n)) for n, k in enumerate(self.table.key)])

    # ---- checks

    def column_check(self, row: int, column: str) -> list[object]:
        plain = self.same(row, column, [self.col(column)])
        check = plain
        if self.checks.get(column) == "differing":
            new = self.new_value(column)
            if new is not None:
                check = ["(", *plain, " OR ", self.col(column), " IS NOT DISTINCT FROM ", *new, ")"]
        if column in self.sparse:
            # writing back what was read is not a write: no conflict on that column
            new = self.new_value(column)
            check = ["(", *self.same(row, column, new), " OR ", *check, ")"]  # type: ignore[arg-type]  # a sparse column has a new value
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
            state_columns.append(
                (
                    column,
                    [
                        "jsonb_build_array(to_jsonb(",
                        Shown(row, column, self.table.column_types[column]),
                        "), to_jsonb(",
                        self.col(column),
                        "), ",
                        *(["to_jsonb(", *attempted, ")"] if attempted is not None else ["NULL"]),
                        ", to_jsonb(",
                        *self.column_check(row, column),
                        "))",
                    ],
                )
            )
        pairs = [("key", self.key_json_current()), ("columns", jsonb_object(state_columns))]
        if self.excuses_own_changes:
            # the session's own side effects: excused by the function (proxy.conflicts)
            pairs += [("own", [Own(row)]), ("xmin", [self.col("xmin"), "::text"])]
        state = jsonb_object(pairs)
        return ["(", *out, " OR ", self.f_modified, "(", self.info, ", ", *state, "))"]

    def key_json_current(self) -> list[object]:
        return jsonb_object([(k, [self.col(k)]) for k in self.table.key])

    # ---- assembly

    def build(self, mask: tuple[bool, ...]) -> tuple[object, ...]:
        text, c = self.text, self.c
        edits: list[Edit] = []
        rows = [i for i, read in enumerate(mask) if read]
        guarded = self.guarded and bool(rows)
        if guarded:
            for column in self.sparse:
                edits.append(self.sparse_edit(column, rows))
        edits += bump_edits(text, c, self.items, self.bump, self.version_bump, self.table)
        if guarded and self.upsert:
            check = self.row_checks(0)
            if check is not None and c.where >= 0:
                where_end = text.span(c.where + 1, c.where_hi)[1]
                edits += self.wrapped_where(c, where_end)
                edits.append(Edit(where_end, where_end, (" AND ", *check)))
            elif check is not None:
                end = text.span(c.set_lo, c.set_hi)[1]
                edits.append(Edit(end, end, (" WHERE ", *check)))
        elif guarded:
            where_end = text.span(c.where + 1, c.where_hi)[1]
            if self.wrap_where:
                after_where = text.toks[c.where].end + 1
                edits.append(Edit(after_where, after_where, (" (",)))
                edits.append(Edit(where_end, where_end, (")",)))
            edits.append(Edit(where_end, where_end, tuple(self.guard(rows))))
        if not self.returns(bool(rows)):
            return splice(text, edits)
        overrides = (
            {column: self.sparse_known(column, rows) for column in self.sparse} if guarded else None
        )
        edits.append(
            returning_edit(
                text, c, self.q, self.table.captured_columns, self.table, self.kind, overrides
            )
        )
        return splice(text, edits)

    def wrapped_where(self, c: Clauses, where_end: int) -> list[Edit]:
        """The client's WHERE in parentheses, so that what the proxy ANDs to it binds to all."""
        after_where = self.text.toks[c.where].end + 1
        return [Edit(after_where, after_where, (" (",)), Edit(where_end, where_end, (")",))]

    def guard(self, rows: list[int]) -> list[object]:
        out: list[object] = []
        per_row = [(i, self.row_checks(i)) for i in rows]
        if any(check is not None for _, check in per_row):
            if not self.dispatch:
                out += [" AND ", *per_row[0][1]]  # type: ignore[misc]  # the one row has a check
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

    def unqualified_pin(self, pin: Pin) -> list[object]:
        col = quote_ident(pin.column)
        if pin.array is not None:
            return [col, " = ANY(", *self.value(pin.array), ")"]
        if not pin.is_in:
            return [col, " = ", *self.value(pin.values[0])]
        out: list[object] = [col, " IN ("]
        for n, v in enumerate(pin.values):
            if n:
                out.append(", ")
            out += self.value(v)
        out.append(")")
        return out

    def returns(self, checked: bool) -> bool:
        """Whether the checked form adds RETURNING items: not to an UPDATE that checks no row
        (a write is not a read: nothing for the session to learn, decode or strip)."""
        if not self.adds_returning:
            return False
        return checked or self.kind != "update" or self.upsert or bool(self.table.notify)

    def sparse_known(self, column: str, rows: list[int]) -> list[object]:
        """What the session knows of a sparse column after the write: the value it read when
        the write left the column alone (the row may hold another session's value the session
        never saw), else the value it wrote."""
        new = self.new_value(column)
        assert new is not None
        out: list[object] = ["CASE"]
        for i in rows:
            out.append(" WHEN ")
            if self.dispatch:
                out += [*self.row_pin(i), " AND "]
            out += [*self.same(i, column, new), " THEN ", self.read(i, column)]
        out += [" ELSE ", self.col(column), " END"]
        return out

    def sparse_edit(self, column: str, rows: list[int]) -> Edit:
        item = self.items[column]
        original = self.value(item.value)  # type: ignore[arg-type]  # a sparse column has a new value
        new = self.new_value(column)
        out: list[object] = ["CASE"]
        for i in rows:
            out.append(" WHEN ")
            if self.dispatch:
                out += [*self.row_pin(i), " AND "]
            out += [*self.same(i, column, new), " THEN ", self.col(column)]  # type: ignore[arg-type]
        out += [" ELSE ", *original, " END"]
        return Edit(item.value.span[0], item.value.span[1], tuple(out))  # type: ignore[union-attr]
