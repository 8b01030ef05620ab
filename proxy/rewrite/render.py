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
from proxy.values import CANONICAL_SETTINGS

__all__ = [
    "AS_PRINTED",
    "BINARY_PRINTED",
    "BY_VALUE",
    "Lit",
    "OWN_CHANGES",
    "Own",
    "Piece",
    "Printed",
    "Read",
    "Same",
    "Shown",
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


class Same(NamedTuple):
    """Opens (end False) or closes (end True) the test that the expression between the two
    still holds what the session read in `column` of pinned row `row`: in the domain it was
    read in (proxy.values: by value for plain types, else as printed)."""

    row: int
    column: str
    type: str
    end: bool


class Shown(NamedTuple):
    """What the session read there, as a conflict reports it (the text it read, for a value
    compared as printed: parsing it again under other settings could fail)."""

    row: int
    column: str
    type: str


class Own(NamedTuple):
    """What the session vouches for pinned row `row` if its row version is the session's own
    transaction's (proxy.locking.side_effects): a text literal, NULL for nothing. Simple
    protocol: reads[row][OWN_CHANGES]; extended: kinds[(row, OWN_CHANGES)], so that it is
    part of the prepared form, never a parameter."""

    row: int


# the pseudo column of a row's reads (simple) or kinds (extended) that holds the Own flag
OWN_CHANGES = "\x00own"


def _own_literal(flag: object) -> str:
    return "NULL::text" if flag is None else "'" + str(flag) + "'::text"  # read | locked


class Printed(NamedTuple):
    """A read value compared as printed (simple protocol). canonical False: `text` is what
    the server printed under `settings` (a text[] literal); True: the exact text form of a
    binary read, printed on both sides under proxy.values.CANONICAL_SETTINGS."""

    text: str | None
    settings: str
    canonical: bool = False


# how a read is bound in the extended protocol (fill_extended's `kinds`): by value as read
# (text or binary) and compared by value; its text and settings, compared as printed; a
# binary value compared as printed under the canonical settings
BY_VALUE, AS_PRINTED, BINARY_PRINTED = "value", "printed", "binary"

Piece = "str | Lit | Read | Same | Shown"


class RenderedSql(NamedTuple):
    sql: str
    # one (pinned row index, column, role) per extra $n parameter, in parameter order: bind,
    # for that column of that row, the value the session read ("value", in its own type and
    # format), the text it read ("text") or the settings it was read under ("settings")
    extra_params: tuple[tuple[int, str, str], ...] = ()


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


_CANONICAL = "'" + CANONICAL_SETTINGS + "'::text[]"


def fill_simple(
    pieces: Sequence[object],
    literals: Sequence[str],
    reads: Sequence[Mapping[str, str | Printed | None] | None],
    scs: bool,
    functions: str = "pg_temp",
) -> str:
    """Literals back in place, read values inlined: CAST('<text>' AS <type>) for a plain
    value, a Printed one through the optimist_text / optimist_value guard functions of the
    schema `functions` (already quoted: proxy.conflicts.guard_schema_sql)."""
    out: list[str] = []
    append = out.append
    p: Any  # a str, Lit, Read, Same or Shown, told apart by exact type (cheaper than isinstance)
    for p in pieces:
        t = type(p)
        if t is str:
            append(p)
        elif t is Lit:
            append(literals[p.slot])
        elif t is Own:
            append(_own_literal(reads[p.row].get(OWN_CHANGES)))
        else:
            value = reads[p.row][p.column]
            if type(value) is not Printed:
                if t is Same and not p.end:
                    continue
                cast = (
                    "CAST(NULL AS " + p.type + ")"
                    if value is None
                    else "CAST(" + quote_literal(value, scs) + " AS " + p.type + ")"
                )
                append(" IS NOT DISTINCT FROM " + cast if t is Same else cast)
            else:
                append(_fill_printed(p, t, value, scs, functions))
    return "".join(out)


def _fill_printed(p: Any, t: type, value: Printed, scs: bool, functions: str) -> str:
    text = "NULL" if value.text is None else quote_literal(value.text, scs)
    settings = quote_literal(value.settings, scs) + "::text[]"
    parsed = f"{functions}.optimist_value({text}, {settings}, NULL::{p.type})"
    text_open = functions + ".optimist_text("
    if t is Same:
        if not p.end:
            return text_open
        if value.canonical:
            return f", {_CANONICAL}) IS NOT DISTINCT FROM {text_open}{parsed}, {_CANONICAL})"
        return f", {settings}) IS NOT DISTINCT FROM CAST({text} AS text)"
    if t is Shown and not value.canonical:
        return f"CAST({text} AS text)"
    return parsed


def literal_kind(value: str | Printed | None) -> str:
    """How fill_extended binds a read given in fill_simple's form (a str: BY_VALUE)."""
    if type(value) is not Printed:
        return BY_VALUE
    return BINARY_PRINTED if value.canonical else AS_PRINTED


def fill_arguments(
    params: Sequence[tuple[int, str, str]],
    reads: Sequence[Mapping[str, str | Printed | None] | None],
    types: Mapping[str, str],
    scs: bool,
    functions: str = "pg_temp",
) -> list[str]:
    """fill_extended's extra parameters (RenderedSql.extra_params) as SQL literals, bound as
    literal_kind says: the arguments of an SQL EXECUTE of that form. Every row named in
    `params` has its reads."""
    out = []
    for row, column, role in params:
        value = reads[row][column]  # type: ignore[index]  # a row with params was read
        if type(value) is not Printed:
            out.append("NULL" if value is None else quote_literal(value, scs))  # type: ignore[arg-type]  # a str
            continue
        text = "NULL" if value.text is None else quote_literal(value.text, scs)
        if role == "settings":
            out.append(quote_literal(value.settings, scs))
        elif role == "text":
            out.append(text)
        else:  # a binary read's exact text, parsed under the canonical settings it was printed in
            out.append(f"{functions}.optimist_value({text}, {_CANONICAL}, NULL::{types[column]})")
    return out


def fill_extended(
    pieces: Sequence[object],
    literals: Sequence[str],
    first_param: int,
    kinds: Mapping[tuple[int, str], str] | None = None,
    functions: str = "pg_temp",
) -> RenderedSql:
    """Literals back in place, read values as parameters numbered from first_param, one set
    per distinct (row, column), bound as `kinds` says (default BY_VALUE)."""
    numbers: dict[tuple[int, str], int] = {}
    params: list[tuple[int, str, str]] = []
    out: list[str] = []
    p: Any  # a str, Lit, Read, Same or Shown, told apart by exact type
    for p in pieces:
        t = type(p)
        if t is str:
            out.append(p)
            continue
        if t is Lit:
            if p.slot >= len(literals):
                raise ValueError("the statement has normalized literals: pass them to render")
            out.append(literals[p.slot])
            continue
        if t is Own:
            out.append(_own_literal(kinds.get((p.row, OWN_CHANGES)) if kinds else None))
            continue
        key = (p.row, p.column)
        kind = kinds.get(key, BY_VALUE) if kinds else BY_VALUE
        n = numbers.get(key)
        if n is None:
            n = numbers[key] = first_param + len(params)
            if kind == AS_PRINTED:
                params += [(p.row, p.column, "text"), (p.row, p.column, "settings")]
            else:
                params.append((p.row, p.column, "value"))
        out.append(_fill_param(p, t, kind, n, functions))
    return RenderedSql("".join(out), tuple(params))


def _fill_param(p: Any, t: type, kind: str, n: int, functions: str) -> str:
    value = f"CAST(${n} AS {p.type})"
    text_open = functions + ".optimist_text("
    if kind == BY_VALUE:
        if t is Same:
            return " IS NOT DISTINCT FROM " + value if p.end else ""
        return value
    if kind == BINARY_PRINTED:
        if t is Same:
            if not p.end:
                return text_open
            return f", {_CANONICAL}) IS NOT DISTINCT FROM {text_open}{value}, {_CANONICAL})"
        return value
    text, settings = f"CAST(${n} AS text)", f"CAST(${n + 1} AS text[])"
    if t is Same:
        return f", {settings}) IS NOT DISTINCT FROM {text}" if p.end else text_open
    if t is Shown:
        return text
    return f"{functions}.optimist_value({text}, {settings}, NULL::{p.type})"


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
