"""Capturing reads from result rows, without parsing any SELECT.

A RowDescription names, for every plain column reference, the table OID and attribute number.
When a result carries the whole key of a protected table, each DataRow yields that row's key and
the values of the checked columns it also carries.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from proxy.rules.protected import ProtectedTable
from proxy.values import ReadValue, normalize_key
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


def plan_capture(
    fields: Sequence[Field],
    protected: Mapping[int, ProtectedTable],
    attnames: Mapping[int, Mapping[int, str]],
) -> CapturePlan | None:
    """fields: RowDescription fields; protected: table oid -> table; attnames: oid -> attnum -> name."""
    by_table: dict[int, dict[str, tuple[int, int]]] = {}
    ambiguous: set[int] = set()
    for position, f in enumerate(fields):
        oid = f.table_oid
        if oid == 0 or oid not in protected:
            continue
        name = attnames.get(oid, {}).get(f.attnum)
        if name is None:
            continue
        cols = by_table.setdefault(oid, {})
        if name in cols:
            ambiguous.add(oid)  # the same table twice (a self-join): which row is which?
        cols[name] = (position, f.type_oid)
    captures = []
    for oid, cols in by_table.items():
        table = protected[oid]
        if oid in ambiguous or not all(k in cols for k in table.key):
            continue
        wanted = set(table.captured_columns) - set(table.key)
        columns = tuple((c, p, t) for c, (p, t) in cols.items() if c in wanted)
        if not columns:
            continue
        captures.append(
            TableCapture(
                table,
                tuple(cols[k][0] for k in table.key),
                tuple(cols[k][1] for k in table.key),
                columns,
            )
        )
    if not captures:
        return None
    return CapturePlan(tuple(captures), tuple(f.format for f in fields))


def capture_row(
    plan: CapturePlan, values: Sequence[bytes | None], encoding: str = "utf-8"
) -> Iterator[tuple[ProtectedTable, tuple[Hashable, ...], dict[str, ReadValue]]]:
    """Yield (table, key, {column: ReadValue}) for each protected table in the row."""
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
        row = {c: ReadValue(formats[p], t, values[p]) for c, p, t in tc.columns}
        yield tc.table, key, row
