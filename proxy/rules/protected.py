"""What the rewriter and the capture need to know about one protected table.

A rule (what the DBA wrote) resolved against the catalog (what the database has): the key is
known, every tracked column has an effective policy and an SQL type. Built by
`proxy.rules.resolve`; consumed by `proxy.rewrite` and `proxy.capture`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["any", "changed", "differing", "never"]
Strategy = Literal["version", "columns"]
Bump = Literal["increment", "timestamp", "none"]
Mode = Literal["enforce", "audit", "off"]


@dataclass(frozen=True)
class ProtectedTable:
    schema: str
    name: str
    oid: int
    # every column of the table in attnum order (RETURNING * expands to these)
    columns: tuple[str, ...]
    # column -> SQL type as format_type() prints it, used for casts ("integer", "numeric(10,2)")
    column_types: Mapping[str, str]
    # column -> type OID
    column_type_oids: Mapping[str, int]
    key: tuple[str, ...]
    strategy: Strategy
    version_column: str | None = None
    bump: Bump = "increment"
    # columns strategy: tracked column -> effective policy (key columns are never listed)
    policies: Mapping[str, Policy] = field(default_factory=dict)
    groups: tuple[frozenset[str], ...] = ()
    sparse_update: bool = False
    mode: Mode = "enforce"
    unknown_original: Literal["allow", "reject"] = "allow"
    # reject: refuse every write of the table that cannot be checked, whatever the reason
    unverified: Literal["allow", "reject"] = "allow"
    scope: Literal["session", "user"] = "session"
    notify: str | None = None
    # where this database's guard functions are: pg_temp (per server connection), or the
    # schema `optimist install` put them in (proxy.locking.installed)
    guard_schema: str = "pg_temp"

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def captured_columns(self) -> tuple[str, ...]:
        """Columns whose read values a session must remember (key first, then attnum order)."""
        wanted = set(self.key)
        if self.strategy == "version" and self.version_column:
            wanted.add(self.version_column)
        wanted.update(c for c, p in self.policies.items() if p != "never")
        if self.sparse_update:
            wanted.update(self.columns)
        rest = tuple(c for c in self.columns if c in wanted and c not in self.key)
        return self.key + rest
