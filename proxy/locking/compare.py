"""How each read value is compared at the write: in the domain it was read in.

* plain types (proxy.values.PLAIN_TYPES: their text form depends on no setting, their equality
  is exact): by value, `col IS NOT DISTINCT FROM CAST(<read> AS type)`, the fast path;
* any other type read as text: as printed, what the server prints now for the row's value
  under the settings of the read against the text read (`pg_temp.optimist_text`): exact,
  whatever DateStyle, TimeZone, extra_float_digits... hold at the write, and a change a lossy
  equality would miss (citext `alice` -> `Alice`, interval `1 day` -> `24:00:00`) is one;
* any other type read in binary: both sides printed under fixed canonical settings (the
  extended protocol binds the binary value itself; the simple protocol its exact text form,
  or the write is counted `binary_read` when there is none).

A read printed under a setting the proxy could not follow is not compared: `settings_unknown`.
"""

from __future__ import annotations

from proxy.rewrite.render import AS_PRINTED, BINARY_PRINTED, BY_VALUE, Printed
from proxy.values import (
    CANONICAL_SETTINGS,
    TEXT_TYPES,
    ReadValue,
    binary_to_text,
    settings_of_type,
)


class Uncomparable(Exception):
    """A read that cannot be compared exactly; the reason is a metric label."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


# (type, format, data) of an extra Bind parameter
Param = tuple[int, int, bytes | None]

_TEXT, _TEXT_ARRAY = 25, 1009


def _printed_settings(value: ReadValue) -> str:
    settings = value.settings
    wanted = settings_of_type(value.type_oid)
    if settings is None:
        if not wanted:
            return "{}"
        raise Uncomparable("settings_unknown")
    array = settings.array_text(wanted)
    if array is None:
        raise Uncomparable("settings_unknown")
    return array


def _decoded(value: ReadValue, encoding: str) -> str:
    assert value.data is not None
    read_in = value.settings.encoding if value.settings is not None else encoding
    return value.data.decode(read_in, "surrogateescape")


def simple_form(value: ReadValue, encoding: str) -> str | Printed | None:
    """The read as fill_simple takes it; raises Uncomparable when it cannot be compared."""
    if value.plain:
        if value.data is None:
            return None
        if value.format == 0 or value.type_oid in TEXT_TYPES:
            # a string's binary form is its text in the client_encoding of the read
            return _decoded(value, encoding)
        return _binary_text(value)
    if value.data is None:
        return Printed(None, "{}")
    if value.format == 0:
        return Printed(_decoded(value, encoding), _printed_settings(value))
    return Printed(_binary_text(value), CANONICAL_SETTINGS, canonical=True)


def _binary_text(value: ReadValue) -> str:
    assert value.data is not None
    try:
        return binary_to_text(value.type_oid, value.data)
    except (ValueError, OverflowError) as exc:
        raise Uncomparable("binary_read") from exc
    except Exception as exc:  # a malformed value (struct.error...): not comparable
        raise Uncomparable("binary_read") from exc


def extended_kind(value: ReadValue) -> str:
    """How fill_extended binds it (raises Uncomparable when it cannot be compared)."""
    if value.plain:
        return BY_VALUE
    if value.data is None or value.format == 0:
        if value.data is not None:
            _printed_settings(value)  # raises when they are not known
        return AS_PRINTED
    return BINARY_PRINTED


def extended_param(value: ReadValue, role: str, encoding: str) -> Param:
    """One extra parameter for `value` (role: "value", "text" or "settings")."""
    if role == "settings":
        array = "{}" if value.data is None else _printed_settings(value)
        return (_TEXT_ARRAY, 0, array.encode(encoding))
    data = value.data
    textual = value.format == 0 or value.type_oid in TEXT_TYPES  # strings: text either way
    if data is not None and textual and value.settings is not None:
        if value.settings.encoding != encoding:  # read under another client_encoding
            data = _decoded(value, encoding).encode(encoding, "surrogateescape")
    if role == "text":
        return (_TEXT, 0, data)
    return (value.type_oid, value.format, data)
