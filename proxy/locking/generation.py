"""The rules in force and what they resolved to, per database: the values the locking logic of
every session reads (a `Generation` is replaced whole on reload, a `DatabaseTables` on a catalog
refresh), apart from the LockingService that owns and swaps them."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.catalog import Catalog, catalog_fingerprint_query, catalog_query
from proxy.catalog_views import SimpleView, simple_views, views_query
from proxy.rules.model import RuleSet
from proxy.rules.protected import ProtectedTable
from proxy.rules.resolve import resolve, wanted_tables

log = logging.getLogger("optimist.rules")

# every DatabaseTables gets its own: plans cached for one never serve another
_STAMPS = itertools.count(1)


@dataclass
class DatabaseTables:
    """The protected tables of one database under one rules generation."""

    by_oid: dict[int, ProtectedTable]
    by_name: dict[tuple[str, str], ProtectedTable]
    attnames: dict[int, dict[int, str]]
    capture_plans: dict[bytes, object] = field(default_factory=dict)
    # simple views over the protected tables (view oid -> view), learned after the tables
    views: dict[int, SimpleView] = field(default_factory=dict)
    # (statement template, relation oid) -> the key pin of a read without its key, or None
    read_pins: dict[tuple[str, int], object] = field(default_factory=dict)
    # (statement text, standard_conforming_strings) of Parses that write nothing protected and
    # run no server code (WriteChecker.prepared): one lookup for the next Parse of the text.
    # Per tables object, so a rules reload or a DDL refresh (new tables) starts it afresh.
    plain_statements: set[tuple[str, bool]] = field(default_factory=set)

    # what resolving the rules against this database found (SHOW RULES says why)
    problems: list[Any] = field(default_factory=list)
    # (database, stamp): keys the plans made for these tables in the shared rewrite cache
    cache_key: tuple[str, int] = ("", 0)
    # where their writes' guard functions are: pg_temp (each session creates its own) or the
    # schema `optimist install` put them in (the plans name it: a change means new tables)
    guard_schema: str = "pg_temp"
    # relations with user triggers, protected or not ((schema, name), proxy.catalog
    # .triggers_query): a write of one may change protected rows (proxy.locking.side_effects)
    triggered: frozenset[tuple[str, str]] = frozenset()
    triggered_names: frozenset[str] = frozenset()

    def fires_triggers(self, target: tuple[str | None, str]) -> bool:
        """Whether a write of `target` (lexer.write_target: unqualified, any schema) may fire a
        user trigger."""
        schema, name = target
        if schema is None:
            return name in self.triggered_names
        return (schema, name) in self.triggered

    def views_sql(self) -> str | None:
        return views_query(self.by_oid) if self.by_oid else None

    def learn_views(self, rows: Iterable[Sequence[str | None]]) -> None:
        self.views = simple_views(rows, self.attnames)
        self.capture_plans.clear()  # planned without the views
        self.plain_statements.clear()


@dataclass
class Generation:
    """One loaded rule set and what it resolved to, per database.

    A database's tables are learned from its catalog once, shared by its sessions, and
    learned again after a change: DDL seen through this proxy, or a periodic check that finds
    the catalog's fingerprint moved (DDL run elsewhere). Each change bumps the database's
    epoch; what a query started before a change learned is not shared."""

    ruleset: RuleSet
    databases: dict[str, DatabaseTables] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    # the catalog fingerprint the shared tables were learned under
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    # when a session of the database next checks the fingerprint (monotonic clock)
    next_checks: dict[str, float] = field(default_factory=dict)
    # why a database's tables are being learned again (counted once they are)
    refresh_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.ruleset.version

    def setup_sql(self) -> str:
        return catalog_query(wanted_tables(self.ruleset))

    def fingerprint_sql(self) -> str:
        return catalog_fingerprint_query(wanted_tables(self.ruleset))

    def epoch(self, database: str) -> int:
        return self.epochs.get(database, 0)

    def catalog_changed(self, database: str, reason: str) -> None:
        """The database's catalog changed (or may have): its sessions learn it again at their
        next statement; the first to run its catalog query shares what it learned."""
        self.epochs[database] = self.epoch(database) + 1
        self.databases.pop(database, None)
        self.refresh_reasons.setdefault(database, reason)

    def claim_check(self, database: str, now: float, interval: float) -> bool:
        """The fingerprint check is due: the caller runs it, the others wait an interval."""
        due = self.next_checks.get(database)
        if due is None or now < due or interval <= 0:
            return False
        self.next_checks[database] = now + interval
        return True

    def read_catalog(
        self,
        database: str,
        rows: Iterable[Sequence[str | None]],
        guard_schema: str = "pg_temp",
        triggered: frozenset[tuple[str, str]] = frozenset(),
    ) -> DatabaseTables:
        """The tables as the catalog rows describe them; their writes call the guard functions
        of `guard_schema` (pg_temp, or the schema `optimist install` put them in)."""
        catalog = Catalog.from_rows(rows)
        protected, problems = resolve(self.ruleset, catalog)
        if guard_schema != "pg_temp":
            protected = {oid: replace(t, guard_schema=guard_schema) for oid, t in protected.items()}
        return DatabaseTables(
            by_oid=protected,
            by_name={(t.schema, t.name): t for t in protected.values()},
            attnames={
                oid: {c.attnum: c.name for c in catalog.tables_by_oid[oid].columns.values()}
                for oid in protected
            },
            problems=problems,
            cache_key=(database, next(_STAMPS)),
            guard_schema=guard_schema,
            triggered=triggered,
            triggered_names=frozenset(name for _, name in triggered),
        )

    def publish(
        self,
        database: str,
        tables: DatabaseTables,
        epoch: int,
        fingerprint: str | None,
        now: float,
        interval: float,
    ) -> str | None:
        """Share tables learned outside any transaction block, unless the catalog changed
        again while they were learned. Returns why they were learned again (None: the first
        time, or not shared)."""
        if self.epoch(database) != epoch:
            return None
        for problem in tables.problems:
            log.warning("database %s: %s", database, problem)
        self.databases[database] = tables
        self.fingerprints[database] = fingerprint
        if interval > 0:
            self.next_checks[database] = now + interval
        return self.refresh_reasons.pop(database, None)

    def table_for(
        self, tables: DatabaseTables, schema: str | None, name: str
    ) -> ProtectedTable | None:
        rule = self.ruleset.lookup(schema, name)
        if rule is None:
            return None
        if schema is not None:
            return tables.by_name.get((schema, name))
        for candidate in self.ruleset.search_path:
            found = tables.by_name.get((candidate, name))
            if found is not None:
                return found
        return None
