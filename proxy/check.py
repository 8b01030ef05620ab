"""`optimist check`: are these rule files valid, and do they fit this database?

Without an upstream only the files are checked (syntax, schema, names, duplicates); with one,
the catalog is read and every rule resolved, exactly as the proxy would at start-up.
"""

from __future__ import annotations

import asyncio
import difflib
import getpass
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from proxy.catalog import Catalog
from proxy.catalog_fetch import fetch_catalog
from proxy.config import upstream_dsn
from proxy.rules.loader import load_rules
from proxy.rules.model import RuleError
from proxy.rules.resolve import Problem, resolve, wanted_tables

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UPSTREAM = 2  # the database could not be asked: the rules are neither good nor bad


# tables the catalog holds, for "did you mean" on a rule naming a table that does not exist
_TABLE_NAMES = """SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"""

_MISSING_TABLE = re.compile(
    r"^table (?P<name>\S+) does not exist in (?:schema (?P<schema>\S+)|"
    r"search_path (?P<path>[^(]+?)) \("
)
_MISSING_COLUMN = re.compile(
    r"^(?:key |group |version )?column '(?P<column>[^']+)' is not a "
    r"column of (?P<table>\S+?)(?: \(|$)"
)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _with_suggestions(problem: Problem, catalog: Catalog, tables: list[tuple[str, str]]) -> str:
    """The problem's line, with the closest catalog name when it names a missing one."""
    text = str(problem)
    if match := _MISSING_TABLE.match(problem.message):
        schemas = (
            [match["schema"]] if match["schema"] else [s.strip() for s in match["path"].split(",")]
        )
        return text + _did_you_mean(match["name"], [n for s, n in tables if s in schemas])
    if match := _MISSING_COLUMN.match(problem.message):
        schema, _, name = match["table"].partition(".")
        table = catalog.table(schema, name)
        if table is not None:
            return text + _did_you_mean(match["column"], table.columns)
    return text


def _connect_hint(dsn: str, exc: Exception) -> str:
    """When the server refused the user and the URL named none: who was tried, how to say."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if not (sqlstate.startswith("28") or sqlstate == "3D000"):
        return ""
    parts = urlsplit(dsn)
    if parts.username or "user" in parse_qs(parts.query) or "user=" in dsn:
        return ""
    user = os.environ.get("PGUSER") or getpass.getuser()
    source = "PGUSER" if os.environ.get("PGUSER") else "the operating-system user"
    return (
        f" (the URL names no user, so user {user!r} ({source}) was tried: give one, "
        "e.g. postgresql://postgres@host:5432/postgres)"
    )


async def _fetch(dsn: str, ruleset) -> tuple[Catalog, list[tuple[str, str]]]:
    import asyncpg

    catalog = await fetch_catalog(dsn, wanted_tables(ruleset))
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        names = [(r[0], r[1]) for r in await conn.fetch(_TABLE_NAMES, timeout=10)]
    finally:
        await conn.close()
    return catalog, names


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


async def check_async(paths: Sequence[str | Path], dsn: str | None) -> tuple[int, list[str]]:
    try:
        ruleset = load_rules(paths)
    except RuleError as exc:
        lines = [str(p) for p in exc.problems]
        lines.append(f"rules are invalid: {_plural(len(exc.problems), 'error')}")
        return EXIT_PROBLEMS, lines

    summary = (
        f"{_plural(len(ruleset.rules), 'table rule')} in "
        f"{_plural(len(ruleset.sources), 'file')} (rules version {ruleset.version})"
    )
    if dsn is None:
        return EXIT_OK, [
            (
                f"rules are valid: {summary}; not checked against a database "
                "(pass --upstream URL to check tables, keys and columns too)"
            )
        ]
    dsn = upstream_dsn(dsn)
    try:
        catalog, table_names = await _fetch(dsn, ruleset)
    except Exception as exc:  # any driver/network failure: report it, do not crash the CLI
        return EXIT_UPSTREAM, [
            (
                f"error: cannot read the catalog from the upstream: "
                f"{type(exc).__name__}: {exc}{_connect_hint(dsn, exc)}"
            )
        ]
    protected, problems = resolve(ruleset, catalog)
    lines = [
        _with_suggestions(p, catalog, table_names)
        for p in sorted(problems, key=lambda p: (p.file, p.line))
    ]
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    counts = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    if errors:
        lines.append(f"rules do not fit the database: {counts}; {summary}")
        return EXIT_PROBLEMS, lines
    lines.append(
        f"rules fit the database: {len(protected)} protected "
        f"table{'' if len(protected) == 1 else 's'}, {counts}; {summary}"
    )
    return EXIT_OK, lines


def check(paths: Sequence[str | Path], dsn: str | None = None) -> tuple[int, list[str]]:
    """(exit code, report lines): 0 valid, 1 problems found, 2 upstream unreachable.

    Lines are `file:line: error|warning: message`, then a one-line summary.
    """
    return asyncio.run(check_async(paths, dsn))
