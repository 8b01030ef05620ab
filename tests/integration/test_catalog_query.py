"""The catalog query against a real server: what it reports, and that the proxy's way of
sending it (simple Query, text DataRows) gives the same catalog as asyncpg."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from proxy.catalog import Catalog, catalog_query
from proxy.catalog_fetch import fetch_catalog

SCHEMA = """
CREATE SCHEMA cat;
CREATE DOMAIN cat.posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN cat.posint2 AS cat.posint;
CREATE DOMAIN cat.jdom AS json;
CREATE TYPE cat.mood AS ENUM ('sad', 'happy');
CREATE TYPE cat.pair AS (a integer, b text);
CREATE TABLE cat."Odd 'Name'" (
    b integer, a text, gone integer, "Mixed" varchar(10) NOT NULL, j json, jb jsonb, x xml, p point,
    arr integer[], jarr json[], d cat.posint2, jd cat.jdom, m cat.mood, r int4range,
    c cat.pair, n numeric(10,2), ts timestamptz, ci cidr,
    PRIMARY KEY (b, a));
ALTER TABLE cat."Odd 'Name'" DROP COLUMN gone;
-- xml stays NULL: some servers are built without libxml (xml has no = at all anyway)
INSERT INTO cat."Odd 'Name'" VALUES (1, 'a', 'm', '{}', '{}', NULL, '(1,2)', '{1}', '{"{}"}',
    5, '{}', 'sad', '[1,2)', ROW(1, 'x'), 1.5, now(), '10.0.0.0/8');
CREATE TABLE cat.plain (id integer);
CREATE VIEW cat.v AS SELECT 1 AS id;
"""

TABLES = [
    ("cat", "Odd 'Name'"),
    ("cat", "plain"),
    ("cat", "v"),
    ("cat", "missing"),
    ("nope", "plain"),
]
NOT_COMPARABLE = {"j", "x", "p", "jarr", "jd"}


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="module")
def db(upstream_dsn):
    name = f"optimist_catalog_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(upstream_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(upstream_dsn, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        yield dsn
    finally:
        with psycopg.connect(upstream_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def simple_query_rows(dsn: str, sql: str) -> list[list[str | None]]:
    """Send `sql` as one simple Query (PQexec), read text values: as the session will."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        result = conn.pgconn.exec_(sql.encode())
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
        return [
            [
                None if (v := result.get_value(r, c)) is None else v.decode()
                for c in range(result.nfields)
            ]
            for r in range(result.ntuples)
        ]


def test_simple_query_and_asyncpg_read_the_same_catalog(db):
    in_band = Catalog.from_rows(simple_query_rows(db, catalog_query(TABLES)))
    fetched = asyncio.run(fetch_catalog(db, TABLES))
    assert in_band.tables_by_oid == fetched.tables_by_oid
    assert {t.qualified_name for t in fetched.tables_by_oid.values()} == {
        "cat.Odd 'Name'",
        "cat.plain",
    }  # views and missing tables give no rows


def test_columns_keys_types_and_comparability(db):
    catalog = asyncio.run(fetch_catalog(db, TABLES))
    odd = catalog.table("cat", "Odd 'Name'")
    assert list(odd.columns) == [
        "b",
        "a",
        "Mixed",
        "j",
        "jb",
        "x",
        "p",
        "arr",
        "jarr",
        "d",
        "jd",
        "m",
        "r",
        "c",
        "n",
        "ts",
        "ci",
    ]  # the dropped column is gone
    assert odd.primary_key == ("b", "a")
    assert odd.columns["Mixed"].attnum == 4  # attnums keep the dropped column's gap
    assert {name for name, c in odd.columns.items() if not c.comparable} == NOT_COMPARABLE
    assert odd.columns["Mixed"].type_name == "character varying(10)"
    assert odd.columns["Mixed"].not_null and not odd.columns["n"].not_null
    assert odd.columns["b"].not_null  # primary key columns are NOT NULL
    assert odd.columns["n"].type_name == "numeric(10,2)" and odd.columns["n"].type_oid == 1700
    assert odd.columns["d"].type_name == "cat.posint2" and odd.columns["d"].base_type_oid == 23
    assert odd.columns["ts"].base_type_oid == 1184
    assert catalog.table("cat", "plain").primary_key == ()


def test_comparability_agrees_with_the_server(db):
    """A column said comparable really works with IS NOT DISTINCT FROM on stored values; one
    said not comparable really fails."""
    catalog = asyncio.run(fetch_catalog(db, TABLES))
    odd = catalog.table("cat", "Odd 'Name'")
    with psycopg.connect(db, autocommit=True) as conn:
        for name, column in odd.columns.items():
            sql = (
                f'SELECT x."{name}" IS NOT DISTINCT FROM y."{name}" '
                "FROM cat.\"Odd 'Name'\" x, cat.\"Odd 'Name'\" y"
            )
            try:
                conn.execute(sql).fetchall()
                works = True
            except psycopg.Error:
                works = False
            assert works == column.comparable, name
