"""What the database says about the protected tables: columns, types, primary keys.

Sans-IO: `catalog_query()` builds one self-contained SELECT (no parameters, so the session
can send it in-band as a simple Query on the client's own server connection) and
`Catalog.from_rows()` reads its result in text format, as DataRows carry it. The live fetch for
`optimist check` and tests is `proxy.catalog_fetch.fetch_catalog()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from proxy.sqlnames import quote_e_literal

# Result columns of catalog_query(), in order.
CATALOG_COLUMNS = (
    "schema_name",
    "table_name",
    "table_oid",
    "attnum",
    "column_name",
    "type_oid",
    "type_name",
    "in_primary_key",
    "comparable",
    "not_null",
    "base_type_oid",
)

# Base types (domains peeled) a bumped version column may have.
INTEGER_TYPE_OIDS = frozenset({21, 23, 20, 1700})  # int2, int4, int8, numeric
TIMESTAMP_TYPE_OIDS = frozenset({1114, 1184})  # timestamp, timestamptz


# names go in as E'' literals: the query is cached and must read the same whatever the
# session's standard_conforming_strings is
sql_literal = quote_e_literal


_QUERY = """\
WITH RECURSIVE wanted(schema_name, table_name) AS (
  {wanted}
), cols AS (
  SELECT n.nspname::text AS schema_name, c.relname::text AS table_name, c.oid AS table_oid,
         a.attnum, a.attname::text AS column_name, a.atttypid AS type_oid,
         pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name,
         COALESCE(a.attnum = ANY (pk.conkey), false) AS in_primary_key,
         a.attnotnull AS not_null
  FROM wanted w
  JOIN pg_catalog.pg_namespace n ON n.nspname = w.schema_name
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.table_name
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
  LEFT JOIN pg_catalog.pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
  WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
), base(type_oid, oid) AS (
  -- a domain (possibly over another domain) is its base type for version bumps
  SELECT DISTINCT type_oid, type_oid FROM cols
  UNION ALL
  SELECT b.type_oid, t.typbasetype FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.oid
  WHERE t.typtype = 'd'
), peel(type_oid, oid, depth) AS (
  -- for equality a domain compares as its base type and an array as its element type
  SELECT DISTINCT type_oid, type_oid, 0 FROM cols
  UNION ALL
  SELECT p.type_oid, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END,
         p.depth + 1
  FROM peel p JOIN pg_catalog.pg_type t ON t.oid = p.oid
  WHERE t.typtype = 'd' OR (t.typcategory = 'A' AND t.typelem <> 0)
), leaf AS (
  SELECT DISTINCT ON (type_oid) type_oid, oid FROM peel ORDER BY type_oid, depth DESC
), types AS (
  SELECT l.type_oid,
         (SELECT b.oid FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.oid
          WHERE b.type_oid = l.type_oid AND t.typtype <> 'd') AS base_type_oid,
         -- IS NOT DISTINCT FROM needs the type's default btree or hash equality, which
         -- json, xml and point lack; implicit binary-coercible (varchar -> text) and polymorphic
         -- (enum, range, multirange, composite) opclasses count
         EXISTS (
           SELECT 1 FROM pg_catalog.pg_opclass oc
           JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
           JOIN pg_catalog.pg_type it ON it.oid = oc.opcintype
           JOIN pg_catalog.pg_type lt ON lt.oid = l.oid
           WHERE oc.opcdefault AND am.amname IN ('btree', 'hash')
             AND (oc.opcintype = l.oid
                  OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast k
                             WHERE k.castsource = l.oid AND k.casttarget = oc.opcintype
                               AND k.castmethod = 'b' AND k.castcontext = 'i')
                  OR (it.typname = 'anyenum' AND lt.typtype = 'e')
                  OR (it.typname = 'anyrange' AND lt.typtype = 'r')
                  OR (it.typname = 'anymultirange' AND lt.typtype = 'm')
                  OR (it.typname = 'record' AND lt.typtype = 'c'))
         ) AS comparable
  FROM leaf l
)
SELECT c.schema_name, c.table_name, c.table_oid, c.attnum, c.column_name, c.type_oid,
       c.type_name, c.in_primary_key, t.comparable, c.not_null, t.base_type_oid
FROM cols c JOIN types t ON t.type_oid = c.type_oid
ORDER BY c.schema_name, c.table_name, c.attnum"""


def catalog_query(tables: Iterable[tuple[str, str]]) -> str:
    """One SELECT describing every column of the named (schema, name) tables that exist.

    Names are as the catalog stores them (already folded). Tables that do not exist, views
    and other non-tables simply produce no rows. Columns: see CATALOG_COLUMNS.
    """
    return _QUERY.format(wanted=_wanted(tables))


_FINGERPRINT = """\
WITH wanted(schema_name, table_name) AS (
  {wanted}
), found AS (
  SELECT c.oid, c.relkind, n.nspname, c.relname
  FROM wanted w
  JOIN pg_catalog.pg_namespace n ON n.nspname = w.schema_name
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.table_name
), parts(part) AS (
  SELECT f.oid::text || ' ' || f.relkind::text || ' ' || pg_catalog.quote_ident(f.nspname) || '.'
         || pg_catalog.quote_ident(f.relname) || ' ('
         || COALESCE((SELECT pg_catalog.string_agg(
                        a.attnum || ' ' || pg_catalog.quote_ident(a.attname) || ' '
                        || a.atttypid || ' ' || a.atttypmod || ' ' || a.attnotnull,
                        ', ' ORDER BY a.attnum)
                      FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = f.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
         || ') key ' || COALESCE((SELECT pk.conkey::text FROM pg_catalog.pg_constraint pk
                                  WHERE pk.conrelid = f.oid AND pk.contype = 'p'), '-')
  FROM found f
  UNION
  -- a view over a wanted table: created, replaced, renamed or dropped
  SELECT 'view ' || v.oid::text || ' ' || v.xmin::text || ' ' || r.xmin::text
  FROM found f
  JOIN pg_catalog.pg_depend d ON d.refobjid = f.oid
   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
  JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
  UNION
  -- which relations have user triggers (triggers_query): created or dropped
  SELECT 'triggers ' || COALESCE(pg_catalog.string_agg(t.tgrelid::text, ' '
                                                       ORDER BY t.tgrelid), '')
  FROM (SELECT DISTINCT tgrelid FROM pg_catalog.pg_trigger WHERE NOT tgisinternal) t
)
SELECT pg_catalog.md5(COALESCE(pg_catalog.string_agg(part, E'\\n' ORDER BY part), ''))
FROM parts"""


def _wanted(tables: Iterable[tuple[str, str]]) -> str:
    pairs = sorted(set(tables))
    if pairs:
        return "VALUES " + ", ".join(f"({sql_literal(s)}, {sql_literal(n)})" for s, n in pairs)
    return "SELECT NULL::text, NULL::text WHERE false"


def catalog_fingerprint_query(tables: Iterable[tuple[str, str]]) -> str:
    """One SELECT of one value that changes whenever what catalog_query() (or the views over
    the tables) would say changes: which of the named tables exist under which oid, their
    columns and types, their primary key. Cheap enough to run every few seconds."""
    return _FINGERPRINT.format(wanted=_wanted(tables))


# the rows of triggers_query() carry this tag first (three columns: the bootstrap reads them
# out of one multi-statement result beside the catalog's and the installed functions')
TRIGGER_TAG = "optimist trigger"

_TRIGGERS = f"""\
SELECT DISTINCT {sql_literal(TRIGGER_TAG)} AS tag, n.nspname::text, c.relname::text
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal"""


def triggers_query() -> str:
    """Rows (tag, schema, name) of every relation with a user trigger (foreign-key checks are
    internal triggers: not those). A write of one may change other rows behind the
    statement's back (proxy.locking.side_effects)."""
    return _TRIGGERS


def trigger_tables(rows: Iterable[Sequence[str | None]]) -> frozenset[tuple[str, str]]:
    """(schema, name) of the relations triggers_query() found, among the rows of one result."""
    return frozenset(
        (row[1] or "", row[2] or "") for row in rows if len(row) == 3 and row[0] == TRIGGER_TAG
    )


@dataclass(frozen=True)
class CatalogColumn:
    name: str
    attnum: int
    type_oid: int
    # format_type(): "integer", "numeric(10,2)", "character varying(40)"
    type_name: str
    # has default btree/hash equality, so IS NOT DISTINCT FROM works on it
    comparable: bool
    not_null: bool
    # the type under any domains (equal to type_oid for plain types)
    base_type_oid: int = 0


@dataclass(frozen=True)
class CatalogTable:
    oid: int
    schema: str
    name: str
    # attnum order
    columns: dict[str, CatalogColumn] = field(default_factory=dict)
    # attnum order (not constraint order: the key is a set of columns to the proxy)
    primary_key: tuple[str, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


def _bool(value: str | None) -> bool:
    return value in ("t", "true", "True", "1")


@dataclass
class Catalog:
    tables_by_oid: dict[int, CatalogTable] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name = {(t.schema, t.name): t for t in self.tables_by_oid.values()}

    def table(self, schema: str, name: str) -> CatalogTable | None:
        return self._by_name.get((schema, name))

    def find(self, name: str, search_path: Sequence[str]) -> CatalogTable | None:
        """The first table called `name` along search_path, as PostgreSQL would pick it."""
        for schema in search_path:
            found = self.table(schema, name)
            if found is not None:
                return found
        return None

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[str | None]]) -> Catalog:
        """Rows of catalog_query() in text format (booleans 't'/'f')."""
        columns: dict[int, list[CatalogColumn]] = {}
        names: dict[int, tuple[str, str]] = {}
        keys: dict[int, list[str]] = {}
        for row in rows:
            (
                schema,
                table,
                oid,
                attnum,
                column,
                type_oid,
                type_name,
                in_pk,
                comparable,
                not_null,
                base_type_oid,
            ) = row
            toid = int(oid)  # type: ignore[arg-type]
            names[toid] = (schema or "", table or "")
            col = CatalogColumn(
                name=column or "",
                attnum=int(attnum),  # type: ignore[arg-type]
                type_oid=int(type_oid),  # type: ignore[arg-type]
                type_name=type_name or "",
                comparable=_bool(comparable),
                not_null=_bool(not_null),
                base_type_oid=int(base_type_oid) if base_type_oid else int(type_oid),  # type: ignore[arg-type]
            )
            columns.setdefault(toid, []).append(col)
            if _bool(in_pk):
                keys.setdefault(toid, []).append(col.name)
        tables = {}
        for toid, (schema, table) in names.items():
            cols = sorted(columns[toid], key=lambda c: c.attnum)
            pk = tuple(c.name for c in cols if c.name in keys.get(toid, ()))
            tables[toid] = CatalogTable(toid, schema, table, {c.name: c for c in cols}, pk)
        return cls(tables)
