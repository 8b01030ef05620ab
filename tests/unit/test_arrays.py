"""proxy.arrays: the elements of array values, the keys of `WHERE id = ANY(<array>)`."""

from __future__ import annotations

import struct

import pytest

from proxy.arrays import binary_array_elements, text_array_elements


@pytest.mark.parametrize(
    "text, elements",
    [
        ("{1,2}", ["1", "2"]),
        (" { 1 , 2 } ", ["1", "2"]),
        ("{}", []),
        ('{"a b",NULL,"NULL",null}', ["a b", None, "NULL", None]),
        ('{"a\\"b",c\\,d}', ['a"b', "c,d"]),
        ("{{1,2},{3,4}}", ["1", "2", "3", "4"]),  # ANY compares with every element
    ],
)
def test_text_arrays(text, elements):
    assert text_array_elements(text) == elements


@pytest.mark.parametrize(
    "text", ["[1:2]={1,2}", "{1,,2}", "{1,2", "{1}x", "1,2", '{"a}', "{a\"b}", ""]
)
def test_text_arrays_not_read(text):
    assert text_array_elements(text) is None


def _binary(oid: int, values: list[bytes | None], dims: int = 1) -> bytes:
    out = struct.pack("!iii", dims, int(None in values), oid)
    if dims:
        out += struct.pack("!ii", len(values), 1)
    for v in values:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return out


def test_binary_arrays():
    ints = _binary(20, [struct.pack("!q", 5), None, struct.pack("!q", -1)])
    assert binary_array_elements(ints) == ["5", None, "-1"]
    assert binary_array_elements(_binary(25, [b"x y"])) == ["x y"]
    assert binary_array_elements(_binary(23, [], dims=0)) == []


def test_binary_arrays_not_read():
    assert binary_array_elements(_binary(600, [b"\x00" * 16])) is None  # point: no text form
    assert binary_array_elements(_binary(23, [struct.pack("!i", 1)])[:-1]) is None
    assert binary_array_elements(b"\x00") is None
