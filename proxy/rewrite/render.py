"""Rendering: SQL assembled from pieces, filled in per execution.

The planner turns a statement into a tuple of *pieces*: plain strings (the client's own text and
our additions), `Lit(slot)` holes for the literals normalize() took out, and `Read(row, column,
type)` holes for the values the session read. Filling a compiled piece tuple is a join: no
parsing and no regex at execution time, which is what keeps a cached simple-protocol write at a
few microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from proxy.sqlnames import quote_ident, quote_literal, quote_literal_any

__all__ = [
    "Lit",
    "Piece",
    "Read",
    "RenderedSql",
    "cast",
    "compile_pieces",
    "fill_extended",
    "fill_simple",
    "jsonb_object",
]


class Lit(NamedTuple):
    """The normalize() literal number `slot`, put back verbatim."""

    slot: int


class Read(NamedTuple):
    """What the session read in `column` of pinned row `row`, as a value of SQL type `type`."""

    row: int
    column: str
    type: str


Piece = "str | Lit | Read"


class RenderedSql(NamedTuple):
    sql: str
    # one (pinned row index, column) per extra $n parameter, in parameter order: bind the value
    # the session read in that column of that row
    extra_params: tuple[tuple[int, str], ...] = ()


def compile_pieces(pieces: Iterable[object]) -> tuple[object, ...]:
    """Merge adjacent strings so filling does the least work."""
    out: list[object] = []
    buf: list[str] = []
    for p in pieces:
        if isinstance(p, str):
            buf.append(p)
        else:
            if buf:
                out.append("".join(buf))
                buf = []
            out.append(p)
    if buf:
        out.append("".join(buf))
    return tuple(out)


def fill_simple(
    pieces: Sequence[object],
    literals: Sequence[str],
    reads: Sequence[Mapping[str, str | None] | None],
    scs: bool,
) -> str:
    """Literals back in place, read values inlined as CAST('<text>' AS <type>)."""
    out: list[str] = []
    append = out.append
    p: Any  # a str, Lit or Read, told apart by exact type (cheaper than isinstance)
    for p in pieces:
        t = type(p)
        if t is str:
            append(p)
        elif t is Lit:
            append(literals[p.slot])
        else:
            value = reads[p.row][p.column]
            append(
                "CAST(NULL AS " + p.type + ")"
                if value is None
                else "CAST(" + quote_literal(value, scs) + " AS " + p.type + ")"
            )
    return "".join(out)


def fill_extended(
    pieces: Sequence[object], literals: Sequence[str], first_param: int
) -> RenderedSql:
    """Literals back in place, read values as CAST($n AS <type>) parameters numbered from
    first_param, one per distinct (row, column)."""
    numbers: dict[tuple[int, str], int] = {}
    out: list[str] = []
    p: Any  # a str, Lit or Read, told apart by exact type
    for p in pieces:
        t = type(p)
        if t is str:
            out.append(p)
        elif t is Lit:
            if p.slot >= len(literals):
                raise ValueError("the statement has normalized literals: pass them to render")
            out.append(literals[p.slot])
        else:
            key = (p.row, p.column)
            n = numbers.get(key)
            if n is None:
                n = numbers[key] = first_param + len(numbers)
            out.append(f"CAST(${n} AS {p.type})")
    return RenderedSql("".join(out), tuple(numbers))


# ------------------------------------------------------------------ SQL fragment helpers


def cast(expr: list[object], sql_type: str) -> list[object]:
    """CAST((<expr>) AS <type>): the parentheses keep any client expression whole."""
    return ["CAST((", *expr, ") AS ", sql_type, ")"]


# jsonb_build_object takes at most 100 arguments: build wide objects in chunks joined by ||
_PAIRS_PER_CALL = 40


def jsonb_object(pairs: Sequence[tuple[str, list[object]]]) -> list[object]:
    """jsonb_build_object(<name>, <value pieces>, ...) with names as scs-proof literals."""
    if not pairs:
        return ["'{}'::jsonb"]
    out: list[object] = []
    for start in range(0, len(pairs), _PAIRS_PER_CALL):
        if start:
            out.append(" || ")
        out.append("jsonb_build_object(")
        for i, (name, value) in enumerate(pairs[start : start + _PAIRS_PER_CALL]):
            if i:
                out.append(", ")
            out.append(quote_literal_any(name))
            out.append(", ")
            out.extend(value)
        out.append(")")
    return out


def column_ref(qualifier: str | None, column: str) -> str:
    if qualifier is None:
        return quote_ident(column)
    return quote_ident(qualifier) + "." + quote_ident(column)
