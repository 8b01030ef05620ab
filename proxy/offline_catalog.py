"""A catalog without a database, for `optimist explain` without --upstream.

From the CREATE TABLE statements of the schema files beside the rule files (`*.sql`, such as
rules/example-schema.sql) or, for a table none of them creates, from the rule alone: its
`key:` (else an assumed `id`), its version column and the columns it or the statement names.
Every guess is reported, so the reader knows what the plan takes on trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import sqlglot
from sqlglot import exp

from proxy.catalog import Catalog, CatalogColumn, CatalogTable

DataType = exp.DataType.Type
# sqlglot type -> (format_type() name, type OID, has an equality operator)
_TYPES = {
    DataType.SMALLINT: ("smallint", 21, True),
    DataType.INT: ("integer", 23, True),
    DataType.BIGINT: ("bigint", 20, True),
    DataType.TEXT: ("text", 25, True),
    DataType.BOOLEAN: ("boolean", 16, True),
    DataType.DATE: ("date", 1082, True),
    DataType.UUID: ("uuid", 2950, True),
    DataType.JSONB: ("jsonb", 3802, True),
    DataType.JSON: ("json", 114, False),
    DataType.XML: ("xml", 142, False),
    DataType.TIMESTAMP: ("timestamp without time zone", 1114, True),
    DataType.TIMESTAMPTZ: ("timestamp with time zone", 1184, True),
    DataType.DOUBLE: ("double precision", 701, True),
    DataType.FLOAT: ("real", 700, True),
}
ASSUMED_KEY = ("id",)


def schema_files(rule_paths: Iterable[str | Path]) -> list[Path]:
    """`*.sql` files in the rule directories (or beside the rule files)."""
    found: set[Path] = set()
    for raw in rule_paths:
        path = Path(raw)
        folder = path if path.is_dir() else path.parent
        found.update(folder.glob("*.sql"))
    return sorted(found)


def _column_type(kind: exp.DataType | None) -> tuple[str, int, bool]:
    if kind is None:
        return "unknown", 0, True
    if kind.this in _TYPES:
        return _TYPES[kind.this]
    params = [p.sql("postgres") for p in kind.expressions]
    if kind.this == DataType.DECIMAL:
        return "numeric" + (f"({','.join(params)})" if params else ""), 1700, True
    if kind.this == DataType.VARCHAR:
        return "character varying" + (f"({params[0]})" if params else ""), 1043, True
    name = kind.sql("postgres").lower()
    return name, 0, name not in ("point", "line", "polygon", "box", "circle")


def _table_from_create(create: exp.Create, oid: int) -> CatalogTable | None:
    schema_expr = create.this
    if not isinstance(schema_expr, exp.Schema) or not isinstance(schema_expr.this, exp.Table):
        return None
    table = schema_expr.this
    columns: dict[str, CatalogColumn] = {}
    key: list[str] = []
    for item in schema_expr.expressions:
        if isinstance(item, exp.ColumnDef):
            type_name, type_oid, comparable = _column_type(item.args.get("kind"))
            kinds = [c.kind for c in item.constraints]
            primary = any(isinstance(k, exp.PrimaryKeyColumnConstraint) for k in kinds)
            not_null = primary or any(
                isinstance(k, exp.NotNullColumnConstraint) and not k.args.get("allow_null")
                for k in kinds
            )
            columns[item.name] = CatalogColumn(
                item.name, len(columns) + 1, type_oid, type_name, comparable, not_null, type_oid
            )
            if primary:
                key.append(item.name)
        elif isinstance(item, exp.PrimaryKey):
            key.extend(e.name for e in item.expressions)
    return CatalogTable(
        oid, table.db or "public", table.name, columns, tuple(c for c in columns if c in key)
    )


def catalog_from_files(files: Sequence[Path]) -> Catalog:
    tables: dict[int, CatalogTable] = {}
    for path in files:
        try:
            statements = sqlglot.parse(path.read_text(), read="postgres")
        except (OSError, sqlglot.errors.ParseError):
            continue  # not a schema we can read: the rule-only fallback still applies
        for statement in statements:
            if isinstance(statement, exp.Create) and statement.kind == "TABLE":
                table = _table_from_create(statement, len(tables) + 1)
                if table is not None:
                    tables[table.oid] = table
    return Catalog(tables)


def table_from_rule(rule, statement_columns: Iterable[str], oid: int) -> CatalogTable:
    """What the rule alone says of its table: key (or `id`), version column, named columns."""
    key = rule.key if rule.key is not None else ASSUMED_KEY
    names = list(key)
    if rule.version_column:
        names.append(rule.version_column)
    names += [*rule.columns, *(c for g in rule.groups for c in g), *statement_columns]
    columns: dict[str, CatalogColumn] = {}
    for name in dict.fromkeys(names):
        if name == rule.version_column and rule.bump == "increment":
            type_name, type_oid = "integer", 23
        elif name == rule.version_column and rule.bump == "timestamp":
            type_name, type_oid = "timestamp with time zone", 1184
        else:
            type_name, type_oid = "unknown", 0
        columns[name] = CatalogColumn(
            name,
            len(columns) + 1,
            type_oid,
            type_name,
            True,
            name in key or name == rule.version_column,
            type_oid,
        )
    return CatalogTable(oid, rule.schema, rule.name, columns, tuple(key))


def statement_columns(sql: str) -> list[str]:
    """Columns an UPDATE/INSERT statement names (SET targets, INSERT column list, WHERE)."""
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except sqlglot.errors.ParseError:
        return []
    names = [c.name for c in tree.find_all(exp.Column)]
    if isinstance(tree, exp.Insert) and isinstance(tree.this, exp.Schema):
        names += [i.name for i in tree.this.expressions]
    return list(dict.fromkeys(n for n in names if n))
