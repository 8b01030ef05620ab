"""proxy.sqlnames: folding, splitting and quoting as PostgreSQL does (the real server's view is
checked in tests/integration/test_sqlnames_server.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.rewrite.lexer import literal_text, write_target
from proxy.sqlnames import (
    KEYWORDS,
    fold_identifier,
    identifier_value,
    parse_identifier,
    quote_e_literal,
    quote_ident,
    quote_literal,
    quote_literal_any,
    quote_qualified,
    split_identifiers,
)

# names PostgreSQL can hold (no NUL), mixing what needs quoting with what does not
NAMES = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
PLAIN_ISH = st.text(alphabet='abcXYZ_09$ ."éÄß', min_size=1, max_size=8)


def test_fold_lowers_ascii_only():
    assert fold_identifier("Accounts") == "accounts"
    assert fold_identifier("Ärzte") == "Ärzte"  # PostgreSQL keeps the capital Ä
    assert fold_identifier("ÄRZTE") == "Ärzte"
    assert fold_identifier("ÉtÉ_1$") == "ÉtÉ_1$"
    assert fold_identifier("İX") == "İx"  # no Unicode case mapping at all


def test_identifier_value_of_tokens():
    assert identifier_value('"My ""Big"" Table"') == 'My "Big" Table'
    assert identifier_value("MyTable") == "mytable"
    assert identifier_value("Ärzte") == "Ärzte"


def test_split_and_parse():
    assert split_identifiers('Public."My ""Big"" Table"') == ["public", 'My "Big" Table']
    assert split_identifiers("Ärzte") == ["Ärzte"]
    assert parse_identifier('"MixedCase"') == "MixedCase"
    for bad in ("", "1abc", "a.", ".a", "a b", '""', "a-b", '"open'):
        with pytest.raises(ValueError):
            split_identifiers(bad)
    with pytest.raises(ValueError):
        parse_identifier("a.b")


@pytest.mark.parametrize(
    "name, quoted",
    [
        ("accounts", "accounts"),
        ("_x1", "_x1"),
        ("Accounts", '"Accounts"'),
        ("Ärzte", '"Ärzte"'),
        ("é", '"é"'),
        ("a$b", '"a$b"'),  # quote_identifier() only trusts a-z, 0-9 and _
        ("1x", '"1x"'),
        ("a b", '"a b"'),
        ('a"b', '"a""b"'),
        ("user", '"user"'),
        ("select", '"select"'),
        ("json_table", '"json_table"'),
        ("action", "action"),  # unreserved keywords stay bare
        ("", '""'),
    ],
)
def test_quote_ident(name, quoted):
    assert quote_ident(name) == quoted


def test_keywords_are_lower_case_words():
    assert all(k.isascii() and k == k.lower() and k.replace("_", "").isalpha() for k in KEYWORDS)
    assert {"user", "table", "select", "merge_action"} <= KEYWORDS


def test_quote_qualified():
    assert quote_qualified(None, "Ärzte") == '"Ärzte"'
    assert quote_qualified("public", "MixedCase") == 'public."MixedCase"'


@settings(max_examples=300, deadline=None)
@given(NAMES)
def test_quoted_names_read_back(name):
    assert parse_identifier(quote_ident(name)) == name
    assert identifier_value(quote_ident(name)) == name


@settings(max_examples=300, deadline=None)
@given(PLAIN_ISH, PLAIN_ISH)
def test_lexer_reads_quoted_names_back(schema, name):
    # what the planner writes (quote_ident) is what the write prefilter reads
    sql = f"UPDATE {quote_qualified(schema, name)} SET a = 1"
    assert write_target(sql) == (schema, name)


@settings(max_examples=200, deadline=None)
@given(st.text().filter(lambda s: "\x00" not in s), st.booleans())
def test_quote_literal_round_trips(value, scs):
    quoted = quote_literal(value, scs)
    assert literal_text(quoted, scs) == value
    assert quoted.startswith("E'") == (not scs and "\\" in value)


@settings(max_examples=200, deadline=None)
@given(st.text().filter(lambda s: "\x00" not in s), st.booleans())
def test_scs_proof_literals_read_the_same_either_way(value, scs):
    assert literal_text(quote_literal_any(value), scs) == value
    assert literal_text(quote_e_literal(value), scs) == value


def test_literal_forms_and_nul():
    assert quote_literal("a\\b", True) == "'a\\b'"
    assert quote_literal("it's", False) == "'it''s'"
    assert quote_literal("a\\b'", False) == "E'a\\\\b'''"
    assert quote_e_literal("public") == "E'public'"
    for quoter in (quote_literal, quote_e_literal, quote_literal_any):
        with pytest.raises(ValueError):
            quoter("a\x00b")
