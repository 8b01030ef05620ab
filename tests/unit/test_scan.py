"""proxy.rewrite.scan: one cached pass gives what write_target, normalize and classify gave."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.rewrite import lexer
from proxy.rewrite.scan import MAX_CACHED_LENGTH, StatementScan, scan, scan_cache_info


def test_a_typical_update():
    s = scan("UPDATE Ärzte SET name = 'x', n = -5 WHERE id = 42")
    assert isinstance(s, StatementScan)
    assert s.template == "UPDATE Ärzte SET name = $90001, n = $90002 WHERE id = $90003"
    assert s.literals == ("'x'", "-5", "42")
    assert s.keyword == "UPDATE" and s.statement == lexer.Statement("UPDATE")
    assert s.target == (None, "Ärzte")  # folded as PostgreSQL does: the capital Ä stays


@pytest.mark.parametrize(
    "sql, target",
    [
        ('UPDATE "Sales"."Q1 Orders" SET a = 1', ("Sales", "Q1 Orders")),
        ("delete from ONLY Public.Accounts where id = 1", ("public", "accounts")),
        ("WITH w AS (DELETE FROM t RETURNING *) SELECT 1", lexer.MUST_PARSE),
        ("SELECT 1", None),
    ],
)
def test_write_targets(sql, target):
    assert scan(sql).target == target


def test_transaction_details():
    s = scan("ROLLBACK TO SAVEPOINT Sp_Ä")
    assert s.keyword == "ROLLBACK" and s.rollback_to and s.savepoint == "sp_Ä"
    assert scan('SAVEPOINT "My Point"').savepoint == "My Point"
    assert scan("COMMIT AND CHAIN").statement.chain


def test_backslash_quote_ends_a_literal_only_when_scs_is_off():
    sql = "SELECT 'a\\'' , 1"
    off = scan(sql, False)
    assert off.literals == ("'a\\''", "1")  # \' is an escaped quote: the string ends after it
    assert lexer.literal_text(off.literals[0], False) == "a'"
    on = scan(sql, True)
    # with scs on the backslash is plain text and '' an escaped quote: the string never ends
    assert on.literals == ("'a\\'' , 1",)
    assert on.template == "SELECT $90001"


def test_scs_off_backslashes_do_not_hide_a_placeholder_context():
    sql = "UPDATE t SET a = 'x\\\\' WHERE id = 7"  # the literal is 'x\\' (one escaped backslash)
    assert scan(sql, False).literals == ("'x\\\\'", "7")
    assert lexer.literal_text(scan(sql, False).literals[0], False) == "x\\"
    assert lexer.literal_text(scan(sql, True).literals[0], True) == "x\\\\"


def test_repeats_are_cache_hits_and_keys_include_scs():
    sql = "UPDATE t SET a = 1 WHERE id = 99123"
    first = scan(sql)
    hits = scan_cache_info().hits
    assert scan(sql) is first
    assert scan_cache_info().hits == hits + 1
    assert scan(sql, False) is not first


def test_long_statements_are_not_cached():
    sql = "INSERT INTO t VALUES " + ", ".join(f"({i})" for i in range(MAX_CACHED_LENGTH // 4))
    size = scan_cache_info().currsize
    assert scan(sql).literals[:2] == ("0", "1")
    assert scan_cache_info().currsize == size


def test_old_functions_read_the_same_scan():
    sql = "DELETE FROM accounts WHERE id = 5 AND owner = E'\\\\'"
    for scs in (True, False):
        s = scan(sql, scs)
        assert lexer.normalize(sql, scs) == (s.template, s.literals)
        assert lexer.normalize(sql, scs) == lexer.normalize_uncached(sql, scs)
        assert lexer.classify(sql, scs) == s.statement == lexer.classify_uncached(sql, scs)
    assert lexer.write_target(sql) == scan(sql).target == (None, "accounts")


_piece = st.sampled_from(
    [
        "'a\\''",
        "'b'",
        "E'\\''",
        "1",
        " , ",
        " = ",
        "$$x'$$",
        "--c\n",
        "/* ' */",
        '"q\'"',
        " WHERE ",
        "\\",
        "x",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_piece, max_size=10), st.booleans())
def test_scan_agrees_with_the_separate_passes(pieces, scs):
    sql = "UPDATE t SET a = " + "".join(pieces)
    s = scan(sql, scs)
    assert (s.template, s.literals) == lexer.normalize_uncached(sql, scs)
    assert s.statement == lexer.classify_uncached(sql, scs)
    assert s.target == lexer.write_target(sql)
