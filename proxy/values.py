"""Values as they travel: normalised keys and text forms of read values.

A row's key arrives in a DataRow as text or binary and comes back in a write as a SQL literal or
a bound parameter in either format; all of them are normalised to one Python value per type so
the snapshot of a row is found whichever way the application spelled its key.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

INT_TYPES = {20: "!q", 21: "!h", 23: "!i", 26: "!I"}  # int8, int2, int4, oid
TEXT_TYPES = {25, 1043, 1042, 19}  # text, varchar, bpchar, name
UUID_TYPE = 2950
NUMERIC_TYPE = 1700
BOOL_TYPE = 16
_EPOCH_2000 = datetime(2000, 1, 1)
_INFINITY = 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class ReadValue:
    """One column value as the session read it, in the format and type it came in."""

    format: int  # 0 text, 1 binary
    type_oid: int
    data: bytes | None  # None: SQL NULL

    def as_text(self, encoding: str = "utf-8") -> str | None:
        """The value's text form, or raise ValueError when a binary value cannot be shown."""
        if self.data is None:
            return None
        if self.format == 0:
            return self.data.decode(encoding, "surrogateescape")
        return binary_to_text(self.type_oid, self.data)


def binary_to_text(type_oid: int, data: bytes) -> str:
    fmt = INT_TYPES.get(type_oid)
    if fmt is not None:
        return str(struct.unpack(fmt, data)[0])
    if type_oid in TEXT_TYPES:
        return data.decode("utf-8")
    if type_oid == UUID_TYPE:
        return str(uuid.UUID(bytes=data))
    if type_oid == BOOL_TYPE:
        return "true" if data == b"\x01" else "false"
    if type_oid == 700:
        return repr(struct.unpack("!f", data)[0])
    if type_oid == 701:
        return repr(struct.unpack("!d", data)[0])
    if type_oid == NUMERIC_TYPE:
        return _numeric_from_binary(data)
    if type_oid in (1114, 1184):  # timestamp, timestamptz: microseconds since 2000-01-01
        (micros,) = struct.unpack("!q", data)
        if micros in (_INFINITY, -_INFINITY):
            return "infinity" if micros > 0 else "-infinity"
        stamp = _EPOCH_2000 + timedelta(microseconds=micros)
        return stamp.isoformat(sep=" ") + ("+00" if type_oid == 1184 else "")
    if type_oid == 1082:  # date: days since 2000-01-01
        (days,) = struct.unpack("!i", data)
        if days in (0x7FFFFFFF, -0x80000000):
            return "infinity" if days > 0 else "-infinity"
        return (_EPOCH_2000.date() + timedelta(days=days)).isoformat()
    if type_oid == 1083:  # time: microseconds since midnight
        (micros,) = struct.unpack("!q", data)
        return (
            str(timedelta(microseconds=micros)).rjust(8, "0")
            if micros < 86400 * 10**6
            else "24:00:00"
        )
    if type_oid == 1186:  # interval: microseconds, days, months
        micros, days, months = struct.unpack("!qii", data)
        return f"{months} mons {days} days {micros} microseconds"
    if type_oid == 17:  # bytea
        return "\\x" + data.hex()
    if type_oid in (114, 142):  # json, xml: the text itself
        return data.decode("utf-8")
    if type_oid == 3802 and data[:1] == b"\x01":  # jsonb: a version byte, then text
        return data[1:].decode("utf-8")
    raise ValueError(f"no text form known for binary values of type {type_oid}")


def _numeric_from_binary(data: bytes) -> str:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", data)
    if sign == 0xC000:
        return "NaN"
    if sign == 0xD000:
        return "Infinity"
    if sign == 0xF000:
        return "-Infinity"
    digits = struct.unpack_from(f"!{ndigits}h", data, 8)
    value = Decimal(0)
    for i, d in enumerate(digits):
        value += Decimal(d) * (Decimal(10000) ** (weight - i))
    if sign == 0x4000:
        value = -value
    return f"{value:.{dscale}f}"


def normalize_key(type_oid: int, fmt: int, data: bytes | None, encoding: str = "utf-8") -> Hashable:
    """A hashable value equal for every spelling of the same key value."""
    if data is None:
        return None
    if fmt == 1:
        int_fmt = INT_TYPES.get(type_oid)
        if int_fmt is not None:
            # a binary parameter may be sent wider or narrower than the column: go by length
            size = len(data)
            if size in (2, 4, 8):
                return struct.unpack({2: "!h", 4: "!i", 8: "!q"}[size], data)[0]  # type: ignore[no-any-return]  # an int
            return ("bin", type_oid, data)
        if type_oid in TEXT_TYPES:
            return data.decode(encoding, "surrogateescape")
        if type_oid == UUID_TYPE and len(data) == 16:
            return str(uuid.UUID(bytes=data))
        try:
            return normalize_text_key(type_oid, binary_to_text(type_oid, data))
        except (ValueError, struct.error):
            return ("bin", type_oid, data)
    return normalize_text_key(type_oid, data.decode(encoding, "surrogateescape"))


def normalize_text_key(type_oid: int, text: str) -> Hashable:
    if type_oid in INT_TYPES:
        try:
            return int(text.strip())
        except ValueError:
            return text
    if type_oid == UUID_TYPE:
        try:
            return str(uuid.UUID(text.strip()))
        except ValueError:
            return text
    if type_oid == NUMERIC_TYPE:
        try:
            return Decimal(text.strip()).normalize()
        except InvalidOperation:
            return text
    if type_oid == BOOL_TYPE:
        return text.strip().lower() in ("t", "true", "yes", "on", "1", "y")
    if type_oid == 1042:  # char(n): trailing spaces are not significant
        return text.rstrip(" ")
    return text
