"""proxy.sqlnames against a real PostgreSQL: what quote_ident() writes, the server reads back as
the same name; unquoted names fold as the server folds them; quote_ident() agrees with the
server's own quote_ident(); literals read back as their values under either
standard_conforming_strings."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.sqlnames import (
    KEYWORDS,
    fold_identifier,
    quote_e_literal,
    quote_ident,
    quote_literal,
    quote_literal_any,
)

# short enough that no name reaches NAMEDATALEN (63 bytes) even in 4-byte characters
NAMES = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
# what can be written unquoted: a letter or _, then letters, digits, _ and $
_LETTER = st.characters(whitelist_categories=("Lu", "Ll", "Lt", "Lo"))
UNQUOTED = st.builds(
    lambda first, rest: first + rest,
    st.one_of(_LETTER, st.just("_")),
    st.text(alphabet=st.one_of(_LETTER, st.sampled_from("_$0123456789")), max_size=10),
).filter(lambda s: fold_identifier(s) not in KEYWORDS)

_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def conn(pg):
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        if c.execute("SHOW server_encoding").fetchone()[0] != "UTF8":
            pytest.skip("needs a UTF8 database")
        yield c


def _labels(conn, spellings: list[str]) -> list[str]:
    """The column names the server gives `SELECT 1 AS <spelling>, ...`."""
    cur = conn.execute("SELECT " + ", ".join(f"1 AS {s}" for s in spellings))
    return [d.name for d in cur.description]


@_SETTINGS
@given(st.lists(NAMES, min_size=1, max_size=60))
def test_quoted_names_read_back_as_themselves(conn, names):
    assert _labels(conn, [quote_ident(n) for n in names]) == names


@_SETTINGS
@given(st.lists(UNQUOTED, min_size=1, max_size=60))
def test_unquoted_names_fold_like_the_server(conn, names):
    assert _labels(conn, names) == [fold_identifier(n) for n in names]


@_SETTINGS
@given(
    st.lists(
        st.one_of(
            NAMES,
            st.sampled_from(sorted(KEYWORDS)),
            st.sampled_from(["action", "key", "version", "Ärzte", "a$b", "_x"]),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_quote_ident_agrees_with_the_server(conn, names):
    rows = conn.execute(
        "SELECT quote_ident(n) FROM unnest(%s::text[]) WITH ORDINALITY AS u(n, i) ORDER BY i",
        (names,),
    ).fetchall()
    assert [quote_ident(n) for n in names] == [r[0] for r in rows]


def test_every_keyword_list_entry_is_one_the_server_quotes(conn):
    rows = conn.execute("SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'").fetchall()
    assert {r[0] for r in rows} <= KEYWORDS  # a newer server may add keywords: update the list


@pytest.mark.parametrize("scs", ["on", "off"])
@_SETTINGS
@given(
    values=st.lists(
        st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))),
        min_size=1,
        max_size=20,
    )
)
def test_literals_read_back(conn, scs, values):
    conn.execute(f"SET standard_conforming_strings = {scs}")
    try:
        for quoter in (lambda v: quote_literal(v, scs == "on"), quote_e_literal, quote_literal_any):
            sql = "SELECT " + ", ".join(quoter(v) + "::text" for v in values)
            assert list(conn.execute(sql).fetchone()) == values
    finally:
        conn.execute("RESET standard_conforming_strings")
