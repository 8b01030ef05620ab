"""The locking logic of one session: fed the messages the Session decodes, it answers with
typed actions (proxy.session.actions) and never touches the Session itself.

The work is split by concern: `bootstrap` (catalog and guard functions), `writes` (checked
forms of writes), `knowledge` (what the session read and learned), `transactions` (undoing
with rollbacks), `reporting` (conflicts and refusals), `prepared` (statements and portals).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from proxy import conflicts
from proxy.locking.bootstrap import Bootstrap
from proxy.locking.capture import CapturePlan, KeylessCapture, plan_capture
from proxy.locking.counting import WriteCounts
from proxy.locking.knowledge import Knowledge
from proxy.locking.pinned import PinnedRead, pinned_read
from proxy.locking.prepared import Portal, PreparedRegistry, PreparedStatement
from proxy.locking.reporting import ConflictReporter
from proxy.locking.settings import SessionSettings
from proxy.locking.side_effects import LockRequest, lock_query
from proxy.locking.snapshots import SnapshotStore
from proxy.locking.transactions import TRANSACTION_TAGS, SessionReset, Transactions
from proxy.locking.writes import Unchecked, WriteChecker
from proxy.rewrite import lexer
from proxy.rewrite.server_code import may_run_server_code
from proxy.session.actions import Hold, Send
from proxy.session.inflight import (
    RELAYED,
    UNRESOLVED,
    Completion,
    DescribeEntry,
    Entry,
    ExecuteEntry,
    InternalEntry,
    InternalResult,
    Job,
    Kind,
    QueryEntry,
)
from proxy.session.info import SessionInfo
from proxy.sqlnames import quote_literal
from proxy.wire import messages as m

_BIND_ENTRY = RELAYED[Kind.BIND]
# the portal the hidden lock statement runs in (closed right after)
_LOCK_PORTAL = b"optimist_lock"
# statements that may change a printing setting (proxy.locking.settings)
_SETTING_TAGS = frozenset({b"SET", b"RESET", b"DISCARD"})
_SET_CONFIG, _SET_CONFIG_UPPER = "set_config", "SET_CONFIG"
_CAPTURE_PLANS_MAX = 10000

# DDL that may change what the rules protect: the database's catalog is learned again once
# the statement's transaction has ended (TRUNCATE, indexes, grants change nothing of it)
_CATALOG_DDL_TAGS = frozenset(
    f"{verb} {thing}".encode()
    for verb in ("CREATE", "ALTER", "DROP")
    for thing in ("TABLE", "VIEW", "SCHEMA", "EXTENSION", "TYPE", "DOMAIN", "RULE", "TRIGGER")
) | {b"DROP OWNED", b"IMPORT FOREIGN SCHEMA"}
_DDL_WORDS = frozenset(tag.split(b" ", 1)[0] for tag in _CATALOG_DDL_TAGS) | {b"SELECT"}
# CREATE TABLE ... AS completes with a SELECT tag: anchored, a plain SELECT fails at its first
# letter (SELECT ... INTO, rare, is left to the periodic check: finding it costs a scan)
_CREATES_TABLE = re.compile(r"\s*create\b", re.IGNORECASE)


def _creates_table(word: bytes, text: str) -> bool:
    return word == b"SELECT" and _CREATES_TABLE.match(text) is not None


def _answer(request: LockRequest) -> Callable[[InternalResult], None]:
    def done(result: InternalResult) -> None:
        if not result.failed and result.rows and result.rows[0]:
            request.answered(result.rows[0][0])

    return done


def _locked_first(lock: tuple[tuple[bytes, ...], tuple[Entry, ...]] | None, send: Send) -> Send:
    """The hidden lock (if any) ahead of what the client's message is sent as."""
    if lock is None:
        return send
    return Send(lock[0] + tuple(send.messages), lock[1] + tuple(send.entries))


class SessionLocking:
    def __init__(self, service: Any, info: SessionInfo) -> None:
        self.service = service
        self.info = info
        self.counts = WriteCounts(service.metrics)
        store = SnapshotStore(service.settings.snapshot_rows_per_session, service.budget)
        self.knowledge = Knowledge(store, lambda: service.role_store(info.database, info.user))
        self.registry = PreparedRegistry()
        self.settings = SessionSettings(info, pooled=service.settings.pooler_mode == "transaction")
        self.bootstrap = Bootstrap(
            service, info.database, info.user, self.knowledge.txlog, self.settings
        )
        self.transactions = Transactions(self.knowledge, service.prepared_transactions)
        self.writes = WriteChecker(service, info, self.knowledge, self.registry, self.counts)
        self.reporter = ConflictReporter(info, service.metrics, service.recent_conflicts)
        # inside an extended-protocol batch (up to Sync): the catalog is not refreshed there
        self._in_batch = False

    @property
    def tables(self) -> Any:
        return self.bootstrap.tables

    # ---------------------------------------------------------------- life cycle

    def authenticated(self) -> Job | None:
        return self.bootstrap.job(self.info.status)

    def close(self) -> None:
        self.knowledge.close()

    def remembered_rows(self) -> int:
        """Rows this session's own store remembers (SHOW SESSIONS)."""
        return len(self.knowledge.store)

    def _refresh(self) -> Hold | None:
        if self.bootstrap.stale(self.info.status):
            job = self.bootstrap.job(self.info.status)
            if job is not None:
                return Hold(job)
        return None

    # ---------------------------------------------------------------- client messages

    def sync(self) -> None:
        self._in_batch = False

    def query(self, sql: str, raw: bytes) -> Send | Hold | None:
        hold = self._refresh()
        if hold is not None:
            return hold
        tables = self.tables
        if tables is None or not tables.by_oid:
            if tables is not None and _CREATES_TABLE.match(sql):
                # a CREATE TABLE ... AS completes with a SELECT tag: keep its text at hand
                return Send((raw,), (QueryEntry([sql], [None]),))
            return None
        generation, guards = self.bootstrap.generation, self.bootstrap.guards
        scs = self.info.standard_conforming_strings
        stripped = sql.strip().rstrip(";")
        stmts = lexer.split_statements(sql, scs) if ";" in stripped else [sql]
        works = [self.writes.simple(generation, tables, guards, stmt) for stmt in stmts]
        entry = QueryEntry(stmts, works)
        lock = self._simple_lock(stmts) if self.info.status == b"T" else None
        if not any(w is not None for w in works):
            return _locked_first(lock, Send((raw,), (entry,)))
        encoding = self.info.encoding
        text = ";\n".join(w.sql if w is not None else s for s, w in zip(stmts, works))
        query = m.encode_query(text.encode(encoding, "surrogateescape"))
        setups = [w.setup for w in works if w is not None and w.setup is not None]
        if setups:  # hidden SQL statements the checked forms execute: prepared first, unseen
            setup = m.encode_query(";\n".join(setups).encode(encoding, "surrogateescape"))
            names = {w.setup_name for w in works if w is not None and w.setup_name is not None}
            prepared = InternalEntry(Kind.QUERY, surface=True, done=self._setup_done(names))
            send = Send((setup, query), (prepared, entry))
            return _locked_first(lock, send)
        return _locked_first(lock, Send((query,), (entry,)))

    def _setup_done(self, names: set[bytes]) -> Callable[[InternalResult], None]:
        def done(result: InternalResult) -> None:
            if result.failed:  # not prepared (the client saw why): prepared again next time
                self.registry.forget_hidden(names)

        return done

    def _lock_request(self, texts: list[str]) -> LockRequest | None:
        """Inside a transaction block, before a write of a table with user triggers: the hidden
        lock of the rows read in this transaction that still hold what was read (their marks
        become LOCKED: proxy.locking.side_effects), sent ahead of the client's statement."""
        knowledge = self.knowledge
        tables = self.tables
        if not knowledge.own.marks or not tables.triggered or not self.bootstrap.guards:
            return None
        for text in texts:
            target = lexer.write_target(text)
            if target is not None and target != lexer.MUST_PARSE and tables.fires_triggers(target):
                break
        else:
            return None
        return lock_query(
            knowledge.own,
            tables.by_oid.get,
            lambda table, key: knowledge.store_for(table).get(key),
            self.info.encoding,
            self.info.standard_conforming_strings,
            conflicts.guard_schema_sql(tables.guard_schema),
        )

    def _lock_function(self) -> str:
        return conflicts.guard_schema_sql(self.tables.guard_schema) + ".optimist_lock_verified"

    def _simple_lock(self, texts: list[str]) -> tuple[tuple[bytes, ...], tuple[Entry, ...]] | None:
        """The hidden lock as a Query of its own, ahead of the client's."""
        request = self._lock_request(texts)
        if request is None:
            return None
        scs = self.info.standard_conforming_strings
        sql = f"SELECT {self._lock_function()}({quote_literal(request.sql, scs)})"
        entry = InternalEntry(Kind.QUERY, surface=True, done=_answer(request))
        return (m.encode_query(sql.encode(self.info.encoding, "surrogateescape")),), (entry,)

    def _extended_lock(self, bind: m.Bind) -> tuple[tuple[bytes, ...], tuple[Entry, ...]] | None:
        """The hidden lock ahead of the client's Bind: a hidden statement (prepared once) bound
        to a portal of its own, executed and closed, in the client's batch (an error before
        it skips it with the client's messages)."""
        info = self.registry.statements.get(bind.statement)
        request = self._lock_request([info.text]) if info is not None else None
        if request is None:
            return None
        name, parse, close = self.writes._hidden_statement(
            f"SELECT {self._lock_function()}($1)", (25,)
        )
        messages: list[bytes] = []
        entries: list[Entry] = []
        if close is not None:
            messages.append(close)
            entries.append(InternalEntry(Kind.CLOSE, surface=True))
        if parse is not None:
            messages.append(parse)
            entries.append(InternalEntry(Kind.PARSE, surface=True))
        q = request.sql.encode(self.info.encoding, "surrogateescape")
        messages += [
            m.Bind(_LOCK_PORTAL, name, [0], [q], []).encode(),
            m.encode_execute(_LOCK_PORTAL, 0),
            m.encode_close(b"P", _LOCK_PORTAL),
        ]
        entries += [
            InternalEntry(Kind.BIND, surface=True),
            InternalEntry(Kind.EXECUTE, surface=True, done=_answer(request)),
            InternalEntry(Kind.CLOSE, surface=True),
        ]
        return tuple(messages), tuple(entries)

    def parse(self, parse: m.Parse) -> Hold | None:
        if not self._in_batch:
            hold = self._refresh()
            if hold is not None:
                return hold
        self._in_batch = True
        self.registry.parsed(
            parse.name, self.writes.prepared(self.bootstrap.generation, self.tables, parse)
        )
        return None

    def bind(self, bind: m.Bind, raw: bytes) -> Send | None:
        lock = self._extended_lock(bind) if self.info.status == b"T" else None
        send = self._bind(bind, raw)
        if lock is None:
            return send
        return _locked_first(lock, send if send is not None else Send((raw,), (_BIND_ENTRY,)))

    def _bind(self, bind: m.Bind, raw: bytes) -> Send | None:
        self._in_batch = True
        registry = self.registry
        info = registry.statements.get(bind.statement)
        if info is not None and (info.unverified or info.creates or info.executes):
            refused = self.writes.bind_unverified(self.tables, info, bind)
            if refused is not None:
                return self._bound(bind, None, refused)
        target = info.target if info is not None else None
        if target is None:
            registry.portals[bind.portal] = self._plain_portal(info, bind)
            return None
        if not self.bootstrap.guards:
            refused = self.writes.unchecked_bind(target.table, "guards_unavailable", bind)
            if refused is not None:
                return self._bound(bind, None, refused)
            registry.portals[bind.portal] = Portal(info)
            return None
        try:
            checked = self.writes.checked_bind(info, target, bind)  # type: ignore[arg-type]
        except Unchecked as exc:
            refused = self.writes.unchecked_bind(target.table, exc.reason, bind)
            if refused is not None:
                return self._bound(bind, None, refused)
            registry.portals[bind.portal] = self._plain_portal(info, bind)
            return None
        return self._bound(bind, info, checked)

    def _bound(self, bind: m.Bind, info: PreparedStatement | None, checked: Any) -> Send:
        """Send the Bind (and Parse) that replace the client's, for a checked or refused
        write (a refusal's work is None: its portal runs the proxy's own statement)."""
        self.registry.portals[bind.portal] = Portal(
            info if checked.work is not None else None, work=checked.work
        )
        if checked.parse is None:
            return Send((checked.bind,), (_BIND_ENTRY,))
        if checked.close is not None:
            return Send(
                (checked.close, checked.parse, checked.bind),
                (
                    InternalEntry(Kind.CLOSE, surface=True),
                    InternalEntry(Kind.PARSE, surface=True),
                    _BIND_ENTRY,
                ),
            )
        return Send(
            (checked.parse, checked.bind), (InternalEntry(Kind.PARSE, surface=True), _BIND_ENTRY)
        )

    def _plain_portal(self, info: PreparedStatement | None, bind: m.Bind) -> Portal:
        return Portal(
            info,
            capture=self._statement_capture(info, bind.result_formats),
            result_formats=bind.result_formats,
            # a read without its key may take the key from a parameter (proxy.locking.pinned)
            bind=bind if bind.params else None,
        )

    def describe(self, kind: bytes, name: bytes, raw: bytes) -> Send:
        self._in_batch = True
        return Send((raw,), (DescribeEntry(kind, self.registry.described(kind, name)),))

    def execute(self, portal_name: bytes, max_rows: int, raw: bytes) -> Send | None:
        self._in_batch = True
        portal = self.registry.portals.get(portal_name)
        if portal is None:
            return None
        text = portal.statement.text if portal.statement is not None else ""
        entry = ExecuteEntry(text, portal.work, portal)
        if portal.work is not None and portal.work.strip == -1 and max_rows:
            # the rows are ours, not the client's: a row limit (pgjdbc asks for one row
            # when it expects none) must not suspend the write half-way
            return Send((m.encode_execute(portal_name, 0),), (entry,))
        return Send((raw,), (entry,))

    def close_target(self, kind: bytes, name: bytes) -> None:
        self._in_batch = True
        self.registry.closed(kind, name)

    # ---------------------------------------------------------------- capture plans

    def _capture_plan(self, fields: Any) -> CapturePlan | KeylessCapture | None:
        tables = self.tables
        return plan_capture(fields, tables.by_oid, tables.attnames, tables.views)

    def _cached_plan(self, key: bytes, fields: Any) -> CapturePlan | KeylessCapture | None:
        """The capture plan of a RowDescription (its bytes `key`), planned once per shape
        under these tables (a reload or DDL refresh brings new tables, an empty cache);
        fields: the decoded RowDescription, or None to decode it on a miss."""
        cache = self.tables.capture_plans
        plan = cache.get(key, False)
        if plan is False:
            plan = self._capture_plan(m.decode_row_description(key) if fields is None else fields)
            if len(cache) < _CAPTURE_PLANS_MAX:
                cache[key] = plan
        return plan  # type: ignore[no-any-return]  # only plans are stored

    def _pinned(
        self, capture: KeylessCapture, text: str, bind: Any = None, param_types: Any = ()
    ) -> PinnedRead | None:
        info = self.info
        return pinned_read(
            self.tables,
            capture,
            text,
            info.standard_conforming_strings,
            info.encoding,
            bind,
            param_types,
        )

    def _statement_capture(
        self, info: PreparedStatement | None, result_formats: Any
    ) -> CapturePlan | KeylessCapture | None:
        """A portal's capture plan from its statement's fields; UNRESOLVED while they are
        not known (resolved again at the Execute's first row, after a pipelined Describe)."""
        if info is None or self.tables is None:
            return None
        if info.fields is None:
            return UNRESOLVED  # type: ignore[no-any-return]
        key = info.fields_key
        plan = (
            self._capture_plan(info.fields) if key is None else self._cached_plan(key, info.fields)
        )
        if plan is None:
            return None
        return plan.with_formats(result_formats, len(info.fields))

    def _execute_capture(self, entry: ExecuteEntry) -> CapturePlan | PinnedRead | None:
        """What an Execute's rows carry, known once any Describe pipelined before it was
        answered: resolved at its first row."""
        portal = entry.portal
        found = portal.capture
        if found is UNRESOLVED:
            found = self._statement_capture(portal.statement, portal.result_formats)
            if found is UNRESOLVED:  # still no fields: nothing known to capture
                found = None
            portal.capture = found
        capture: CapturePlan | PinnedRead | None
        if isinstance(found, KeylessCapture):
            statement = portal.statement
            if portal.pinned is None and statement is not None:
                # one per portal: a second row in a later Execute still counts as a second
                portal.pinned = self._pinned(
                    found, statement.text, portal.bind, statement.param_types
                )
            capture = portal.pinned
        else:
            capture = found
        entry.capture = capture
        return capture

    # ---------------------------------------------------------------- server messages

    def row_description(self, entry: Entry, body: Any) -> bytes | None:
        tables = self.tables
        if tables is None or not tables.by_oid:
            return None
        if type(entry) is DescribeEntry:
            return self._described(entry, body)
        work = entry.current_work() if type(entry) is QueryEntry else None
        if work is not None:
            entry.strip = work.strip  # type: ignore[misc]  # a QueryEntry: only it has work here
            if work.strip == -1:
                return b""
            if not work.strip:  # nothing added: the rows are the client's (a write: no read)
                return None
            fields = m.decode_row_description(body)
            return m.encode_row_description(fields[: -work.strip])
        if type(entry) is not QueryEntry:
            return None
        key = bytes(body)
        plan = tables.capture_plans.get(key, False)  # the hit inline: every simple SELECT
        if plan is False:
            plan = self._cached_plan(key, None)
        if plan is not None and type(plan) is KeylessCapture:
            entry.capture = self._pinned(plan, entry.current_text())
        else:
            entry.capture = plan  # a CapturePlan or None here
        return None

    def _described(self, entry: DescribeEntry, body: Any) -> bytes | None:
        target = entry.target
        if target is None:
            return None
        key = bytes(body)
        if entry.target_kind == b"S":
            target.fields = m.decode_row_description(body)  # Executes of its portals capture
            target.fields_key = key
            return None
        portal: Portal = target
        if portal.work is not None:
            if portal.work.strip == -1:
                return m.NO_DATA
            if not portal.work.strip:  # nothing added: the columns are the client's
                return None
            fields = m.decode_row_description(body)
            return m.encode_row_description(fields[: -portal.work.strip])
        statement = portal.statement
        if statement is not None and statement.fields is None:
            # later Binds of the statement without a Describe (pgjdbc's S_1, named
            # statements) capture with these fields and their own result formats
            statement.fields = m.decode_row_description(body)
            statement.fields_key = key
        portal.capture = self._cached_plan(key, None)  # the portal's own formats are in it
        return None

    def data_row(self, entry: Entry, body: Any) -> bytes | None:
        strip = entry.strip
        if strip:
            values = m.decode_data_row(body)
            work = entry.current_work() if type(entry) is QueryEntry else entry.work  # type: ignore[attr-defined]  # else an ExecuteEntry
            if work is not None and work.extras:
                added = values[-work.added :]
                self.knowledge.learn(
                    work, added[: len(work.extras)], self.info.encoding, self.settings.current()
                )
            if strip == -1:
                return b""
            return m.encode_data_row(values[:-strip])
        capture = entry.capture
        if capture is UNRESOLVED:
            capture = self._execute_capture(entry)  # type: ignore[arg-type]
        if capture is not None:
            if isinstance(capture, PinnedRead):
                capture.row(m.decode_data_row(body), self.knowledge, self.settings.current())
            else:
                self.knowledge.capture(
                    capture, m.decode_data_row(body), self.info.encoding, self.settings.current()
                )
        return None

    def command_complete(self, entry: Entry, tag: bytes) -> None:
        if self.tables is None:
            return
        word = tag.split(b" ", 1)[0]
        if type(entry) is QueryEntry:
            work, text = entry.current_work(), entry.current_text()
        elif type(entry) is ExecuteEntry:
            work, text = entry.work, entry.text
        else:
            work, text = None, ""  # a CommandComplete where none belongs: the server's problem
        if word in _SETTING_TAGS or _SET_CONFIG in text or _SET_CONFIG_UPPER in text:
            self.settings.statement(text, self.info.status != b"I" or self.knowledge.txlog.open)
        if tag == b"PREPARE":
            self.writes.sql_prepare_done(self.bootstrap.generation, self.tables, text)
        if word in TRANSACTION_TAGS:
            reset = self.transactions.completed(
                tag, word, text, self.info.status, self.info.standard_conforming_strings
            )
            if reset & SessionReset.TEMPORARY_OBJECTS:
                self.bootstrap.temporary_objects_dropped()
            if reset & SessionReset.PREPARED_STATEMENTS:
                self.registry.forget_statements()
            return
        knowledge = self.knowledge
        self.transactions.statement_done(
            word,
            word == b"SELECT"
            and not knowledge.wrote
            and may_run_server_code(text)
            and self.writes.server_code(text),
        )
        if word in _DDL_WORDS and (tag in _CATALOG_DDL_TAGS or _creates_table(word, text)):
            self.bootstrap.ddl_completed()
        if work is not None:
            if work.forget_keys:
                self.knowledge.forget_rows(work.table, work.forget_keys)
            for forgotten in work.forget_tables:
                self.knowledge.forget_table(forgotten)
            rows = m.command_rows(tag)
            if work.expected and rows is not None and rows < work.expected:
                # nothing was raised, so every pinned row existed and matched: a trigger or a
                # row-level security policy kept the write from applying (not a conflict)
                self.counts.unapplied(work.table)
        if type(entry) is QueryEntry:
            entry.capture = None
            entry.strip = 0

    def ready(self, entry: Entry | None, status: bytes) -> None:
        self.registry.request_done()
        if status == b"I":
            self.settings.ready(isinstance(entry, Completion) and entry.failed)
            self.bootstrap.transaction_ended()
            self.transactions.idle(isinstance(entry, Completion) and entry.failed)
            self.registry.transaction_ended()

    def error(self, entry: Entry | None, fields: dict[str, str]) -> bytes | None:
        return self.reporter.error(fields)

    def notice(self, fields: dict[str, str]) -> bytes | None:
        return self.reporter.notice(fields)
