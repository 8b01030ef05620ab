"""Array values decoded to their elements' text, for the keys of `WHERE id = ANY(<array>)`.

Text form: PostgreSQL's array literal (`{1,2}`, `{"a b",NULL}`, nested `{{1,2},{3,4}}`: ANY
compares with every element, so nesting is flattened). Binary form: the array_send layout, each
element turned into text by its type. Anything else is `None`: the caller leaves the write
unverified rather than guess which rows it pins.
"""

from __future__ import annotations

import struct

from proxy.values import binary_to_text

__all__ = ["binary_array_elements", "text_array_elements"]

_SPACE = " \t\n\r\v\f"


def text_array_elements(text: str) -> list[str | None] | None:
    """The elements of an array literal (None for NULL), or None when it is not one we read:
    dimension decorations (`[1:2]={...}`), bad nesting or quoting."""
    s = text.strip(_SPACE)
    if not s.startswith("{"):
        return None
    out: list[str | None] = []
    depth = 0
    i, n = 0, len(s)
    expect_element = False  # just after '{' or ','
    while i < n:
        ch = s[i]
        if ch in _SPACE:
            i += 1
        elif ch == "{":
            if out and not expect_element and depth > 0:
                return None
            depth += 1
            expect_element = True
            i += 1
        elif ch == "}":
            if depth == 0:
                return None
            depth -= 1
            expect_element = False
            i += 1
            if depth == 0:
                return out if not s[i:].strip(_SPACE) else None
        elif ch == ",":
            if expect_element:
                return None  # an empty element: `{1,,2}`
            expect_element = True
            i += 1
        elif not expect_element or depth == 0:
            return None
        elif ch == '"':
            value: list[str] = []
            i += 1
            while i < n and s[i] != '"':
                if s[i] == "\\":
                    i += 1
                    if i >= n:
                        return None
                value.append(s[i])
                i += 1
            if i >= n:
                return None
            out.append("".join(value))
            expect_element = False
            i += 1
        else:
            value = []
            quoted_any = False
            while i < n and s[i] not in ',{}"':
                if s[i] == "\\":
                    i += 1
                    if i >= n:
                        return None
                    quoted_any = True
                value.append(s[i])
                i += 1
            if i < n and s[i] in '{"':
                return None
            raw = "".join(value).rstrip(_SPACE)
            out.append(None if raw.upper() == "NULL" and not quoted_any else raw)
            expect_element = False
    return None  # unbalanced


def binary_array_elements(data: bytes) -> list[str | None] | None:
    """The elements of a binary array as text (None for NULL), or None when an element's type
    has no known text form or the value is malformed."""
    try:
        ndim, _flags, elem_oid = struct.unpack_from("!iii", data)
        if ndim < 0 or ndim > 6:
            return None
        count = 1 if ndim else 0
        pos = 12
        for _ in range(ndim):
            size, _lbound = struct.unpack_from("!ii", data, pos)
            count *= size
            pos += 8
        out: list[str | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from("!i", data, pos)
            pos += 4
            if length < 0:
                out.append(None)
                continue
            element = data[pos : pos + length]
            if len(element) != length:
                return None
            out.append(binary_to_text(elem_oid, element))
            pos += length
        return out if pos == len(data) else None
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
