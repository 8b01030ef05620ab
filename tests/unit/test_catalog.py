"""The catalog query's text and reading its rows (no database: see tests/integration)."""

from __future__ import annotations

import pytest

from proxy.catalog import CATALOG_COLUMNS, Catalog, catalog_query, sql_literal


def test_names_are_embedded_as_safe_literals():
    sql = catalog_query([("public", "accounts"), ("we'ird\\", 'Q"1')])
    assert "VALUES (E'public', E'accounts'), (E'we''ird\\\\', E'Q\"1')" in sql
    assert "$1" not in sql  # sent as a simple Query: no parameters


def test_duplicate_tables_are_asked_once_and_empty_lists_still_give_a_query():
    sql = catalog_query([("public", "a"), ("public", "a")])
    assert sql.count("E'a'") == 1
    empty = catalog_query([])
    assert "WHERE false" in empty and "VALUES" not in empty


def test_literal_rejects_nul():
    with pytest.raises(ValueError):
        sql_literal("a\0b")


def test_query_excludes_dropped_and_system_columns_and_orders_by_table_and_attnum():
    sql = catalog_query([("public", "a")])
    assert "a.attnum > 0 AND NOT a.attisdropped" in sql
    assert sql.rstrip().endswith("ORDER BY c.schema_name, c.table_name, c.attnum")


def row(schema, table, oid, attnum, name, type_oid, type_name, pk, comparable, not_null, base):
    return [schema, table, oid, attnum, name, type_oid, type_name, pk, comparable, not_null, base]


def test_from_rows_reads_text_values():
    rows = [
        row(
            "public",
            "accounts",
            "16400",
            "3",
            "balance",
            "1700",
            "numeric(14,2)",
            "f",
            "t",
            "t",
            "1700",
        ),
        row("public", "accounts", "16400", "1", "id", "23", "integer", "t", "t", "t", "23"),
        row("public", "accounts", "16400", "4", "doc", "114", "json", "f", "f", "f", None),
        row("app", "lines", "16500", "1", "order_id", "16390", "app.posint", "t", "t", "t", "23"),
        row("app", "lines", "16500", "2", "line", "21", "smallint", "t", "t", "t", "21"),
    ]
    assert len(rows[0]) == len(CATALOG_COLUMNS)
    catalog = Catalog.from_rows(rows)
    accounts = catalog.table("public", "accounts")
    assert accounts is catalog.tables_by_oid[16400]
    assert (accounts.oid, accounts.qualified_name, accounts.primary_key) == (
        16400,
        "public.accounts",
        ("id",),
    )
    assert list(accounts.columns) == ["id", "balance", "doc"]  # attnum order whatever the row order
    doc = accounts.columns["doc"]
    assert (
        doc.attnum,
        doc.type_oid,
        doc.type_name,
        doc.comparable,
        doc.not_null,
        doc.base_type_oid,
    ) == (4, 114, "json", False, False, 114)  # no base type: the type itself
    lines = catalog.table("app", "lines")
    assert lines.primary_key == ("order_id", "line")
    assert (
        lines.columns["order_id"].base_type_oid == 23
        and lines.columns["order_id"].type_oid == 16390
    )
    assert catalog.table("public", "lines") is None


def test_find_walks_search_path():
    rows = [
        row("app", "t", "2", "1", "id", "23", "integer", "t", "t", "t", "23"),
        row("public", "t", "1", "1", "id", "23", "integer", "t", "t", "t", "23"),
    ]
    catalog = Catalog.from_rows(rows)
    assert catalog.find("t", ["app", "public"]).oid == 2
    assert catalog.find("t", ["public", "app"]).oid == 1
    assert catalog.find("t", ["other"]) is None
    assert Catalog.from_rows([]).tables_by_oid == {}
