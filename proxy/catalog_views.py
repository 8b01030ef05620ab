"""Simple views over protected tables: which base column each view column is.

A RowDescription names the view a column comes from, not the table under it. For a view
PostgreSQL can update by itself (one base relation; no DISTINCT, GROUP BY, LIMIT, UNION, ...:
`pg_relation_is_updatable`), every view row is one base row, and a view column that is a plain
column reference is that base column. The view's stored query (pg_rewrite.ev_action) says which:
each output column's origin (`resorigtbl`/`resorigcol`, what a RowDescription of the base
table would report). Read conservatively: a view whose query holds sublinks or anything but one
query level is not mapped at all, and a column that is an expression maps to nothing.

Sans-IO like proxy.catalog: `views_query(oids)` is a plain SELECT, `simple_views(rows, ...)` reads
its text-format rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["SimpleView", "simple_views", "views_query"]

# pg_relation_is_updatable bits: 1 << CMD_UPDATE | 1 << CMD_DELETE
_UPDATE_DELETE = 4 | 16

_QUERY = """\
SELECT DISTINCT v.oid, n.nspname::text, v.relname::text,
       (SELECT pg_catalog.json_agg(a.attname::text ORDER BY a.attnum)
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = v.oid AND a.attnum > 0 AND NOT a.attisdropped)::text,
       r.ev_action::text
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.refobjid IN ({oids})
  AND r.rulename = '_RETURN' AND v.relkind = 'v'
  AND (pg_catalog.pg_relation_is_updatable(v.oid, false) & {bits}) = {bits}
ORDER BY 1"""

# one output column that is a plain column of the (single) base relation
_PLAIN_COLUMN = re.compile(
    r"\{TARGETENTRY :expr \{VAR :varno 1 :varattno \d+ [^{}]*?:varlevelsup 0 [^{}]*\}"
    r" :resno (\d+) :resname \S+ :ressortgroupref \d+ :resorigtbl (\d+) :resorigcol (\d+)"
    r" :resjunk false\}"
)


@dataclass(frozen=True, slots=True)
class SimpleView:
    oid: int
    schema: str
    name: str
    base_oid: int
    # view attnum -> base column name, for the view columns that are plain base columns
    columns: Mapping[int, str]
    # base column name -> the view's name for it
    names: Mapping[str, str]


def views_query(table_oids: Iterable[int]) -> str:
    """Every automatically updatable view over one of these tables (none: no rows)."""
    oids = ", ".join(str(int(o)) for o in sorted(set(table_oids))) or "0"
    return _QUERY.format(oids=oids, bits=_UPDATE_DELETE)


def simple_views(
    rows: Iterable[Sequence[str | None]], attnames: Mapping[int, Mapping[int, str]]
) -> dict[int, SimpleView]:
    """Rows of views_query() in text format; attnames: base table oid -> attnum -> name."""
    out: dict[int, SimpleView] = {}
    for row in rows:
        if len(row) != 5:  # not this query's answer: never guess, map nothing
            continue
        oid, schema, name, names_json, action = row
        try:
            view = _simple_view(
                int(oid or 0), schema or "", name or "", names_json, action, attnames
            )
        except (ValueError, TypeError):  # an unexpected shape: never guess, map nothing
            view = None
        if view is not None:
            out[view.oid] = view
    return out


def _simple_view(
    oid: int,
    schema: str,
    name: str,
    names_json: str | None,
    action: str | None,
    attnames: Mapping[int, Mapping[int, str]],
) -> SimpleView | None:
    if not action or not names_json or action.count("{QUERY ") != 1:
        return None
    if ":hasSubLinks false" not in action or ":cteList <>" not in action:
        return None
    view_names = json.loads(names_json)
    columns: dict[int, str] = {}
    base_oid = 0
    for match in _PLAIN_COLUMN.finditer(action):
        resno, table, column = (int(g) for g in match.groups())
        if base_oid and table != base_oid:
            return None
        base_oid = table
        base_name = attnames.get(table, {}).get(column)
        if base_name is None or resno in columns or not 0 < resno <= len(view_names):
            return None
        columns[resno] = base_name
    if not columns or len(set(columns.values())) != len(columns):
        return None  # nothing to map, or one base column shown twice: which one is read?
    names = {base: view_names[resno - 1] for resno, base in columns.items()}
    return SimpleView(oid, schema, name, base_oid, columns, names)
