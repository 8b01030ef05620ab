"""`optimist check`: are these rule files valid, and do they fit this database?

Without an upstream only the files are checked (syntax, schema, names, duplicates); with one,
the catalog is read and every rule resolved, exactly as the proxy would at start-up.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Sequence

from proxy.catalog_fetch import fetch_catalog
from proxy.rules.loader import load_rules
from proxy.rules.model import RuleError
from proxy.rules.resolve import resolve, wanted_tables

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UPSTREAM = 2  # the database could not be asked: the rules are neither good nor bad


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


async def check_async(paths: Sequence[str | Path], dsn: str | None) -> tuple[int, list[str]]:
    try:
        ruleset = load_rules(paths)
    except RuleError as exc:
        lines = [str(p) for p in exc.problems]
        lines.append(f"rules are invalid: {_plural(len(exc.problems), 'error')}")
        return EXIT_PROBLEMS, lines

    summary = (f"{_plural(len(ruleset.rules), 'table rule')} in "
               f"{_plural(len(ruleset.sources), 'file')} (rules version {ruleset.version})")
    if dsn is None:
        return EXIT_OK, [f"rules are valid: {summary}; not checked against a database "
                         "(pass --upstream to)"]
    try:
        catalog = await fetch_catalog(dsn, wanted_tables(ruleset))
    except Exception as exc:  # any driver/network failure: report it, do not crash the CLI
        return EXIT_UPSTREAM, [f"error: cannot read the catalog from the upstream: "
                               f"{type(exc).__name__}: {exc}"]
    protected, problems = resolve(ruleset, catalog)
    lines = [str(p) for p in sorted(problems, key=lambda p: (p.file, p.line))]
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    counts = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    if errors:
        lines.append(f"rules do not fit the database: {counts}; {summary}")
        return EXIT_PROBLEMS, lines
    lines.append(f"rules fit the database: {len(protected)} protected "
                 f"table{'' if len(protected) == 1 else 's'}, {counts}; {summary}")
    return EXIT_OK, lines


def check(paths: Sequence[str | Path], dsn: str | None = None) -> tuple[int, list[str]]:
    """(exit code, report lines): 0 valid, 1 problems found, 2 upstream unreachable.

    Lines are `file:line: error|warning: message`, then a one-line summary.
    """
    return asyncio.run(check_async(paths, dsn))
