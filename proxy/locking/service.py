"""Process-wide locking state: the rules in force, what each database has, shared caches.

Rules are swapped atomically on reload: a session picks up the new `Generation` at its next
statement; statements already planned keep the generation they were planned with.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any

from proxy.config import ConfigError, Settings
from proxy.locking.generation import DatabaseTables, Generation
from proxy.locking.session_locking import SessionLocking
from proxy.locking.snapshots import Budget, SnapshotStore
from proxy.locking.transactions import PreparedTransactions
from proxy.rewrite.cache import RewriteCache
from proxy.rules.loader import load_rules
from proxy.rules.model import RuleError, RuleSet
from proxy.session.info import SessionInfo

log = logging.getLogger("optimist.rules")

RECENT_CONFLICTS = 100


class LockingService:
    """Shared by every session of one proxy process; sessions hold a SessionLocking each."""

    def __init__(self, settings: Settings, ruleset: RuleSet, metrics: Any = None) -> None:
        self.settings = settings
        self.generation = Generation(ruleset)
        self.metrics = metrics
        self.cache = RewriteCache(settings.rewrite_cache_size)
        self.budget = Budget(settings.snapshot_rows_total)
        self.prepared_transactions = PreparedTransactions()
        self.role_stores: dict[tuple[str, str], SnapshotStore] = {}
        # the most recent conflicts of every session, for the admin console
        self.recent_conflicts: deque[Any] = deque(maxlen=RECENT_CONFLICTS)
        # why the last reload was refused (None: it was not)
        self.last_reload_error: str | None = None
        self._mtimes = self._source_mtimes()
        # a monotonic clock, for the periodic catalog checks
        self.clock = time.monotonic
        if metrics is not None:
            metrics.rules_loaded(ruleset, ok=True)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Any = None) -> LockingService:
        try:
            ruleset = load_rules(settings.rules)
        except RuleError as exc:
            raise ConfigError("rule files refused:\n" + "\n".join(map(str, exc.problems))) from None
        log.info(
            "loaded %d rule(s) from %s (version %s)",
            len(ruleset.rules),
            ", ".join(ruleset.sources) or "-",
            ruleset.version,
        )
        return cls(settings, ruleset, metrics)

    def locking_for(self, info: SessionInfo) -> SessionLocking:
        return SessionLocking(self, info)

    def role_store(self, database: str, role: str) -> SnapshotStore:
        key = (database, role)
        store = self.role_stores.get(key)
        if store is None:
            store = SnapshotStore(self.settings.snapshot_rows_per_session, self.budget)
            self.role_stores[key] = store
        return store

    def catalog_refreshed(self, database: str, reason: str, tables: DatabaseTables) -> None:
        log.info(
            "database %s: catalog changed (%s), %d protected table(s) learned again",
            database,
            "DDL through this proxy" if reason == "ddl" else "found by the periodic check",
            len(tables.by_oid),
        )
        if self.metrics is not None:
            self.metrics.catalog_refreshed(reason)

    # ---------------------------------------------------------------- reload

    def reload(self, reason: str = "signal") -> bool:
        """Load the rule files again; a broken file keeps the old rules in force."""
        self._mtimes = self._source_mtimes()  # one attempt per change, good or bad
        try:
            ruleset = load_rules(self.settings.rules)
        except RuleError as exc:
            self.last_reload_error = "\n".join(map(str, exc.problems))
            log.error(
                "rules reload (%s) refused, keeping version %s:\n%s",
                reason,
                self.generation.version,
                "\n".join(map(str, exc.problems)),
            )
            if self.metrics is not None:
                self.metrics.rules_loaded(None, ok=False)
            return False
        except Exception as exc:  # never let a reload take the proxy down
            self.last_reload_error = f"internal error: {exc}"
            log.exception(
                "rules reload (%s) failed, keeping version %s", reason, self.generation.version
            )
            if self.metrics is not None:
                self.metrics.rules_loaded(None, ok=False)
            return False
        self.last_reload_error = None
        if ruleset.version == self.generation.version:
            log.info("rules reload (%s): unchanged (version %s)", reason, ruleset.version)
        else:
            self.generation = Generation(ruleset)
            log.info(
                "rules reloaded (%s): %d rule(s), version %s",
                reason,
                len(ruleset.rules),
                ruleset.version,
            )
        if self.metrics is not None:
            self.metrics.rules_loaded(ruleset, ok=True)
        return True

    def _source_mtimes(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for path in self.settings.rules:
            try:
                if os.path.isdir(path):
                    found[path] = os.stat(path).st_mtime
                    for entry in os.scandir(path):
                        if entry.name.endswith((".yaml", ".yml")):
                            found[entry.path] = entry.stat().st_mtime
                else:
                    found[path] = os.stat(path).st_mtime
            except OSError:
                found[path] = -1.0
        return found

    def rules_changed(self) -> bool:
        """A rule file changed since the last (re)load: the app polls this (SIGHUP aside)."""
        return self._source_mtimes() != self._mtimes
