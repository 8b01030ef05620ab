"""Result sets of console commands, encoded as PostgreSQL backend messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct

from proxy.wire import messages as m
from proxy.wire.framing import frame

TEXT_OID = 25
INT8_OID = 20
_I64 = Struct("!q")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int = TEXT_OID


def text(name: str) -> Column:
    return Column(name, TEXT_OID)


def count(name: str) -> Column:
    return Column(name, INT8_OID)


@dataclass(slots=True)
class ResultSet:
    """What a command answers: rows (values str, int or None) and the CommandComplete tag.
    A command without columns answers the tag alone (as SET or VACUUM do)."""

    columns: tuple[Column, ...]
    rows: list[tuple] = field(default_factory=list)
    tag: str = ""

    def command_tag(self) -> bytes:
        return (self.tag or f"SHOW {len(self.rows)}").encode()


def _format(formats: list[int], index: int) -> int:
    if not formats:
        return 0
    return formats[0] if len(formats) == 1 else formats[index]


def row_description(columns: tuple[Column, ...], formats: list[int] | None = None) -> bytes:
    fields = [
        m.Field(
            c.name.encode(),
            0,
            0,
            c.type_oid,
            8 if c.type_oid == INT8_OID else -1,
            -1,
            _format(formats or [], i),
        )
        for i, c in enumerate(columns)
    ]
    return m.encode_row_description(fields)


def _value(column: Column, value, fmt: int, encoding: str) -> bytes | None:
    if value is None:
        return None
    if column.type_oid == INT8_OID:
        number = int(value)
        return _I64.pack(number) if fmt == 1 else str(number).encode()
    return str(value).encode(encoding, "replace")  # text: binary and text forms are equal


def data_rows(result: ResultSet, formats: list[int], encoding: str) -> list[bytes]:
    columns = result.columns
    return [
        m.encode_data_row(
            [
                _value(c, v, _format(formats, i), encoding)
                for i, (c, v) in enumerate(zip(columns, row))
            ]
        )
        for row in result.rows
    ]


def command_complete(tag: bytes) -> bytes:
    return frame(b"C", tag + b"\x00")


PARSE_COMPLETE = frame(b"1", b"")
BIND_COMPLETE = frame(b"2", b"")
CLOSE_COMPLETE = frame(b"3", b"")
EMPTY_QUERY = frame(b"I", b"")
NO_PARAMETERS = frame(b"t", b"\x00\x00")
