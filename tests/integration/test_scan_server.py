"""The scan splits literals where PostgreSQL does, under either standard_conforming_strings."""

from __future__ import annotations

import psycopg
import pytest

from proxy.rewrite.lexer import literal_text
from proxy.rewrite.scan import scan

SQL = "SELECT 'a\\'' , 'b\\\\' , 'c''d'"


def test_backslash_literals_as_the_server_reads_them(pg):
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute("SET standard_conforming_strings = off")
        c.execute("SET escape_string_warning = off")
        server = list(c.execute(SQL).fetchone())
        found = scan(SQL, False)
        assert (
            [literal_text(lit, False) for lit in found.literals] == server == ["a'", "b\\", "c'd"]
        )
        c.execute("SET standard_conforming_strings = on")
        with pytest.raises(psycopg.errors.SyntaxError):
            c.execute(SQL)
        # scs on: the backslash is text and '' a quote, so the first string runs to the next '
        assert scan(SQL, True).literals[0] == "'a\\'' , '"
        assert c.execute("SELECT 'a\\'' , '").fetchone() == ("a\\' , ",)
