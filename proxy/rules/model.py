"""What a DBA's rule files say, once loaded and checked (before the catalog is consulted).

`TableRule` is one `tables:` entry with `defaults:` applied and names folded the way
PostgreSQL folds them; `RuleSet` is every rule from every file plus what the proxy needs to
find them. Resolving against the live catalog (`proxy.rules.resolve`) turns rules into
`ProtectedTable`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from proxy.rules.protected import Bump, Mode, Policy, Strategy

# rule files name tables as SQL does; the loader (and tests) take these helpers from here
from proxy.sqlnames import parse_identifier as fold_identifier  # noqa: F401
from proxy.sqlnames import quote_ident, split_identifiers  # noqa: F401

DEFAULT_SEARCH_PATH: tuple[str, ...] = ("public",)


@dataclass(frozen=True)
class RuleProblem:
    """One thing wrong with a rule file; `line`/`column` are 1-based, None when unknown."""

    file: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: error: {self.message}"


class RuleError(Exception):
    """The rule files cannot be used; `problems` says every place that needs fixing."""

    def __init__(self, problems: list[RuleProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid rules")


@dataclass(frozen=True)
class TableRule:
    # names are folded like unquoted SQL identifiers (ASCII A-Z lowered, see proxy.sqlnames)
    # unless written "quoted"
    schema: str
    name: str
    # False when the file wrote an unqualified name: `schema` is then search_path[0], and
    # resolution may find the table in a later search_path schema
    schema_explicit: bool
    strategy: Strategy
    # None: the table's primary key
    key: tuple[str, ...] | None = None
    version_column: str | None = None
    bump: Bump = "increment"
    check: Policy = "changed"
    # per-column policy overrides, as written (strategy columns only)
    columns: Mapping[str, Policy] = field(default_factory=lambda: MappingProxyType({}))
    groups: tuple[tuple[str, ...], ...] = ()
    sparse_update: bool = False
    mode: Mode = "enforce"
    unknown_original: Literal["allow", "reject"] = "allow"
    unverified: Literal["allow", "reject"] = "allow"
    scope: Literal["session", "user"] = "session"
    notify: str | None = None
    source_file: str = "<memory>"
    source_line: int = 0

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def where(self) -> str:
        return f"{self.source_file}:{self.source_line}"

    def to_dict(self) -> dict[str, Any]:
        """The rule as a `tables:` entry that loads back to an equal rule (names quoted
        where folding would change them)."""
        table = quote_ident(self.name)
        if self.schema_explicit:
            table = f"{quote_ident(self.schema)}.{table}"
        out: dict[str, Any] = {"table": table, "strategy": self.strategy}
        if self.key is not None:
            out["key"] = [quote_ident(c) for c in self.key]
        if self.strategy == "version":
            out["version_column"] = quote_ident(self.version_column or "")
            out["bump"] = self.bump
        else:
            out["check"] = self.check
            if self.columns:
                out["columns"] = {quote_ident(c): p for c, p in self.columns.items()}
            if self.groups:
                out["groups"] = [[quote_ident(c) for c in g] for g in self.groups]
        out.update(
            sparse_update=self.sparse_update,
            mode=self.mode,
            unknown_original=self.unknown_original,
            unverified=self.unverified,
            scope=self.scope,
        )
        if self.notify is not None:
            out["notify"] = self.notify
        return out


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[TableRule, ...]
    search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH
    # short sha256 of the files' contents: tells which rules a running proxy has loaded
    version: str = ""
    loaded_at: float = 0.0
    sources: tuple[str, ...] = ()
    _by_name: dict[tuple[str, str], TableRule] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _unqualified: dict[str, TableRule] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        for rule in self.rules:
            self._by_name[(rule.schema, rule.name)] = rule
            if not rule.schema_explicit:
                self._unqualified[rule.name] = rule

    def lookup(self, schema: str | None, name: str) -> TableRule | None:
        """The rule that may apply to a table, named as the catalog names it (already
        folded: `accounts` for SQL's Accounts, `Accounts` for "Accounts").

        Without a schema, search_path decides, as in PostgreSQL. With one, an exact rule
        wins; else a rule written without schema matches in any search_path schema (only
        the catalog knows which one it resolved to: resolve() says, by oid).
        """
        if schema is not None:
            found = self._by_name.get((schema, name))
            if found is None and schema in self.search_path:
                found = self._unqualified.get(name)
            return found
        for candidate in self.search_path:
            rule = self._by_name.get((candidate, name))
            if rule is not None:
                return rule
        return self._unqualified.get(name)
