"""Capturing reads from result rows.

A RowDescription names, for every plain column reference, the table (or view) OID and attribute
number. When a result carries the whole key of a protected table, each DataRow yields that row's
key and the values of the checked columns it also carries, with no SQL parsed. A result with
checked columns but no key is a KeylessCapture: only its statement can say which row it is.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from proxy.catalog_views import SimpleView
from proxy.rules.protected import ProtectedTable
from proxy.values import ReadSettings, ReadValue, normalize_key
from proxy.wire.framing import ProtocolViolation
from proxy.wire.messages import Field


@dataclass(frozen=True, slots=True)
class TableCapture:
    table: ProtectedTable
    key_positions: tuple[int, ...]
    key_types: tuple[int, ...]
    # (column name, position in the row, type oid)
    columns: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class CapturePlan:
    tables: tuple[TableCapture, ...]
    formats: tuple[int, ...]

    def with_formats(self, result_formats: Sequence[int], width: int) -> CapturePlan:
        """The same plan for a portal bound with these result format codes."""
        if not result_formats:
            formats = (0,) * width
        elif len(result_formats) == 1:
            formats = (result_formats[0],) * width
        else:
            formats = tuple(result_formats[:width]) + (0,) * (width - len(result_formats))
        return CapturePlan(self.tables, formats)


@dataclass(frozen=True, slots=True)
class KeylessCapture:
    """Checked columns of one protected table without its key (`SELECT balance FROM accounts
    WHERE id = 1`): which row they are must come from the statement (proxy.locking.pinned)."""

    table: ProtectedTable
    source_oid: int  # the table, or the simple view the result names
    columns: tuple[tuple[str, int, int], ...]
    formats: tuple[int, ...]

    def with_formats(self, result_formats: Sequence[int], width: int) -> KeylessCapture:
        plan = CapturePlan((), self.formats).with_formats(result_formats, width)
        return KeylessCapture(self.table, self.source_oid, self.columns, plan.formats)


def plan_capture(
    fields: Sequence[Field],
    protected: Mapping[int, ProtectedTable],
    attnames: Mapping[int, Mapping[int, str]],
    views: Mapping[int, SimpleView] | None = None,
) -> CapturePlan | KeylessCapture | None:
    """fields: RowDescription fields; protected: table oid -> table; attnames: oid -> attnum ->
    name; views: simple views over protected tables (a view's columns are its base table's)."""
    # the common case, a result of tables without rules: one OID lookup per column, nothing built
    for f in fields:
        oid = f.table_oid
        if oid and (oid in protected or (views and oid in views)):
            break
    else:
        return None
    # per relation the result names (a table or a view): base table oid, column -> (pos, type)
    by_source: dict[int, tuple[int, dict[str, tuple[int, int]]]] = {}
    ambiguous: set[int] = set()
    for position, f in enumerate(fields):
        oid = f.table_oid
        if oid == 0:
            continue
        if oid in protected:
            base, name = oid, attnames.get(oid, {}).get(f.attnum)
        elif views and oid in views:
            view = views[oid]
            base, name = view.base_oid, view.columns.get(f.attnum)
        else:
            continue
        if name is None or base not in protected:
            continue
        cols = by_source.setdefault(oid, (base, {}))[1]
        if name in cols:
            ambiguous.add(base)  # the same table twice (a self-join): which row is which?
        cols[name] = (position, f.type_oid)
    bases = [base for base, _ in by_source.values()]
    ambiguous.update(b for b in bases if bases.count(b) > 1)  # a table and a view over it
    captures = []
    keyless = []
    for source, (oid, cols) in by_source.items():
        table = protected[oid]
        if oid in ambiguous:
            continue
        wanted = set(table.captured_columns) - set(table.key)
        columns = tuple((c, p, t) for c, (p, t) in cols.items() if c in wanted)
        if not columns:
            continue
        if not all(k in cols for k in table.key):
            keyless.append(KeylessCapture(table, source, columns, ()))
            continue
        captures.append(
            TableCapture(
                table,
                tuple(cols[k][0] for k in table.key),
                tuple(cols[k][1] for k in table.key),
                columns,
            )
        )
    formats = tuple(f.format for f in fields)
    if captures:
        return CapturePlan(tuple(captures), formats)
    if len(keyless) == 1 and len(by_source) == 1:
        # one relation without its key: the statement may still pin which row it is
        k = keyless[0]
        return KeylessCapture(k.table, k.source_oid, k.columns, formats)
    return None


def capture_row(
    plan: CapturePlan,
    values: Sequence[bytes | None],
    encoding: str = "utf-8",
    settings: ReadSettings | None = None,
) -> Iterator[tuple[ProtectedTable, tuple[Hashable, ...], dict[str, ReadValue]]]:
    """Yield (table, key, {column: ReadValue}) for each protected table in the row, read
    under `settings`."""
    formats = plan.formats
    if len(values) != len(formats):
        raise ProtocolViolation("DataRow does not match its RowDescription")
    for tc in plan.tables:
        key = tuple(
            normalize_key(t, formats[p], values[p], encoding)
            for p, t in zip(tc.key_positions, tc.key_types)
        )
        if None in key:
            continue
        row = {c: ReadValue(formats[p], t, values[p], settings) for c, p, t in tc.columns}
        yield tc.table, key, row
