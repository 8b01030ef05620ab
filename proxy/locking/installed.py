"""Guard functions installed once in a schema of their own (`optimist install`), for
deployments where pg_temp does not work: in front of a transaction pooler, the next
transaction may run on a server connection that has no guard functions, or another
session's.

Each installed function carries a version in its COMMENT: a digest of the source of all of
them (which includes the conflict SQLSTATE), so a proxy finds out at its catalog query whether
the installed ones are exactly those it would create, and says so when they are not.
Sans-IO: SQL text and the judging of its rows; proxy.install runs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proxy.conflicts import guard_functions_sql, guard_schema_sql
from proxy.sqlnames import quote_literal_any

__all__ = [
    "FUNCTIONS",
    "Installed",
    "fingerprint_sql",
    "function_rows",
    "install_sql",
    "installed_query",
    "judge_installed",
    "stale_functions_query",
    "version",
]

# name -> argument types, as DROP / COMMENT / GRANT name them (every function the rewriter
# may call: proxy.conflicts.guard_functions_sql creates them)
FUNCTIONS = {
    "optimist_modified": "text, jsonb",
    "optimist_present": "jsonb[], jsonb[], text",
    "optimist_modified_audit": "text, jsonb",
    "optimist_present_audit": "jsonb[], jsonb[], text",
    "optimist_text": "anyelement, text[]",
    "optimist_value": "text, text[], anyelement",
    "optimist_lock_verified": "text",
}
COMMENT_PREFIX = "optimist guard function "
# the installed query's rows have this many columns (the catalog's have more, the
# fingerprint's fewer): how the bootstrap tells them apart in one result
ROW_WIDTH = 3
_TAG = "optimist guard function"


def version(sqlstate: str) -> str:
    """The version of the functions this proxy creates (a digest of their source)."""
    source = guard_functions_sql(sqlstate, "pg_temp")
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def signatures(schema: str) -> list[str]:
    prefix = guard_schema_sql(schema)
    return [f"{prefix}.{name}({args})" for name, args in FUNCTIONS.items()]


def install_sql(schema: str, sqlstate: str) -> str:
    """(Re)create the guard functions in an existing `schema`, each stamped with its version
    and executable by every role (SECURITY INVOKER: they read no table, so EXECUTE grants
    nothing else)."""
    comment = quote_literal_any(COMMENT_PREFIX + version(sqlstate))
    parts = [guard_functions_sql(sqlstate, schema).rstrip(";")]
    for signature in signatures(schema):
        parts.append(f"COMMENT ON FUNCTION {signature} IS {comment}")
        parts.append(f"GRANT EXECUTE ON FUNCTION {signature} TO PUBLIC")
    return ";\n".join(parts)


def stale_functions_query(schema: str) -> str:
    """The signatures of optimist_* functions in `schema` that this version does not create
    (an older release's, another signature): an upgrade drops them."""
    wanted = ", ".join(
        f"({quote_literal_any(name)}, {quote_literal_any(args)})"
        for name, args in FUNCTIONS.items()
    )
    return (
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(p.proname)"
        " || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')'"
        " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        f" WHERE n.nspname = {quote_literal_any(schema)} AND p.proname LIKE 'optimist\\_%'"
        " AND (p.proname::text, pg_catalog.oidvectortypes(p.proargtypes))"
        f" NOT IN (VALUES {wanted})"
    )


def installed_query(schema: str) -> str:
    """Rows (tag, proname, c: its comment) of the guard functions installed in `schema` that
    the querying role may use (three columns: see ROW_WIDTH)."""
    names = ", ".join(quote_literal_any(name) for name in FUNCTIONS)
    return (
        f"SELECT {quote_literal_any(_TAG)} AS tag, p.proname::text AS proname,"
        " pg_catalog.obj_description(p.oid, 'pg_proc') AS c"
        " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        f" WHERE n.nspname = {quote_literal_any(schema)} AND p.proname IN ({names})"
        " AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
        " AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')"
    )


def fingerprint_sql(catalog_fingerprint: str, schema: str) -> str:
    """The catalog's fingerprint query extended with what is installed in `schema`, so an
    `optimist install` (or --uninstall) while proxies run is noticed at their next catalog
    check: one row of one column, as the catalog's."""
    return (
        f"SELECT ({catalog_fingerprint}) || ' guards ' || COALESCE((SELECT"
        " pg_catalog.string_agg(i.proname || '=' || COALESCE(i.c, '-'), ',' ORDER BY i.proname)"
        f" FROM ({installed_query(schema)}) AS i), '')"
    )


def function_rows(rows: Iterable[Sequence[str | None]]) -> list[Sequence[str | None]]:
    """The installed query's rows among the rows of one multi-statement result."""
    return [row for row in rows if len(row) == ROW_WIDTH and row[0] == _TAG]


@dataclass(frozen=True)
class Installed:
    """What a database has in the guard schema: `usable` when every function is there in
    this proxy's version; otherwise `problem` says why not (None: nothing is installed)."""

    usable: bool
    problem: str | None = None
    version: str | None = None  # the installed version, when one is


def judge_installed(rows: Iterable[Sequence[str | None]], schema: str, sqlstate: str) -> Installed:
    found = {row[1]: row[2] for row in function_rows(rows) if row[1] is not None}
    if not found:
        return Installed(False)
    wanted = COMMENT_PREFIX + version(sqlstate)
    seen = sorted({(c or "no version").removeprefix(COMMENT_PREFIX) for c in found.values()})
    missing = [name for name in FUNCTIONS if name not in found]
    if missing:
        return Installed(
            False,
            f"the guard functions in schema {schema} are incomplete or not usable by this role "
            f"(missing {', '.join(missing)}): run `optimist install` again",
            ", ".join(seen),
        )
    if any(c != wanted for c in found.values()):
        return Installed(
            False,
            f"the guard functions in schema {schema} are version {', '.join(seen)}, this "
            f"proxy needs {version(sqlstate)} (another optimist release or conflict_sqlstate): "
            "run `optimist install` again",
            ", ".join(seen),
        )
    return Installed(True, None, seen[0])
