"""Rules (what the DBA wrote) + catalog (what the database has) -> `ProtectedTable`s.

Everything that needs the live database to be checked is checked here: the table exists, the
key is known, named columns exist, the version column's type suits its bump, and every column
the proxy must compare server-side (`IS NOT DISTINCT FROM`) has an equality operator.
A rule with an error is left out of the result, so the proxy never half-protects a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from proxy.catalog import INTEGER_TYPE_OIDS, TIMESTAMP_TYPE_OIDS, Catalog, CatalogTable
from proxy.rules.model import RuleSet, TableRule
from proxy.rules.protected import Policy, ProtectedTable

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    severity: Severity
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity}: {self.message}"


def wanted_tables(ruleset: RuleSet) -> list[tuple[str, str]]:
    """(schema, name) pairs to ask the catalog about: an unqualified rule may live in any
    search_path schema."""
    out: set[tuple[str, str]] = set()
    for rule in ruleset.rules:
        schemas = (rule.schema,) if rule.schema_explicit else ruleset.search_path
        out.update((s, rule.name) for s in schemas)
    return sorted(out)


def find_table(ruleset: RuleSet, rule: TableRule, catalog: Catalog) -> CatalogTable | None:
    if rule.schema_explicit:
        return catalog.table(rule.schema, rule.name)
    return catalog.find(rule.name, ruleset.search_path)


class _Report:
    def __init__(self, rule: TableRule, problems: list[Problem]):
        self.rule, self.problems, self.errors = rule, problems, 0

    def __call__(self, severity: Severity, message: str) -> None:
        if self.rule.mode == "off" and severity == "error":
            # an `off` rule protects nothing, so its problems cannot hurt yet; still say so,
            # as it will hurt the day someone turns it on
            severity, message = "warning", f"{message} (rule is mode: off)"
        self.errors += severity == "error"
        self.problems.append(
            Problem(severity, self.rule.source_file, self.rule.source_line, message)
        )


def _describe(table: CatalogTable, column: str) -> str:
    return f"{table.qualified_name}.{column} ({table.columns[column].type_name})"


def _resolve_one(
    ruleset: RuleSet, rule: TableRule, catalog: Catalog, report: _Report
) -> ProtectedTable | None:
    table = find_table(ruleset, rule, catalog)
    if table is None:
        where = (
            f"schema {rule.schema}"
            if rule.schema_explicit
            else f"search_path {', '.join(ruleset.search_path)}"
        )
        report(
            "error",
            f"table {rule.name} does not exist in {where} "
            "(only tables can be protected, not views)",
        )
        return None
    name = table.qualified_name

    def exists(column: str, role: str) -> bool:
        if column in table.columns:
            return True
        report("error", f"{role} {column!r} is not a column of {name}")
        return False

    key = rule.key if rule.key is not None else table.primary_key
    if not key:
        report("error", f"{name} has no primary key: set key: to columns that identify a row")
    for column in key:
        if exists(column, "key column") and not table.columns[column].comparable:
            report(
                "error",
                f"key column {_describe(table, column)} has no equality "
                "operator, so rows cannot be matched on it; choose another key",
            )

    policies: dict[str, Policy] = {}
    if rule.strategy == "version":
        _check_version_column(rule, table, key, exists, report)
    else:
        for column in rule.columns:
            if exists(column, "column") and column in key:
                report(
                    "error",
                    f"column {column!r} is part of the key of {name}; key columns "
                    "are never checked, remove it from columns",
                )
        grouped = set()
        for group in rule.groups:
            for column in group:
                if exists(column, "group column") and column in key:
                    report(
                        "error",
                        f"group column {column!r} is part of the key of {name}; "
                        "key columns are never checked",
                    )
                grouped.add(column)
        for column, col in table.columns.items():
            if column in key:
                continue
            policies[column] = rule.columns.get(column, rule.check)
            checked = policies[column] != "never" or column in grouped
            if checked and not col.comparable:
                report(
                    "error",
                    f"column {_describe(table, column)} has no equality operator "
                    f"and cannot be checked: give it policy never (or use a comparable "
                    f"type, e.g. jsonb instead of json)",
                )

    if report.errors:
        return None
    return ProtectedTable(
        schema=table.schema,
        name=table.name,
        oid=table.oid,
        columns=tuple(table.columns),
        column_types=MappingProxyType({c.name: c.type_name for c in table.columns.values()}),
        column_type_oids=MappingProxyType({c.name: c.type_oid for c in table.columns.values()}),
        key=tuple(key),
        strategy=rule.strategy,
        version_column=rule.version_column,
        bump=rule.bump,
        policies=MappingProxyType(policies),
        groups=tuple(frozenset(g) for g in rule.groups),
        sparse_update=rule.sparse_update,
        mode=rule.mode,
        unknown_original=rule.unknown_original,
        unverified=rule.unverified,
        scope=rule.scope,
        notify=rule.notify,
    )


def _check_version_column(
    rule: TableRule,
    table: CatalogTable,
    key: Sequence[str],
    exists: Callable[[str, str], bool],
    report: _Report,
) -> None:
    column: str = rule.version_column  # type: ignore[assignment]  # None: exists() reports it
    if not exists(column, "version column"):
        return
    col = table.columns[column]
    what = _describe(table, column)
    if column in key:
        report("error", f"version column {what} is part of the key")
    if rule.bump == "increment" and col.base_type_oid not in INTEGER_TYPE_OIDS:
        report(
            "error",
            f"version column {what} must be an integer or numeric type for "
            "bump: increment (or use bump: timestamp / none)",
        )
    elif rule.bump == "timestamp" and col.base_type_oid not in TIMESTAMP_TYPE_OIDS:
        report(
            "error", f"version column {what} must be timestamp or timestamptz for bump: timestamp"
        )
    elif not col.comparable:
        report("error", f"version column {what} has no equality operator")
    if not col.not_null:
        report(
            "warning",
            f"version column {what} allows NULL: a row whose version is NULL "
            "is only protected once it has one (add NOT NULL DEFAULT ...)",
        )


def resolve(ruleset: RuleSet, catalog: Catalog) -> tuple[dict[int, ProtectedTable], list[Problem]]:
    """ProtectedTable per table oid for every usable rule not in mode off, and the problems."""
    problems: list[Problem] = []
    protected: dict[int, ProtectedTable] = {}
    claimed: dict[int, TableRule] = {}
    for rule in ruleset.rules:
        report = _Report(rule, problems)
        table = _resolve_one(ruleset, rule, catalog, report)
        found = find_table(ruleset, rule, catalog)
        if found is not None:
            other = claimed.get(found.oid)
            if other is not None:
                # e.g. `accounts` and `app.accounts` when public has no accounts table
                report(
                    "error",
                    f"{found.qualified_name} already has a rule at {other.where}; "
                    "one rule per table",
                )
                continue
            claimed[found.oid] = rule
        if table is not None and rule.mode != "off":
            protected[table.oid] = table
    return protected, problems
