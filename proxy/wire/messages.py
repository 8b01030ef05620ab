"""Decoding and encoding of the few messages the proxy looks into.

Bodies are `bytes`/`bytearray`/`memoryview` slices without the 5-byte header. Strings in the
protocol are NUL-terminated and in the client encoding; SQL text is decoded with
`surrogateescape` so that re-encoding reproduces the client's exact bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from struct import Struct
from typing import Any, TypeVar, cast

from proxy.wire.framing import ProtocolViolation, frame

_I16 = Struct("!h")
_I32 = Struct("!i")
_U32 = Struct("!I")
_FIELD = Struct("!IhIhih")  # table oid, attnum, type oid, typlen, typmod, format

# A message body: a slice of the reader's buffer, or bytes (it needs `find`, so no memoryview).
Body = bytes | bytearray
_Decoder = TypeVar("_Decoder", bound=Callable[..., Any])

# PostgreSQL encoding names (normalised: upper case, no '_' or '-') -> Python codecs.
PG_TO_PYTHON_ENCODING = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQLASCII": "latin-1",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN9": "iso8859-15",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "EUCJP": "euc_jp",
    "SJIS": "shift_jis",
    "GBK": "gbk",
    "BIG5": "big5",
    "KOI8R": "koi8_r",
}


def python_encoding(pg_name: str) -> str:
    key = pg_name.upper().replace("_", "").replace("-", "")
    return PG_TO_PYTHON_ENCODING.get(key, "utf-8")


def _strict(decoder: _Decoder) -> _Decoder:
    """Malformed bodies raise ProtocolViolation, never struct.error or IndexError."""

    def wrapper(body: Body, *args: Any) -> Any:
        try:
            return decoder(body, *args)
        except ProtocolViolation:
            raise
        except (struct.error, IndexError, ValueError) as exc:
            raise ProtocolViolation(f"malformed message: {exc}") from None

    wrapper.__name__ = decoder.__name__
    wrapper.__doc__ = decoder.__doc__
    return cast(_Decoder, wrapper)


def _cstring(body: Body, pos: int) -> tuple[bytes, int]:
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    return bytes(body[pos:end]), end + 1


# ---------------------------------------------------------------- frontend messages


@_strict
def decode_query(body: Body) -> bytes:
    text, _ = _cstring(body, 0)
    return text


def encode_query(sql: bytes) -> bytes:
    return frame(b"Q", sql + b"\x00")


@dataclass(slots=True)
class Parse:
    name: bytes
    query: bytes
    param_types: tuple[int, ...]

    def encode(self) -> bytes:
        types = b"".join(_U32.pack(t) for t in self.param_types)
        return frame(
            b"P",
            self.name + b"\x00" + self.query + b"\x00" + _I16.pack(len(self.param_types)) + types,
        )


def decode_parse(body: Body) -> Parse:
    # hot (every Parse with rules loaded): no wrapper frame, no per-string helper calls
    try:
        name_end = body.index(0)
        query_end = body.index(0, name_end + 1)
        (count,) = _I16.unpack_from(body, query_end + 1)
        if count == 0:
            types: tuple[int, ...] = ()
        elif count < 0 or len(body) < query_end + 3 + 4 * count:
            raise ProtocolViolation("Parse message parameter types truncated")
        else:
            types = Struct(f"!{count}I").unpack_from(body, query_end + 3)
    except ValueError:
        raise ProtocolViolation("unterminated string in message") from None
    except struct.error as exc:
        raise ProtocolViolation(f"malformed message: {exc}") from None
    return Parse(bytes(body[:name_end]), bytes(body[name_end + 1 : query_end]), types)


@dataclass(slots=True)
class Bind:
    portal: bytes
    statement: bytes
    param_formats: list[int]
    params: list[bytes | None]
    result_formats: list[int]

    def param_format(self, index: int) -> int:
        f = self.param_formats
        if not f:
            return 0
        return f[0] if len(f) == 1 else f[index]

    def encode(self) -> bytes:
        out = bytearray(self.portal + b"\x00" + self.statement + b"\x00")
        out += _I16.pack(len(self.param_formats))
        for f in self.param_formats:
            out += _I16.pack(f)
        out += _I16.pack(len(self.params))
        for p in self.params:
            if p is None:
                out += _I32.pack(-1)
            else:
                out += _I32.pack(len(p))
                out += p
        out += _I16.pack(len(self.result_formats))
        for f in self.result_formats:
            out += _I16.pack(f)
        return frame(b"B", bytes(out))


def decode_bind(body: Body) -> Bind:
    # hot (every Bind with rules loaded): no wrapper frame, no per-string helper calls
    try:
        portal_end = body.index(0)
        stmt_end = body.index(0, portal_end + 1)
        pos = stmt_end + 1
        (nf,) = _I16.unpack_from(body, pos)
        pos += 2
        formats = list(Struct(f"!{nf}h").unpack_from(body, pos)) if nf > 0 else []
        pos += 2 * nf
        (np_,) = _I16.unpack_from(body, pos)
        pos += 2
        params: list[bytes | None] = []
        size = len(body)
        for _ in range(np_):
            (length,) = _I32.unpack_from(body, pos)
            pos += 4
            if length < 0:
                params.append(None)
            else:
                if pos + length > size:
                    raise ProtocolViolation("Bind parameter value truncated")
                params.append(bytes(body[pos : pos + length]))
                pos += length
        (nr,) = _I16.unpack_from(body, pos)
        pos += 2
        results = list(Struct(f"!{nr}h").unpack_from(body, pos)) if nr > 0 else []
    except ValueError:
        raise ProtocolViolation("unterminated string in message") from None
    except struct.error as exc:  # the message lies about its shape
        raise ProtocolViolation(f"malformed Bind message: {exc}") from None
    if nf < 0 or np_ < 0 or nr < 0 or (nf not in (0, 1) and nf != np_):
        raise ProtocolViolation("Bind message has inconsistent format counts")
    return Bind(
        bytes(body[:portal_end]), bytes(body[portal_end + 1 : stmt_end]), formats, params, results
    )


def decode_describe_or_close(body: Body) -> tuple[bytes, bytes]:
    """(kind b'S' or b'P', name)."""
    if len(body) < 2:
        raise ProtocolViolation("Describe/Close message too short")
    kind = _KINDS.get(body[0])
    if kind is None:
        raise ProtocolViolation(f"Describe/Close kind must be S or P, not {bytes(body[0:1])!r}")
    end = body.find(0, 1)
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    return kind, bytes(body[1:end])


_KINDS = {ord("S"): b"S", ord("P"): b"P"}


def decode_execute(body: Body) -> tuple[bytes, int]:
    end = body.find(0)
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    if len(body) < end + 5:
        raise ProtocolViolation("Execute message truncated")
    (max_rows,) = _I32.unpack_from(body, end + 1)
    return bytes(body[:end]), max_rows


def encode_describe(kind: bytes, name: bytes) -> bytes:
    return frame(b"D", kind + name + b"\x00")


def encode_execute(portal: bytes, max_rows: int = 0) -> bytes:
    return frame(b"E", portal + b"\x00" + _I32.pack(max_rows))


def encode_close(kind: bytes, name: bytes) -> bytes:
    return frame(b"C", kind + name + b"\x00")


SYNC = frame(b"S", b"")
FLUSH = frame(b"H", b"")
TERMINATE = frame(b"X", b"")

# ---------------------------------------------------------------- backend messages


@dataclass(slots=True, frozen=True)
class Field:
    name: bytes
    table_oid: int
    attnum: int
    type_oid: int
    typlen: int
    typmod: int
    format: int


@_strict
def decode_row_description(body: Body) -> tuple[Field, ...]:
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    fields: list[Field] = []
    for _ in range(count):
        name, pos = _cstring(body, pos)
        t, a, ty, tl, tm, fm = _FIELD.unpack_from(body, pos)
        pos += 18
        fields.append(Field(name, t, a, ty, tl, tm, fm))
    return tuple(fields)


def encode_row_description(fields: Sequence[Field]) -> bytes:
    out = bytearray(_I16.pack(len(fields)))
    for f in fields:
        out += f.name + b"\x00"
        out += _FIELD.pack(f.table_oid, f.attnum, f.type_oid, f.typlen, f.typmod, f.format)
    return frame(b"T", bytes(out))


@_strict
def decode_data_row(body: Body) -> list[bytes | None]:
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    values: list[bytes | None] = []
    append = values.append
    for _ in range(count):
        (length,) = _I32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            append(None)
        else:
            if pos + length > len(body):
                raise ProtocolViolation("DataRow value runs past the end of the message")
            append(bytes(body[pos : pos + length]))
            pos += length
    return values


def encode_data_row(values: Sequence[bytes | None]) -> bytes:
    out = bytearray(_I16.pack(len(values)))
    for v in values:
        if v is None:
            out += _I32.pack(-1)
        else:
            out += _I32.pack(len(v))
            out += v
    return frame(b"D", bytes(out))


@_strict
def decode_command_complete(body: Body) -> bytes:
    tag, _ = _cstring(body, 0)
    return tag


def command_rows(tag: bytes) -> int | None:
    """Row count of `UPDATE n`, `DELETE n`, `INSERT 0 n`, `SELECT n`...; None if none."""
    last = tag.rsplit(b" ", 1)[-1]
    return int(last) if last.isdigit() and b" " in tag else None


@_strict
def decode_fields(body: Body) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields keyed by their one-letter code."""
    fields: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n:
        code = body[pos]
        if code == 0:
            break
        value, pos = _cstring(body, pos + 1)
        fields[chr(code)] = value.decode("utf-8", "replace")
    return fields


def encode_fields(mtype: bytes, fields: dict[str, str]) -> bytes:
    out = bytearray()
    for code, value in fields.items():
        out += (
            code.encode("ascii") + value.encode("utf-8", "replace").replace(b"\x00", b"") + b"\x00"
        )
    out += b"\x00"
    return frame(mtype, bytes(out))


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail:
        fields["D"] = detail
    if hint:
        fields["H"] = hint
    return encode_fields(b"E", fields)


@_strict
def decode_parameter_status(body: Body) -> tuple[str, str]:
    name, pos = _cstring(body, 0)
    value, _ = _cstring(body, pos)
    return name.decode("ascii", "replace"), value.decode("utf-8", "replace")


@_strict
def decode_backend_key(body: Body) -> tuple[int, bytes]:
    (pid,) = _I32.unpack_from(body, 0)
    return pid, bytes(body[4:])


NO_DATA = frame(b"n", b"")


def ready_for_query(status: bytes) -> bytes:
    return frame(b"Z", status)
