"""Reading SQL PREPARE / EXECUTE: names, declared types, arguments, literal keys."""

from __future__ import annotations

import pytest

from proxy.rewrite.sql_prepared import (
    SqlExecute,
    SqlPrepare,
    literal_argument,
    sql_execute_parts,
    sql_prepare_parts,
)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "PREPARE p AS UPDATE t SET a = $2 WHERE id = $1",
            SqlPrepare("p", (), "UPDATE t SET a = $2 WHERE id = $1", 2),
        ),
        (
            'prepare "P"(int, numeric(10, 2), text) as DELETE FROM t WHERE id = $1',
            SqlPrepare("P", ("int", "numeric(10, 2)", "text"), "DELETE FROM t WHERE id = $1", 3),
        ),
        ("PREPARE TRANSACTION 'x'", None),
        ("PREPARE p() AS SELECT 1", None),
        ("PREPARE p(int AS SELECT 1", None),
    ],
)
def test_prepare_parts(sql, expected):
    assert sql_prepare_parts(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("EXECUTE p(1, 'a,b', f(2, 3))", SqlExecute("p", ("1", "'a,b'", "f(2, 3)"))),
        ("execute P", SqlExecute("p", ())),
        ("EXECUTE p(ARRAY[1, 2], '{3}')", SqlExecute("p", ("ARRAY[1, 2]", "'{3}'"))),
        ("EXECUTE p(1) extra", None),
        ("EXECUTE p(1,)", None),
        ("EXECUTE p(1", None),
    ],
)
def test_execute_parts(sql, expected):
    assert sql_execute_parts(sql) == expected


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("42", "42"),
        ("-42", "-42"),
        ("'42'", "42"),
        ("E'it\\'s'", "it's"),
        ("$$x$$", "x"),
        ("'1'::int", None),  # a cast may change the value
        ("0 + 1", None),
        ("NULL", None),
        ("-'1'", None),
        ("$1", None),
    ],
)
def test_literal_argument(arg, expected):
    assert literal_argument(arg) == expected
