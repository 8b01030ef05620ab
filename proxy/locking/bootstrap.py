"""What a session needs before it can check a write: the protected tables of its database
(from the catalog, once per rules generation) and the guard functions on its connection.
Both come from queries the proxy runs itself, as a job the Session drives."""

from __future__ import annotations

import logging
from typing import Any

from proxy import conflicts
from proxy.locking.settings import INITIAL_SQL, SessionSettings
from proxy.locking.snapshots import TransactionLog
from proxy.session.inflight import InternalQuery, InternalResult, Job

log = logging.getLogger("optimist.locking")


class Bootstrap:
    def __init__(
        self,
        service: Any,
        database: str,
        role: str,
        txlog: TransactionLog,
        settings: SessionSettings | None = None,
    ) -> None:
        self.service = service
        # the session's printing settings: their values at the start, read once
        self.settings = settings
        self.settings_wanted = settings is not None
        self.database = database
        self.role = role
        self.txlog = txlog
        # the rules generation in force for this session, and what it protects here
        self.generation: Any = None
        self.tables: Any = None
        self.guards = False
        self.guards_failed = False

    def _wants_guards(self, tables: Any) -> bool:
        return (
            not self.guards and not self.guards_failed and (tables is None or bool(tables.by_oid))
        )

    def stale(self) -> bool:
        """A reload brought a new generation, or the guard functions are missing."""
        return self.generation is not self.service.generation or (
            self.tables is not None and self.tables.by_oid and self._wants_guards(self.tables)
        )

    def job(self, status: bytes) -> Job | None:
        """The queries to run now, or None when there is nothing to learn (or nothing can
        run: an aborted transaction; try again after it ends)."""
        generation = self.service.generation
        tables = generation.databases.get(self.database)
        parts = []
        if tables is None:
            parts.append(generation.setup_sql())
        want_guards = self._wants_guards(tables)
        if want_guards:
            parts.append(conflicts.guard_functions_sql(self.service.settings.conflict_sqlstate))
        if not parts or status == b"E":
            if not parts:
                self.generation, self.tables = generation, tables
            return None
        if tables is not None:
            self.generation, self.tables = generation, tables
        return self._run(generation, tables, want_guards, ";\n".join(parts), status)

    def _run(self, generation: Any, tables: Any, want_guards: bool, sql: str, status: bytes) -> Job:
        if self.settings_wanted and self.settings is not None:
            self.settings_wanted = False
            initial = yield InternalQuery(INITIAL_SQL)
            if not initial.failed and initial.rows:
                self.settings.learned_initial(_text_rows(initial)[0])
        result: InternalResult = yield InternalQuery(sql)
        if tables is None:
            rows = _text_rows(result)
            learned = (
                generation.learn_catalog(self.database, rows)
                if (rows or not result.failed)
                else None
            )
            if learned is not None:
                self.generation, self.tables = generation, learned
                views_sql = learned.views_sql()
                if views_sql is not None and not result.failed:
                    views = yield InternalQuery(views_sql)
                    if not views.failed:
                        learned.learn_views(_text_rows(views))
        else:
            self.generation, self.tables = generation, tables
        if want_guards:
            self.guards = not result.failed
            self.guards_failed = result.failed
            if result.failed:
                log.warning(
                    "cannot create the guard functions for %s on %s (no TEMP "
                    "privilege? read-only server?): writes pass unverified",
                    self.role,
                    self.database,
                )
            elif status == b"T":
                # created inside the client's transaction: a rollback takes them away
                self.txlog.on_rollback(self._guards_lost)

    def _guards_lost(self) -> None:
        self.guards = False

    def temporary_objects_dropped(self) -> None:
        self.guards = False


def _text_rows(result: InternalResult) -> list[list[str | None]]:
    return [
        [None if v is None else v.decode("utf-8", "replace") for v in row] for row in result.rows
    ]
