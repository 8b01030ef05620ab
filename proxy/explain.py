"""`optimist explain`: what the proxy would do with one statement, for DBAs.

It runs the same code the proxy runs (lexer prefilter, rules lookup, planner, render), with the
values a session would have read shown as placeholders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from proxy.catalog import Catalog
from proxy.config import upstream_dsn
from proxy.offline_catalog import (
    catalog_from_files,
    schema_files,
    statement_columns,
    table_from_rule,
)
from proxy.rewrite import lexer
from proxy.rewrite.cte import plan_with
from proxy.rewrite.merge import plan_merge
from proxy.rewrite.planner import (
    InsertPlan,
    Unverified,
    WritePlan,
    plan_insert,
    plan_write,
    written_tables,
)
from proxy.rules.loader import load_rules
from proxy.rules.model import RuleError
from proxy.rules.protected import ProtectedTable
from proxy.rules.resolve import find_table, resolve
from proxy.sql_display import format_sql

REASONS = {
    "no_key_pin": "its WHERE does not pin the table's key by equality, so the rows it touches "
    "cannot be known before it runs (bulk writes pass unchecked and are counted)",
    "where_current_of": "WHERE CURRENT OF names a cursor position, not a key",
    "parse_error": "it could not be parsed; it is passed through untouched and counted",
    "not_target_table": "the protected table is not the statement's target",
    "unsupported": "this form of statement cannot be checked",
    "merge": "its ON does not pin the target's key to a value (ON t.id = s.id, IN, WHEN NOT "
    "MATCHED BY SOURCE), so the rows it touches cannot be known before it runs",
    "with_clause": "no write in the WITH statement pins a protected table's key, or it writes "
    "the table more than once",
    "upsert": "only a one-row VALUES upsert on the key of a row the session read is checked",
}


async def _protected_tables(ruleset, dsn: str):
    from proxy.catalog_fetch import fetch_catalog
    from proxy.rules.resolve import wanted_tables

    catalog = await fetch_catalog(upstream_dsn(dsn), wanted_tables(ruleset))
    protected, problems = resolve(ruleset, catalog)
    return {(t.schema, t.name): t for t in protected.values()}, problems


def _offline_table(ruleset, rule, paths, sql):
    """The rule's table as the schema files beside the rules (or the rule alone) describe it,
    and the lines saying what that assumes."""
    files = schema_files(paths)
    catalog = catalog_from_files(files)
    found = find_table(ruleset, rule, catalog)
    if found is not None:
        source = ", ".join(str(f) for f in files if f.is_file())
        lines = [
            f"schema: planned from the rule files and {source}, without the live database "
            f"(pass --upstream URL to use it): assumes {found.qualified_name} is as that "
            f"file creates it, key ({', '.join(rule.key or found.primary_key)})"
        ]
    else:
        found = table_from_rule(rule, statement_columns(sql), len(catalog.tables_by_oid) + 1)
        catalog = Catalog({**catalog.tables_by_oid, found.oid: found})
        key_source = "as the rule says" if rule.key is not None else "assumed: the rule names none"
        lines = [
            f"schema: planned from the rule file alone, without the live schema (pass "
            f"--upstream URL to use it): assumes key ({', '.join(found.primary_key)}) "
            f"({key_source}), no columns but those the rule and the statement name, "
            "types unknown"
        ]
    protected, problems = resolve(ruleset, catalog)
    table = next((t for t in protected.values() if t.oid == found.oid), None)
    if table is None:
        lines.extend(
            str(p) for p in problems if p.line == rule.source_line and p.file == rule.source_file
        )
    return table, lines


def explain(paths: Sequence[str], dsn: str | None, sql: str) -> tuple[int, list[str]]:
    try:
        ruleset = load_rules(paths)
    except RuleError as exc:
        return 1, [str(p) for p in exc.problems] + ["rules are invalid"]
    out = [f"statement: {sql.strip()}"]
    target = lexer.write_target(sql)
    if target is None:
        out.append(
            "action: relayed unchanged (not an UPDATE, DELETE or INSERT; reads are "
            "captured from their results when they include a protected table's key)"
        )
        return 0, out
    if target == lexer.MUST_PARSE:  # a WITH statement: the first protected table it writes
        target = _first_protected_written(ruleset, sql) or target
    schema, name = target
    rule = ruleset.lookup(schema, name) if schema != "*" else None
    if rule is None:
        out.append(
            f"action: relayed unchanged (no rule protects {name if schema == '*' else target[1]})"
        )
        return 0, out
    out.append(
        f"rule: {rule.qualified_name} at {rule.where} (strategy {rule.strategy}, mode {rule.mode})"
    )
    if dsn is None:
        table, assumptions = _offline_table(ruleset, rule, paths, sql)
        out.extend(assumptions)
        if table is None:
            out.append(
                "action: relayed unchanged (the rule does not fit the schema it was planned from)"
            )
            return 1, out
    else:
        try:
            tables, problems = asyncio.run(_protected_tables(ruleset, dsn))
        except Exception as exc:  # a CLI: report, do not crash
            out.append(f"error: cannot read the catalog: {type(exc).__name__}: {exc}")
            return 2, out
        table = next(
            (
                t
                for (s, n), t in tables.items()
                if n == rule.name and (s == rule.schema or not rule.schema_explicit)
            ),
            None,
        )
        if table is None:
            out.extend(str(p) for p in problems)
            out.append(
                "action: relayed unchanged (the rule does not resolve against this database)"
            )
            return 1, out
    template, literals = lexer.normalize(sql)
    kind = lexer.classify(sql).keyword
    plan = _plan(kind, template, table)
    if isinstance(plan, Unverified):
        out.append(
            f"action: passes unverified, reason {plan.reason}: "
            f"{REASONS.get(plan.reason, plan.reason)}"
        )
        if plan.detail:
            out.append(f"detail: {plan.detail}")
        return 0, out
    if isinstance(plan, InsertPlan):
        out.append(
            "action: insert; the proxy learns the new rows through RETURNING "
            f"({', '.join(plan.extra_returning)}), stripped before the client sees them"
        )
        out.append("rewritten:")
        out.extend("  " + line for line in format_sql(plan.render_simple(literals)))
        return 0, out
    if plan.unpinned is not None:
        out.append(
            f"action: passes unverified, reason {plan.unpinned}: "
            f"{REASONS.get(plan.unpinned, plan.unpinned)}; the version is still bumped, so "
            "other sessions' checked writes of these rows see the change"
        )
        out.append("rewritten:")
        out.extend("  " + line for line in format_sql(plan.render_simple(literals, [])))
        return 0, out
    keys = plan.key_texts(literals)
    shown = [
        ", ".join(
            f"{ref.column}={value if value is not None else f'${ref.param}'}"
            for ref, value in zip(row, texts)
        )
        for row, texts in zip(plan.pinned_rows, keys)
    ]
    out.append(f"action: checked {plan.kind} of {len(keys)} pinned row(s): " + "; ".join(shown))
    # the conflict checks (never columns are not among them); a WITH statement's builder
    # assembles its parts' own, whose columns the plan lists
    checks = list(getattr(plan._builder, "checks", plan.checked_columns))
    sparse = [c for c in getattr(plan._builder, "sparse", ()) if c not in checks]
    out.append(f"checked columns: {', '.join(checks) or '(none)'}")
    if sparse:
        out.append(f"written only where unchanged since read (sparse_update): {', '.join(sparse)}")
    if table.unknown_original == "reject":
        out.append(
            "if the session has not read the row: the write is refused (unknown_original: reject)"
        )
    else:
        out.append("if the session has not read the row: passes unchecked, counted as not_read")
    reads = [{c: f"<read {c}>" for c in plan.checked_columns} for _ in keys]
    out.append("rewritten (simple protocol; <read c> stands for the value the session read):")
    out.extend("  " + line for line in format_sql(plan.render_simple(literals, reads)))
    rendered = plan.render_extended(literals, 0)
    out.append("rewritten (extended protocol, prepared once per session):")
    out.extend("  " + line for line in format_sql(rendered.sql))
    for i, (row, column, _) in enumerate(rendered.extra_params):
        out.append(f"  extra parameter {i + 1}: the {column} read for pinned row {row + 1}")
    if plan.forget_pinned:
        out.append(
            "learned afterwards: nothing (no RETURNING can be added here): the row is "
            "forgotten, the session's next write of it counts not_read until it reads it again"
        )
    else:
        out.append(f"learned afterwards through RETURNING: {', '.join(plan.extra_returning)}")
    return 0, out


def _plan(kind: str, template: str, table: ProtectedTable) -> WritePlan | InsertPlan | Unverified:
    """The plan the proxy makes (proxy.locking.writes.WriteChecker.plan, for one table)."""
    if kind == "WITH" or lexer.write_target(template) == lexer.MUST_PARSE:
        planned = plan_with(template, lambda s, n: table if n == table.name else None)
        if planned is None or planned.plan is None:
            return Unverified("with_clause")
        return planned.plan
    if kind == "MERGE":
        return plan_merge(template, table)
    return (plan_insert if kind == "INSERT" else plan_write)(template, table, 0)


def _first_protected_written(ruleset, sql: str) -> tuple[str | None, str] | None:
    for schema, name in written_tables(lexer.normalize(sql)[0]) or ():
        if ruleset.lookup(schema, name) is not None:
            return schema, name
    return None
