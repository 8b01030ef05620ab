"""Reads whose result does not carry the key, captured from the key their statement pins.

`SELECT balance FROM accounts WHERE id = 1`: the RowDescription shows checked columns of a
protected table (or of a simple view over one) without its key (a KeylessCapture). The
statement's analysis (proxy.rewrite.reads, cached per template and relation) says where the
key comes from: a literal of the text, or a bound parameter. An execution then reads that one
row, and it is remembered only if exactly one row came back (more means the analysis was
wrong, none means there is nothing to remember) and the result completed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxy.locking.capture import KeylessCapture
from proxy.rewrite.planner import KeyRef
from proxy.rewrite.reads import ReadSource, plan_read_pin
from proxy.rewrite.scan import scan
from proxy.values import (
    BOOL_TYPE,
    INT_TYPES,
    NUMERIC_TYPE,
    TEXT_TYPES,
    UUID_TYPE,
    ReadValue,
    normalize_key,
    normalize_text_key,
)
from proxy.wire.framing import ProtocolViolation

__all__ = ["PinnedRead", "pinned_read"]

_READ_PINS_MAX = 10000
# key types whose normalized value names exactly the row equality finds (no collation or
# display subtleties): other key types are never captured this way
_KEY_TYPES = frozenset(INT_TYPES) | TEXT_TYPES | {UUID_TYPE, NUMERIC_TYPE, BOOL_TYPE}


class PinnedRead:
    """One execution's read of the row its statement pinned.

    Remembered at the first row: a driver may fetch one row and leave the portal suspended
    (asyncpg's fetchrow/fetchval), and a set-returning function in the select list repeats
    the same row. A second row means more than one row matched the pin (the analysis was
    wrong): the row is forgotten, never guessed."""

    __slots__ = ("table", "key", "capture", "rows")

    def __init__(self, capture: KeylessCapture, key: tuple[Any, ...]) -> None:
        self.table = capture.table
        self.key = key
        self.capture = capture
        self.rows = 0

    def row(self, values: Sequence[bytes | None], knowledge: Any, settings: Any = None) -> None:
        formats = self.capture.formats
        if len(values) != len(formats):
            raise ProtocolViolation("DataRow does not match its RowDescription")
        self.rows += 1
        if self.rows == 1:
            row = {
                c: ReadValue(formats[p], t, values[p], settings) for c, p, t in self.capture.columns
            }
            knowledge.capture_pinned(self.table, self.key, row)
        elif self.rows == 2:
            knowledge.forget_pinned(self.table, self.key)


def pinned_read(
    tables: Any,
    capture: KeylessCapture,
    text: str,
    scs: bool,
    encoding: str,
    bind: Any = None,
    param_types: Sequence[int] = (),
) -> PinnedRead | None:
    """The read of one execution of `text` (bound with `bind`'s parameters, if any)."""
    found = scan(text, scs)
    refs = _read_pin(tables, capture, found.template)
    if refs is None:
        return None
    table = capture.table
    key = []
    for ref in refs:
        value = _key_value(
            table.column_type_oids[ref.column],
            ref,
            found.literals,
            scs,
            encoding,
            bind,
            param_types,
        )
        if value is None:
            return None
        key.append(value)
    return PinnedRead(capture, tuple(key))


def _read_pin(tables: Any, capture: KeylessCapture, template: str) -> tuple[KeyRef, ...] | None:
    cache = tables.read_pins
    cache_key = (template, capture.source_oid)
    refs = cache.get(cache_key, False)
    if refs is False:
        source = _source(tables, capture)
        refs = plan_read_pin(template, source) if source is not None else None
        if refs is not None:  # in the base table's names, whatever the SELECT named
            refs = tuple(
                KeyRef(k, r.param, r.literal_slot, r.literal)
                for k, r in zip(capture.table.key, refs)
            )
        if len(cache) < _READ_PINS_MAX:
            cache[cache_key] = refs
    return refs  # type: ignore[no-any-return]


def _source(tables: Any, capture: KeylessCapture) -> ReadSource | None:
    table = capture.table
    if capture.source_oid == table.oid:
        return ReadSource(table.schema, table.name, table.key)
    view = tables.views[capture.source_oid]
    if not all(k in view.names for k in table.key):
        return None  # the view does not show the key: no WHERE can pin it
    return ReadSource(view.schema, view.name, tuple(view.names[k] for k in table.key))


def _key_value(
    type_oid: int,
    ref: KeyRef,
    literals: Sequence[str],
    scs: bool,
    encoding: str,
    bind: Any,
    param_types: Sequence[int],
) -> Any:
    if type_oid not in _KEY_TYPES:
        return None
    if ref.param is None:
        text = ref.value_text(literals, (), scs)
        if text is None:
            return None
        value = normalize_text_key(type_oid, text)
    else:
        index = ref.param - 1
        if bind is None or index >= len(bind.params) or bind.params[index] is None:
            return None
        fmt = bind.param_format(index)
        declared = param_types[index] if index < len(param_types) else 0
        if (
            fmt == 1
            and declared not in (0, type_oid)
            and not (declared in INT_TYPES and type_oid in INT_TYPES)
        ):
            return None  # binary bytes of another type: not ours to reinterpret
        value = normalize_key(type_oid, fmt, bind.params[index], encoding)
    if type_oid in INT_TYPES and type(value) is not int:
        return None  # not an integer: the server finds no row, or errs
    if isinstance(value, tuple):
        return None
    return value
