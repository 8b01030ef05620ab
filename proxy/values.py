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


# Settings that change how PostgreSQL prints (and reads back) values. The first three and
# client_encoding are reported by ParameterStatus; the others the proxy tracks (ReadSettings).
REPORTED_SETTINGS = ("DateStyle", "IntervalStyle", "TimeZone")
TRACKED_SETTINGS = ("extra_float_digits", "bytea_output", "lc_monetary")
PRINT_SETTINGS = REPORTED_SETTINGS + TRACKED_SETTINGS

# Types whose text form depends on no setting and whose equality is exact: a read of them is
# checked with a plain `col IS NOT DISTINCT FROM CAST(<read> AS type)` (bytea: its input
# reads both the hex and the escape form, whatever bytea_output printed).
PLAIN_TYPES = frozenset({16, 17, 19, 20, 21, 23, 25, 26, 1042, 1043, 1700, 2950})
# the settings each builtin type's text form depends on; a type not listed (citext, enums,
# domains, arrays, composites, ranges...) may depend on any of them
_DATETIME = frozenset({"DateStyle", "TimeZone"})
SETTINGS_OF_TYPE: dict[int, frozenset[str]] = {
    700: frozenset({"extra_float_digits"}),
    701: frozenset({"extra_float_digits"}),
    1082: _DATETIME,
    1083: _DATETIME,
    1114: _DATETIME,
    1184: _DATETIME,
    1266: _DATETIME,
    1186: frozenset({"IntervalStyle"}),
    790: frozenset({"lc_monetary"}),
    114: frozenset(),  # json: no equality operator, compared as text
    3802: frozenset(),
    142: frozenset(),
}
_ALL_SETTINGS = frozenset(PRINT_SETTINGS)


def settings_of_type(type_oid: int) -> frozenset[str]:
    return SETTINGS_OF_TYPE.get(type_oid, _ALL_SETTINGS)


@dataclass(frozen=True, slots=True)
class ReadSettings:
    """The printing settings in force when values were read: one object shared by every value
    read under them. `values` holds (name, value) of those known; `unknown` those the proxy
    could not follow (a set_config(), a SET inside a transaction)."""

    values: tuple[tuple[str, str], ...]
    unknown: frozenset[str]
    encoding: str  # the Python codec of client_encoding then

    def array_text(self, wanted: frozenset[str]) -> str | None:
        """The text[] literal {name,value,...} of the wanted settings, or None when one of
        them is unknown."""
        if wanted & self.unknown:
            return None
        return pg_array_text([x for nv in self.values if nv[0] in wanted for x in nv])


def pg_array_text(items: list[str]) -> str:
    """A one-dimensional text[] in PostgreSQL's array input syntax, every element quoted."""
    quoted = ('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items)
    return "{" + ",".join(quoted) + "}"


# the settings a binary value is printed under on both sides of its check: exact and injective
CANONICAL_SETTINGS = pg_array_text(
    [
        "DateStyle", "ISO", "IntervalStyle", "postgres", "TimeZone", "UTC",
        "extra_float_digits", "1", "bytea_output", "hex",
    ]
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReadValue:
    """One column value as the session read it, in the format and type it came in, and the
    settings it was printed under (None: not known)."""

    format: int  # 0 text, 1 binary
    type_oid: int
    data: bytes | None  # None: SQL NULL
    settings: ReadSettings | None = None

    @property
    def plain(self) -> bool:
        """Compared by value (CAST); else in the domain it was read in (text as printed)."""
        return self.type_oid in PLAIN_TYPES

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
    groups = struct.unpack_from(f"!{ndigits}h", data, 8)
    if not groups:
        return f"{Decimal(0):.{dscale}f}"
    # exact, whatever the number of digits (no arithmetic, so no 28-digit decimal context)
    digits = tuple(int(c) for c in "".join(f"{g:04d}" for g in groups))
    value = Decimal((1 if sign == 0x4000 else 0, digits, (weight - ndigits + 1) * 4))
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
