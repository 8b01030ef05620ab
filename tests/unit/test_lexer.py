"""proxy.rewrite.lexer: splitting, classification, the write prefilter, literal normalisation."""

from __future__ import annotations

import time

import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from proxy.rewrite.lexer import (
    MUST_PARSE,
    PLACEHOLDER_BASE,
    Statement,
    _normalize_slow,
    classify,
    denormalize,
    literal_text,
    normalize,
    quote_ident,
    quote_literal,
    quote_literal_any,
    split_statements,
    write_target,
)

# ------------------------------------------------------------------------ split_statements


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1;", ["SELECT 1"]),
        ("  SELECT 1 ;  SELECT 2  ", ["SELECT 1", "SELECT 2"]),
        ("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b'", "SELECT 2"]),
        ("SELECT 'it''s;'; SELECT 2", ["SELECT 'it''s;'", "SELECT 2"]),
        ("SELECT E'\\';'; SELECT 2", ["SELECT E'\\';'", "SELECT 2"]),
        ('SELECT "a;""b"; SELECT 2', ['SELECT "a;""b"', "SELECT 2"]),
        ("SELECT $$;$$; SELECT $tag$ $$; $tag$", ["SELECT $$;$$", "SELECT $tag$ $$; $tag$"]),
        ("SELECT 1 -- c;\n; SELECT 2", ["SELECT 1 -- c;", "SELECT 2"]),
        ("SELECT /* a /* ; */ ; */ 1; SELECT 2", ["SELECT /* a /* ; */ ; */ 1", "SELECT 2"]),
        ("SELECT 1; -- only a comment", ["SELECT 1"]),
        ("; ; /* x */ ;", []),
        ("", []),
        # $1 is a parameter, a$$b an identifier: neither opens a dollar quote
        ("SELECT $1; SELECT a$$b; SELECT 3", ["SELECT $1", "SELECT a$$b", "SELECT 3"]),
        # with standard_conforming_strings on, a backslash does not escape a quote
        ("SELECT 'a\\'; SELECT 2", ["SELECT 'a\\'", "SELECT 2"]),
        # ... but a word ending in e before a quote is not an E'' string
        ("SELECT type'a\\'; SELECT 2", ["SELECT type'a\\'", "SELECT 2"]),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
            "SELECT CASE WHEN true THEN 2 END; END; SELECT 3",
            [
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
                "SELECT CASE WHEN true THEN 2 END; END",
                "SELECT 3",
            ],
        ),
        (
            "CREATE FUNCTION f() RETURNS int AS $$ begin atomic $$ LANGUAGE sql; SELECT 3",
            ["CREATE FUNCTION f() RETURNS int AS $$ begin atomic $$ LANGUAGE sql", "SELECT 3"],
        ),
    ],
)
def test_split_statements(sql, expected):
    assert split_statements(sql) == expected


def test_split_with_standard_conforming_strings_off():
    sql = "SELECT 'a\\'; b'; SELECT 2"
    assert split_statements(sql, standard_conforming_strings=False) == [
        "SELECT 'a\\'; b'",
        "SELECT 2",
    ]
    assert split_statements(sql) == ["SELECT 'a\\'", "b'; SELECT 2"]


def test_unterminated_constructs_keep_the_rest():
    assert split_statements("SELECT 'abc; SELECT 2") == ["SELECT 'abc; SELECT 2"]
    assert split_statements("SELECT 1; /* never closed ; ") == ["SELECT 1"]


# Random statements made of pieces that hide semicolons in every way PostgreSQL allows.
_word = st.sampled_from(
    [
        "SELECT",
        "x",
        "a1",
        "_b",
        "tab$le",
        "Étoile",
        "1",
        "2.5",
        "=",
        "+",
        "(",
        ")",
        ",",
        "e",
        "$1",
        "::",
    ]
)
_hiding = st.one_of(
    st.text(alphabet="ab;'\" \n", max_size=6).map(lambda s: "'" + s.replace("'", "''") + "'"),
    st.text(alphabet="ab;'\\ n", max_size=6).map(
        lambda s: "E'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    ),
    st.text(alphabet="ab;\"' ", max_size=6).map(lambda s: '"' + s.replace('"', '""') + '"'),
    st.text(alphabet="ab;$' ", max_size=6)
    .filter(lambda s: "$q$" not in s and not s.endswith("$q"))
    .map(lambda s: "$q$" + s + "$q$"),
    st.text(alphabet="ab;' ", max_size=6).map(lambda s: "$$" + s.replace("$", "") + "$$"),
    st.text(alphabet="ab;'\" ", max_size=6).map(lambda s: "-- " + s + "\n"),
    st.text(alphabet="ab;'\" ", max_size=6).map(lambda s: "/* " + s + " /* ;nested; */ */"),
)
_statement = (
    st.lists(st.one_of(_word, _hiding), min_size=1, max_size=8)
    .map(" ".join)
    .map(lambda s: "SELECT " + s)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_statement, min_size=1, max_size=5))
def test_split_gives_back_joined_statements(statements):
    expected = [s.strip() for s in statements]
    assert split_statements(";\n".join(statements)) == expected
    assert split_statements(" ; ".join(s + "\n" for s in statements) + ";") == expected


# ------------------------------------------------------------------------ classify


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("select 1", Statement("SELECT")),
        ("  /* c */ -- d\n ((SELECT 1))", Statement("SELECT")),
        ("update t set a = 1", Statement("UPDATE")),
        ("WITH x AS (SELECT 1) DELETE FROM t", Statement("WITH")),
        ("begin isolation level serializable", Statement("BEGIN")),
        ("START TRANSACTION", Statement("START")),
        ("commit", Statement("COMMIT")),
        ("END WORK", Statement("END")),
        ("abort", Statement("ABORT")),
        ("COMMIT AND CHAIN", Statement("COMMIT", chain=True)),
        ("rollback transaction and chain", Statement("ROLLBACK", chain=True)),
        ("ROLLBACK AND NO CHAIN", Statement("ROLLBACK")),
        ("SAVEPOINT Sp1", Statement("SAVEPOINT", savepoint="sp1")),
        ('SAVEPOINT "Sp ""1"""', Statement("SAVEPOINT", savepoint='Sp "1"')),
        ("RELEASE SAVEPOINT sp1", Statement("RELEASE", savepoint="sp1")),
        ("RELEASE sp1", Statement("RELEASE", savepoint="sp1")),
        ("RELEASE savepoint", Statement("RELEASE", savepoint="savepoint")),
        ("ROLLBACK TO sp1", Statement("ROLLBACK", savepoint="sp1", rollback_to=True)),
        (
            "rollback work to savepoint SP1",
            Statement("ROLLBACK", savepoint="sp1", rollback_to=True),
        ),
        ("ROLLBACK TRANSACTION TO \"X\"", Statement("ROLLBACK", savepoint="X", rollback_to=True)),
        ("ROLLBACK", Statement("ROLLBACK")),
        ("ROLLBACK PREPARED 'gid'", Statement("ROLLBACK", prepared=True)),
        ("COMMIT PREPARED 'gid'", Statement("COMMIT", prepared=True)),
        ("PREPARE TRANSACTION 'gid'", Statement("PREPARE", prepared=True)),
        ("PREPARE q AS SELECT 1", Statement("PREPARE")),
        ("DISCARD ALL", Statement("DISCARD", discard="ALL")),
        ("discard temporary", Statement("DISCARD", discard="TEMP")),
        ("DISCARD TEMP", Statement("DISCARD", discard="TEMP")),
        ("DISCARD PLANS", Statement("DISCARD", discard="PLANS")),
        ("DISCARD SEQUENCES", Statement("DISCARD", discard="SEQUENCES")),
        ("DEALLOCATE ALL", Statement("DEALLOCATE")),
        ("", Statement("")),
        ("/* only */", Statement("")),
    ],
)
def test_classify(sql, expected):
    assert classify(sql) == expected


# ------------------------------------------------------------------------ write_target


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("UPDATE accounts SET a = 1", (None, "accounts")),
        ("update ONLY Public.Accounts set a = 1", ("public", "accounts")),
        ('UPDATE "Public"."Acc ""x""" SET a = 1', ("Public", 'Acc "x"')),
        ("DELETE FROM t WHERE id = 1", (None, "t")),
        ("delete from only s . t", ("s", "t")),
        ("INSERT INTO s.t(a) VALUES (1)", ("s", "t")),
        ("INSERT INTO t VALUES (1)", (None, "t")),
        ("/* hi */ -- there\n UPDATE t SET a = 1", (None, "t")),
        ("MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE", (None, "t")),
        ("WITH x AS (SELECT 1) UPDATE t SET a = 1", MUST_PARSE),
        ("with recursive x AS (SELECT 1) SELECT 1", MUST_PARSE),
        ('UPDATE U&"t" SET a = 1', MUST_PARSE),
        ("UPDATE db.s.t SET a = 1", MUST_PARSE),
        ("SELECT * FROM t", None),
        ("updates", None),
        ("UPDATEt SET a = 1", None),
        ("withhold", None),
        ("", None),
    ],
)
def test_write_target(sql, expected):
    assert write_target(sql) == expected


def test_write_target_speed_is_printed():
    for sql in (
        "SELECT id, balance FROM accounts WHERE id = 42",
        "UPDATE accounts SET balance = 5 WHERE id = 42",
    ):
        n = 20000
        t0 = time.perf_counter()
        for _ in range(n):
            write_target(sql)
        print(f"\nwrite_target({sql[:6]}...): {(time.perf_counter() - t0) / n * 1e6:.2f} us")


# ------------------------------------------------------------------------ normalize


def test_normalize_shares_a_template_between_literal_values():
    a = normalize("UPDATE t SET a = 1 WHERE id = 5")
    b = normalize("UPDATE t SET a = 2 WHERE id = 7")
    assert a[0] == b[0] == "UPDATE t SET a = $90001 WHERE id = $90002"
    assert a[1] == ("1", "5") and b[1] == ("2", "7")


@pytest.mark.parametrize(
    "sql, template, literals",
    [
        (
            "SELECT 'it''s', E'a\\nb', $$x$$",
            "SELECT $90001, $90002, $90003",
            ("'it''s'", "E'a\\nb'", "$$x$$"),
        ),
        (
            "UPDATE t SET d = DATE '2020-01-01', i = INTERVAL '1 day' WHERE id = 1",
            "UPDATE t SET d = DATE '2020-01-01', i = INTERVAL '1 day' WHERE id = $90001",
            ("1",),
        ),
        (
            "UPDATE t SET d = '2020-01-01'::date WHERE id = 1",
            "UPDATE t SET d = $90001::date WHERE id = $90002",
            ("'2020-01-01'", "1"),
        ),
        (
            "SELECT x::varchar(20), CAST(y AS numeric(10, 2)) FROM t WHERE a = 3",
            "SELECT x::varchar(20), CAST(y AS numeric(10, 2)) FROM t WHERE a = $90001",
            ("3",),
        ),
        (
            "DELETE FROM t WHERE id = -5 AND x = a - 3",
            "DELETE FROM t WHERE id = $90001 AND x = a - $90002",
            ("-5", "3"),
        ),
        (
            "DELETE FROM t WHERE id IN (1,2) LIMIT 10 OFFSET 2",
            "DELETE FROM t WHERE id IN ($90001,$90002) LIMIT $90003 OFFSET $90004",
            ("1", "2", "10", "2"),
        ),
        ("UPDATE t SET a = $1 WHERE id = $2", "UPDATE t SET a = $1 WHERE id = $2", ()),
        (
            "UPDATE t SET \"x1\" = 1.5e3 WHERE b = .5",
            "UPDATE t SET \"x1\" = $90001 WHERE b = $90002",
            ("1.5e3", ".5"),
        ),
        ("SELECT 1 /* 2 */ , '/* 3 */'", "SELECT $90001 /* 2 */ , $90002", ("1", "'/* 3 */'")),
        ("SELECT B'101', X'1F', U&'x'", "SELECT B'101', X'1F', U&'x'", ()),
    ],
)
def test_normalize(sql, template, literals):
    assert normalize(sql) == (template, literals)
    assert _normalize_slow(sql) == (template, literals)
    assert denormalize(template, literals) == sql


def test_placeholders_parse_as_parameters_distinct_from_client_params():
    template, literals = normalize("UPDATE t SET a = 'x', b = $1 WHERE id = 42")
    tree = sqlglot.parse_one(template, read="postgres")
    params = sorted(int(p.this.this) for p in tree.find_all(exp.Parameter))
    assert params == [1, PLACEHOLDER_BASE, PLACEHOLDER_BASE + 1]
    assert literals == ("'x'", "42")


_literal = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False, min_value=0).map(repr),
    st.text(alphabet="ab'\\;$ \n", max_size=8).map(quote_literal),
    st.text(alphabet="ab'\\;$ \n", max_size=8).map(lambda s: quote_literal(s, False)),
    st.text(alphabet="ab'; ", max_size=5).map(lambda s: "$$" + s + "$$"),
)
_glue = st.sampled_from(
    [
        " = ",
        ", ",
        " + ",
        " - ",
        " IN (",
        ") AND x = ",
        "::int, ",
        " -- c\n, ",
        " /* /* n */ */ , ",
        " WHERE a = ",
        " DATE ",
        "(",
        " THEN ",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_glue, _literal), min_size=1, max_size=8))
def test_normalize_round_trips(pieces):
    sql = "UPDATE t SET a" + "".join(g + lit for g, lit in pieces)
    template, literals = normalize(sql)
    assert denormalize(template, literals) == sql
    assert _normalize_slow(sql) == (template, literals)
    for lit in literals:
        assert literal_text(lit) is not None or lit.startswith("$")


def test_normalize_speed_is_printed():
    sql = "UPDATE accounts SET balance = 5, owner = 'bob' WHERE id = 42"
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        normalize(sql)
    print(f"\nnormalize: {(time.perf_counter() - t0) / n * 1e6:.2f} us")


# ------------------------------------------------------------------------ literals & quoting


@pytest.mark.parametrize(
    "literal, scs, value",
    [
        ("'it''s'", True, "it's"),
        ("E'a\\nb'", True, "a\nb"),
        ("e'\\x41\\101\\u00e9\\U0001F600\\\\\\''", True, "AA\u00e9\U0001f600\\'"),
        ("'a\\tb'", True, "a\\tb"),
        ("'a\\tb'", False, "a\tb"),
        ("'a\\'b'", False, "a'b"),
        ("42", True, "42"),
        ("-5", True, "-5"),
        ("1_000", True, "1000"),
        ("0x1F", True, "31"),
        ("1.5e3", True, "1.5e3"),
        ("$$a'b$$", True, "a'b"),
        ("$t$x$$y$t$", True, "x$$y"),
        ("'unterminated", True, None),
        ("B'101'", True, None),
        ("abc", True, None),
    ],
)
def test_literal_text(literal, scs, value):
    assert literal_text(literal, scs) == value


@settings(max_examples=200, deadline=None)
@given(st.text().filter(lambda s: "\x00" not in s), st.booleans())
def test_quote_literal_round_trips(value, scs):
    assert literal_text(quote_literal(value, scs), scs) == value


def test_quote_literal_forms():
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("a\\b'", False) == "E'a\\\\b'''"
    with pytest.raises(ValueError):
        quote_literal("a\x00b")


@pytest.mark.parametrize("value", ["plain", "it's", "back\\slash", "tag$o$x", "end$o"])
def test_quote_literal_any_reads_the_same_whatever_scs(value):
    quoted = quote_literal_any(value)
    assert literal_text(quoted, True) == value
    assert literal_text(quoted, False) == value


def test_quote_ident():
    assert quote_ident("accounts") == "accounts"
    assert quote_ident("Accounts") == '"Accounts"'
    assert quote_ident("user") == '"user"'
    assert quote_ident('a"b') == '"a""b"'
