"""What a session needs before it can check a write: the protected tables of its database
(from the catalog) and the guard functions on its connection. Both come from queries the
proxy runs itself, as a job the Session drives.

The tables of a database are shared by its sessions (proxy.locking.service.Generation) and
learned again when the catalog changes: after DDL through this proxy, once its transaction
has ended (committed or rolled back: learning again is always safe), and when a periodic
fingerprint check finds the catalog moved under DDL run elsewhere. Only what was learned
outside a transaction block is shared: a transaction's catalog query sees its snapshot and its
own uncommitted DDL, so what it learns is that session's alone until the transaction ends.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy import conflicts
from proxy.catalog import CATALOG_COLUMNS, trigger_tables, triggers_query
from proxy.locking import installed as installed_guards
from proxy.locking.settings import INITIAL_SQL, SessionSettings
from proxy.locking.snapshots import TransactionLog
from proxy.session.inflight import InternalQuery, InternalResult, Job

log = logging.getLogger("optimist.locking")

IDLE, FAILED = b"I", b"E"
# after a catalog query failed, the session goes on with what it knew for this long (the
# statement it held must run, not ask again forever)
RETRY_AFTER = 1.0


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
        # self.tables were learned inside the current transaction: this session's alone
        self.private = False
        # this session completed DDL since it last learned the catalog (its transaction
        # sees it; nobody else does before it commits)
        self.own_ddl = False
        # the current transaction ran DDL: when it ends the database's catalog is stale
        self.ddl_in_transaction = False
        # this connection has the guard functions in pg_temp (created, not rolled back or
        # discarded), or creating them failed (or cannot work: behind a transaction pooler)
        self.temp_guards = False
        self.guards_failed = False
        # monotonic time before which a failed catalog query is not tried again
        self.retry_at = 0.0

    @property
    def guards(self) -> bool:
        """The guard functions the plans of self.tables call are there: installed in their
        schema (proxy.locking.installed), or created in this connection's pg_temp."""
        if self.tables is not None and self.tables.guard_schema != "pg_temp":
            return True
        return self.temp_guards

    @property
    def pooled(self) -> bool:
        """A transaction pooler is between the proxy and PostgreSQL: nothing created on a
        server connection outlives the transaction (pg_temp functions would be on one
        server connection only, and another session's could answer)."""
        return bool(self.service.settings.pooler_mode == "transaction")

    def _wants_guards(self, tables: Any) -> bool:
        """pg_temp functions to create (tables None: not known yet, so in case)."""
        if self.temp_guards or self.guards_failed or self.pooled:
            return False
        return tables is None or (bool(tables.by_oid) and tables.guard_schema == "pg_temp")

    def fingerprint_sql(self, generation: Any) -> str:
        """The catalog's fingerprint, and what is installed in the guard schema: installing
        (or removing) the functions is noticed at the next check like DDL."""
        return installed_guards.fingerprint_sql(
            generation.fingerprint_sql(), self.service.settings.guard_schema
        )

    def stale(self, status: bytes) -> bool:
        """Something to learn before the next statement: a reload brought a new generation,
        the catalog changed, a fingerprint check is due, or the guard functions are missing.
        Cheap: it runs before every statement."""
        generation = self.service.generation
        if self.generation is not generation:
            return True
        if self.private:
            return status == IDLE or self.own_ddl
        if self.own_ddl or self.tables is None:
            return True
        if self.tables is not generation.databases.get(self.database):
            return True
        if self.tables.by_oid and self._wants_guards(self.tables):
            return True
        due = generation.next_checks.get(self.database)
        return due is not None and status == IDLE and self.service.clock() >= due

    def ddl_completed(self) -> None:
        self.own_ddl = True
        self.ddl_in_transaction = True

    def transaction_ended(self) -> None:
        """Back to idle after a transaction that ran DDL: every session of the database
        learns its catalog again."""
        if self.ddl_in_transaction:
            self.ddl_in_transaction = False
            self.own_ddl = False
            self.service.generation.catalog_changed(self.database, "ddl")

    def job(self, status: bytes) -> Job | None:
        """The queries to run now, or None when there is nothing to learn (or nothing can
        run: an aborted transaction; try again after it ends)."""
        generation = self.service.generation
        shared = generation.databases.get(self.database)
        if status == FAILED:
            if shared is not None and not self.own_ddl and not self.private:
                self._adopt(generation, shared, private=False)
            return None
        idle = status == IDLE
        if self.own_ddl and not idle:
            learn = True  # its transaction sees its own DDL: learn that, privately
        elif self.private and not idle and self.generation is generation:
            learn = False  # learned in this transaction already
        elif shared is not None:
            learn = False
            self._adopt(generation, shared, private=False)
        else:
            learn = True  # shared only if learned outside a transaction block
        if learn and self.service.clock() < self.retry_at:
            return None
        want_guards = self._wants_guards(None if learn else self.tables)
        service = self.service
        check = (
            not learn
            and idle
            and generation.claim_check(
                self.database, service.clock(), service.settings.catalog_check_interval
            )
        )
        if not learn and not want_guards and not check and not self.settings_wanted:
            return None
        return self._run(generation, learn, idle, want_guards, check, status)

    def _adopt(self, generation: Any, tables: Any, *, private: bool) -> None:
        self.generation, self.tables, self.private = generation, tables, private
        if not private:
            self.own_ddl = False

    def _run(
        self,
        generation: Any,
        learn: bool,
        share: bool,
        want_guards: bool,
        check: bool,
        status: bytes,
    ) -> Job:
        if self.settings_wanted and self.settings is not None:
            self.settings_wanted = False
            initial = yield InternalQuery(INITIAL_SQL)
            if not initial.failed and initial.rows:
                self.settings.learned_initial(_text_rows(initial)[0])
        database = self.database
        epoch = generation.epoch(database)
        fingerprint = None
        if check:
            found = yield InternalQuery(self.fingerprint_sql(generation))
            fingerprint = _fingerprint(found)
            if fingerprint is not None and fingerprint != generation.fingerprints.get(database):
                if generation.epoch(database) == epoch:  # nobody noticed it first
                    generation.catalog_changed(database, "check")
                    epoch = generation.epoch(database)
                    learn = True
        parts = []
        if learn:
            if share and not check:
                # before the catalog: DDL committed between the two shows at the next check
                parts.append(self.fingerprint_sql(generation))
            # which guard functions are installed decides where the plans call them
            parts.append(installed_guards.installed_query(self.service.settings.guard_schema))
            # which relations have user triggers (proxy.locking.side_effects)
            parts.append(triggers_query())
            parts.append(generation.setup_sql())
        if want_guards:
            parts.append(conflicts.guard_functions_sql(self.service.settings.conflict_sqlstate))
        if not parts:
            return
        result: InternalResult = yield InternalQuery(";\n".join(parts))
        if learn and share and not check:
            fingerprint = _fingerprint(result)
        if learn:
            every = _text_rows(result)
            # not the fingerprint nor the installed functions
            rows = [row for row in every if len(row) == len(CATALOG_COLUMNS)]
            if rows or not result.failed:
                learned = generation.read_catalog(
                    database, rows, self._guard_schema(every), trigger_tables(every)
                )
                self._adopt(generation, learned, private=not share)
                self.own_ddl = False
                if share:
                    service = self.service
                    reason = generation.publish(
                        database,
                        learned,
                        epoch,
                        fingerprint,
                        service.clock(),
                        service.settings.catalog_check_interval,
                    )
                    if reason is not None:
                        service.catalog_refreshed(database, reason, learned)
                # the views fill in the tables in place, shared or not
                views_sql = learned.views_sql()
                if views_sql is not None and not result.failed:
                    views = yield InternalQuery(views_sql)
                    if not views.failed:
                        learned.learn_views(_text_rows(views))
            else:
                self.retry_at = self.service.clock() + RETRY_AFTER
        if want_guards:
            self.temp_guards = not result.failed
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

    def _guard_schema(self, rows: list[list[str | None]]) -> str:
        """Where the plans of the tables learned from `rows` call the guard functions: the
        installed schema when they are there in this proxy's version, else pg_temp."""
        settings = self.service.settings
        schema: str = settings.guard_schema
        found = installed_guards.judge_installed(rows, schema, settings.conflict_sqlstate)
        if found.usable:
            log.info(
                "database %s: using the guard functions installed in schema %s (version %s)",
                self.database,
                schema,
                found.version,
            )
            return schema
        if found.problem is not None:
            log.warning("database %s: %s", self.database, found.problem)
        if self.pooled:
            log.warning(
                "database %s: no usable guard functions in schema %s and pooler_mode is "
                "transaction: writes of protected tables pass unverified (guards_unavailable) "
                "until `optimist install --upstream URL --schema %s` is run",
                self.database,
                schema,
                schema,
            )
        return "pg_temp"

    def _guards_lost(self) -> None:
        self.temp_guards = False

    def temporary_objects_dropped(self) -> None:
        self.temp_guards = False


def _fingerprint(result: InternalResult) -> str | None:
    """The one-column row of the fingerprint query (the catalog's rows have more)."""
    found = [row[0] for row in result.rows if len(row) == 1]
    if len(found) != 1 or found[0] is None:
        return None
    return found[0].decode("utf-8", "replace")


def _text_rows(result: InternalResult) -> list[list[str | None]]:
    return [
        [None if v is None else v.decode("utf-8", "replace") for v in row] for row in result.rows
    ]
