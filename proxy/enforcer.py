"""Per-session enforcement: capture reads, check writes, learn results, report conflicts.

The session (proxy.session) calls these hooks as messages pass; every hook is sans-IO. A hook
returns None to let the message through unchanged, or what to send instead.
"""
from __future__ import annotations

import logging
import re

from proxy import conflicts
from proxy.capture import capture_row, plan_capture
from proxy.pending import Pending
from proxy.rewrite import lexer
from proxy.rewrite.planner import (InsertPlan, Unverified, WritePlan, plan_insert, plan_write,
                                    written_tables)
from proxy.snapshots import SnapshotStore, TransactionLog
from proxy.values import ReadValue, normalize_key, normalize_text_key
from proxy.wire import messages as m

log = logging.getLogger("optimist.enforcer")
conflict_log = logging.getLogger("optimist.conflicts")

HOLD = "hold"  # returned by client_message: keep this message until the catalog is known
_PARAM = re.compile(rb"\$(\d+)")


class Unchecked(Exception):
    """A write that cannot be checked; the reason is a metric label."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class StatementWork:
    """What the proxy does around one client statement it rewrote."""

    __slots__ = ("table", "kind", "sql", "strip", "keys", "expected", "extras", "formats",
                 "added")

    def __init__(self, table, kind: str, sql: str, extras: tuple[str, ...],
                 client_returning: bool, keys=(), formats=None) -> None:
        self.table = table
        self.kind = kind
        self.sql = sql
        self.extras = extras
        # trailing columns the proxy added: the captured columns, then a notification
        self.added = len(extras) + (1 if table.notify else 0)
        # trailing columns to remove from results; -1: the client expects no rows at all
        self.strip = self.added if client_returning else -1
        self.keys = keys
        self.expected = len(set(keys))
        self.formats = formats  # result formats of the extra columns (None: text)


class PreparedInfo:
    __slots__ = ("text", "param_types", "target", "fields", "rendered", "unverified")

    def __init__(self, text: str, param_types, target) -> None:
        self.text = text
        self.param_types = param_types
        self.target = target    # (table, plan) for writes to protected tables, else None
        self.fields = None      # RowDescription fields from a Describe of the statement
        self.rendered = {}      # (n_params, mask) -> RenderedSql
        self.unverified = ()    # (table, reason) counted at each execution


class PortalInfo:
    __slots__ = ("statement", "work", "capture", "result_formats")

    def __init__(self, statement: PreparedInfo | None, work=None, capture=None,
                 result_formats=()) -> None:
        self.statement = statement
        self.work = work
        self.capture = capture
        self.result_formats = result_formats


class Enforcer:
    def __init__(self, enforcement, startup) -> None:
        self.enforcement = enforcement
        self.metrics = enforcement.metrics
        self.database = startup.database
        self.role = startup.user
        self.generation = None
        self.tables = None
        self.session = None
        self.store = SnapshotStore(enforcement.settings.snapshot_rows_per_session,
                                   enforcement.budget)
        self.txlog = TransactionLog()
        self.waiting = False
        self.guards = False
        self.guards_failed = False
        self.in_batch = False
        self.statements: dict[bytes, PreparedInfo] = {}
        self.portals: dict[bytes, PortalInfo] = {}
        self.hidden_statements: dict[tuple, bytes] = {}
        self.counter = 0
        # (table, key) of rows a conflict proved stale, forgotten when the transaction ends
        self.stale: list = []
        # (table oid, key) of rows known only from the session's own unchecked writes
        self.blind: set = set()

    # ---------------------------------------------------------------- life cycle

    def attach(self, session) -> None:
        self.session = session

    def close(self) -> None:
        self.store.close()

    def holding(self) -> bool:
        return self.waiting

    def authenticated(self) -> None:
        self._refresh()

    def _refresh(self) -> bool:
        """Pick up the current rules generation and (re)create the guard functions if
        missing. True when the session must wait for the query this injected."""
        generation = self.enforcement.generation
        tables = generation.databases.get(self.database)
        parts = []
        if tables is None:
            parts.append(generation.setup_sql())
        want_guards = not self.guards and not self.guards_failed and (
            tables is None or tables.by_oid)
        if want_guards:
            parts.append(conflicts.guard_functions_sql(self.enforcement.settings.conflict_sqlstate))
        if not parts:
            self.generation, self.tables = generation, tables
            return False
        if self.session.status == b"E":
            return False  # an aborted transaction runs nothing: try again after it ends
        sql = ";\n".join(parts)

        def done(item: Pending) -> None:
            if tables is None:
                rows = [[None if v is None else v.decode("utf-8", "replace") for v in row]
                        for row in item.rows]
                learned = generation.learn_catalog(self.database, rows) if (
                    rows or not item.failed) else None
                if learned is not None:
                    self.generation, self.tables = generation, learned
            else:
                self.generation, self.tables = generation, tables
            if want_guards:
                self.guards = not item.failed
                self.guards_failed = item.failed
                if item.failed:
                    log.warning("cannot create the guard functions for %s on %s (no TEMP "
                                "privilege? read-only server?): writes pass unverified",
                                self.role, self.database)
                if self.guards and self.session.status == b"T":
                    self.txlog.on_rollback(self._guards_lost)
            if self.waiting:
                self.waiting = False
                self.session.release_held()

        self.session.inject(m.encode_query(sql.encode()), Pending(Pending.QUERY, on_done=done))
        if tables is not None:
            self.generation, self.tables = generation, tables
        # hold the client until it is known whether guards exist (a role without the TEMP
        # privilege cannot create them: its writes must then pass unverified, not fail)
        self.waiting = True
        return True

    def _guards_lost(self) -> None:
        self.guards = False

    def _store_for(self, table) -> SnapshotStore:
        if table.scope == "user":
            return self.enforcement.role_store(self.database, self.role)
        return self.store

    # ---------------------------------------------------------------- client messages

    def client_message(self, mtype: bytes, buf, start: int, end: int):
        if mtype == b"S":
            self.in_batch = False
            return None
        if mtype == b"Q" or (mtype == b"P" and not self.in_batch):
            if self.generation is not self.enforcement.generation or (
                    not self.guards and not self.guards_failed and self.tables is not None
                    and self.tables.by_oid):
                if self._refresh() and self.waiting:
                    return HOLD
        tables = self.tables
        if mtype == b"Q":
            if tables is None or not tables.by_oid:
                return None
            return self._query(m.decode_query(buf[start:end]), bytes(buf[start - 5:end]))
        self.in_batch = True
        if mtype == b"P":
            return self._parse(buf, start, end)
        if mtype == b"B":
            return self._bind(buf, start, end)
        if mtype == b"E":
            return self._execute(buf, start, end)
        if mtype == b"D":
            return self._describe(buf, start, end)
        if mtype == b"C":
            kind, name = m.decode_describe_or_close(buf[start:end])
            (self.statements if kind == b"S" else self.portals).pop(name, None)
        return None

    def _describe(self, buf, start, end):
        """Remember what is described now: a pipelined Bind may rebind the (unnamed) portal or
        statement before the server's answer arrives."""
        kind, name = m.decode_describe_or_close(buf[start:end])
        item = Pending(Pending.DESCRIBE)
        item.statements = (kind, (self.statements if kind == b"S" else self.portals).get(name))
        self.session.pending.append(item)
        return [bytes(buf[start - 5:end])]

    # ---- simple protocol

    def _query(self, raw: bytes, original: bytes):
        session = self.session
        sql = raw.decode(session.encoding, "surrogateescape")
        stripped = sql.strip().rstrip(";")
        stmts = lexer.split_statements(sql) if ";" in stripped else [sql]
        works = []
        changed = False
        for stmt in stmts:
            work = self._plan_simple(stmt)
            works.append(work)
            changed = changed or work is not None
        item = Pending(Pending.QUERY, statements=(stmts, works))
        session.pending.append(item)
        if not changed:
            return [original]
        text = ";\n".join(w.sql if w is not None else s for s, w in zip(stmts, works))
        return [m.encode_query(text.encode(session.encoding, "surrogateescape"))]

    def _target(self, text: str, unverified: list | None = None):
        """The protected table a write targets, or None. Writes that can never be checked
        are counted now, or, given `unverified`, listed there to be counted per execution."""
        target = lexer.write_target(text)
        if target is None:
            return None
        if target == lexer.MUST_PARSE:
            for hit in self._hidden_writes(text):
                if unverified is None:
                    self._count_unverified(hit)
                else:
                    unverified.append(hit)
            return None
        schema, name = target
        return self.generation.table_for(self.tables, schema, name)

    def _count_unverified(self, hit) -> None:
        table, reason = hit
        if table is None:
            if self.metrics is not None:
                self.metrics.unparsed()
        else:
            self._unverified(table, reason)

    def _hidden_writes(self, text: str) -> tuple:
        """A WITH statement (or one whose head the lexer cannot read) may write protected
        tables where no guard can go: let it through, but never silently."""
        template = lexer.normalize(text)[0]
        generation, tables = self.generation, self.tables

        def protected_written():
            written = written_tables(template)
            if written is None:
                log.debug("statement not parsed, relayed as is: %.80s", text)
                return ((None, "parse_error"),)
            found = {}
            for schema, name in written:
                table = generation.table_for(tables, schema, name)
                if table is not None:
                    found[table.oid] = (table, "with_clause")
            return tuple(found.values())

        return self.enforcement.cache.get(
            ("written", generation.version, self.database, template), protected_written)

    def _plan(self, text: str, table):
        template, literals = lexer.normalize(text)
        kind = lexer.classify(text).keyword
        planner = plan_insert if kind == "INSERT" else plan_write
        # plans depend on the table as this database has it: key by database too
        plan = self.enforcement.cache.get(
            (self.generation.version, self.database, template),
            lambda: planner(template, table, 0))
        return plan, literals

    def _plan_simple(self, stmt: str):
        table = self._target(stmt)
        if table is None:
            return None
        if not self.guards:
            self._unverified(table, "guards_unavailable")
            return None
        plan, literals = self._plan(stmt, table)
        session = self.session
        scs = session.standard_conforming_strings
        if isinstance(plan, Unverified):
            self._unverified(table, plan.reason)
            return None
        if isinstance(plan, InsertPlan):
            sql = plan.render_simple(literals, scs)
            return StatementWork(table, "insert", sql, plan.extra_returning, plan.client_returning)
        try:
            keys = [tuple(self._literal_key(table, ref, literals) for ref in row)
                    for row in plan.pinned_rows]
        except Unchecked as exc:
            self._unverified(table, exc.reason)
            return None
        reads = self._read_rows(table, keys, plan.checked_columns)
        texts = []
        for row in reads:
            try:
                texts.append(None if row is None else
                             {c: v.as_text(session.encoding) for c, v in row.items()})
            except ValueError:  # a binary value with no known text form: that row unchecked
                self._unverified(table, "binary_read")
                texts.append(None)
        if table.unknown_original == "reject" and any(t is None for t in texts):
            return StatementWork(table, plan.kind, conflicts.reject_sql(table, "not_read"), (),
                                 True)
        if any(t is not None for t in texts):
            self._count_checked(table)
        # rows not read pass unchecked, but what the write leaves counts as read from now on
        sql = plan.render_simple(literals, texts, scs)
        checked_keys = [k for k, t in zip(keys, texts) if t is not None]
        return StatementWork(table, plan.kind, sql, plan.extra_returning, plan.client_returning,
                             checked_keys)

    def _literal_key(self, table, ref, literals):
        if ref.param is not None:
            raise Unchecked("no_key_pin")  # a $n in a simple query: not ours to guess
        text = ref.value_text(literals, (), self.session.standard_conforming_strings)
        if text is None:
            raise Unchecked("no_key_pin")
        return normalize_text_key(table.column_type_oids[ref.column], text)

    def _read_rows(self, table, keys, columns) -> list:
        """Per pinned row, the read values of `columns`, or None (counted) when the session
        has not read that row, or not all of those columns."""
        store = self._store_for(table)
        out = []
        for key in keys:
            row = store.get((table.oid, key))
            if row is None:
                self._unverified(table, "not_read")
                out.append(None)
                continue
            try:
                out.append({c: row[c] for c in columns})
            except KeyError:
                self._unverified(table, "column_not_read")
                out.append(None)
        return out

    def _unverified(self, table, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.unverified(table.qualified_name, reason)
        log.debug("unverified write to %s: %s", table.qualified_name, reason)

    def _count_checked(self, table) -> None:
        if self.metrics is not None:
            self.metrics.checked(table.qualified_name)

    # ---- extended protocol

    def _parse(self, buf, start, end):
        parse = m.decode_parse(buf[start:end])
        text = parse.query.decode(self.session.encoding, "surrogateescape")
        target = None
        unverified: list = []
        if self.tables is not None and self.tables.by_oid:
            table = self._target(text, unverified)
            if table is not None:
                plan, literals = self._plan(text, table)
                if isinstance(plan, Unverified):
                    unverified.append((table, plan.reason))
                else:
                    target = (table, plan, literals)
        info = PreparedInfo(text, parse.param_types, target)
        info.unverified = tuple(unverified)  # counted at each execution, like checked writes
        previous = self.statements.get(parse.name)
        if previous is not None and previous.text == text \
                and previous.param_types == parse.param_types:
            # the same statement parsed again (asyncpg without a statement cache: Parse,
            # Describe, then Parse again with Bind): what its Describe taught still holds
            info.fields = previous.fields
        self.statements[parse.name] = info
        return None

    def _bind(self, buf, start, end):
        bind = m.decode_bind(buf[start:end])
        info = self.statements.get(bind.statement)
        if info is not None and info.unverified:
            for hit in info.unverified:
                self._count_unverified(hit)
        if info is None or info.target is None:
            self.portals[bind.portal] = PortalInfo(info, capture=self._statement_capture(
                info, bind.result_formats), result_formats=bind.result_formats)
            return None
        table, plan, literals = info.target
        if not self.guards:
            self._unverified(table, "guards_unavailable")
            self.portals[bind.portal] = PortalInfo(info)
            return None
        try:
            work, hidden = self._guarded_bind(info, table, plan, literals, bind)
        except Unchecked as exc:
            if exc.reason == "reject":
                return self._reject_bind(bind, table, "not_read")
            self._unverified(table, exc.reason)
            self.portals[bind.portal] = PortalInfo(info, capture=self._statement_capture(
                info, bind.result_formats), result_formats=bind.result_formats)
            return None
        out = []
        if hidden is not None:
            out.append(hidden)
        self.portals[bind.portal] = PortalInfo(info, work=work)
        self.session.pending.append(Pending(Pending.BIND))
        out.append(bind.encode())
        return out

    def _reject_bind(self, bind, table, reason: str):
        """Refuse the write in the server's own error flow: a Bind to a statement that cannot
        exist fails there (skipping to Sync, aborting a transaction block), and the proxy
        tells the client why instead of the server's words."""
        bind.statement = b"optimist_refused_write"
        item = Pending(Pending.BIND)
        item.statements = ("reject", table, reason)
        self.session.pending.append(item)
        self.portals.pop(bind.portal, None)
        return [bind.encode()]

    def _guarded_bind(self, info, table, plan, literals, bind):
        """Bind the client's parameters, plus the read values as extra ones, to the guarded
        form of its statement, prepared once per session under a hidden name. Rows the
        session has not read are left unguarded (the form depends on which: the mask)."""
        n = len(bind.params)
        session = self.session
        scs = session.standard_conforming_strings
        if isinstance(plan, InsertPlan):
            keys, reads, mask = (), [], ("insert",)
        else:
            keys = [tuple(self._param_key(table, ref, literals, bind) for ref in row)
                    for row in plan.pinned_rows]
            reads = self._read_rows(table, keys, plan.checked_columns)
            mask = tuple(r is not None for r in reads)
            if not all(mask) and table.unknown_original == "reject":
                raise Unchecked("reject")
            if any(mask):
                self._count_checked(table)
        rendered = info.rendered.get((n, mask))
        if rendered is None:
            rendered = info.rendered[(n, mask)] = (
                plan.render_extended(literals, n, scs) if mask == ("insert",)
                else plan.render_extended(literals, n, scs, mask))
        extra_values = [reads[row][column] for row, column in rendered.extra_params]
        extra_types = [table.column_type_oids[column] for _, column in rendered.extra_params]
        types = tuple(info.param_types) + (0,) * (n - len(info.param_types))
        hidden_key = (rendered.sql, types + tuple(extra_types))
        name = self.hidden_statements.get(hidden_key)
        parse_bytes = None
        if name is None:
            self.counter += 1
            name = b"optimist_%d" % self.counter
            self.hidden_statements[hidden_key] = name
            parse = m.Parse(name, rendered.sql.encode(session.encoding, "surrogateescape"),
                            hidden_key[1])
            item = Pending(Pending.PARSE)
            item.hidden = True
            item.surface = True
            session.pending.append(item)
            parse_bytes = parse.encode()
        bind.param_formats = [bind.param_format(i) for i in range(n)] + \
            [v.format for v in extra_values]
        bind.params = list(bind.params) + [v.data for v in extra_values]
        extras = plan.extra_returning
        result_formats = list(bind.result_formats)
        if len(result_formats) > 1:
            result_formats += [0] * (len(extras) + (1 if table.notify else 0))
            extra_formats = (0,) * len(extras)
        else:
            extra_formats = ((result_formats[0] if result_formats else 0),) * len(extras)
        bind.result_formats = result_formats
        bind.statement = name
        checked_keys = [k for k, ok in zip(keys, mask) if ok is True]
        work = StatementWork(table, plan.kind, rendered.sql, extras, plan.client_returning,
                             checked_keys, extra_formats)
        return work, parse_bytes

    def _param_key(self, table, ref, literals, bind):
        type_oid = table.column_type_oids[ref.column]
        if ref.param is not None:
            index = ref.param - 1
            if index >= len(bind.params):
                raise Unchecked("no_key_pin")
            return normalize_key(type_oid, bind.param_format(index), bind.params[index],
                                 self.session.encoding)
        return self._literal_key(table, ref, literals)

    def _statement_capture(self, info, result_formats):
        if info is None or info.fields is None or self.tables is None:
            return None
        plan = self._capture_plan(info.fields)
        if plan is None:
            return None
        return plan.with_formats(result_formats, len(info.fields))

    def _execute(self, buf, start, end):
        portal_name, max_rows = m.decode_execute(buf[start:end])
        portal = self.portals.get(portal_name)
        item = Pending(Pending.EXECUTE)
        if portal is not None:
            text = portal.statement.text if portal.statement is not None else ""
            item.statements = (text, portal.work, portal)
            if portal.work is not None:
                item.strip = portal.work.strip
                if portal.work.strip == -1 and max_rows:
                    # the rows are ours, not the client's: a row limit (pgjdbc asks for one
                    # row when it expects none) must not suspend the write half-way
                    self.session.pending.append(item)
                    return [m.encode_execute(portal_name, 0)]
            else:
                item.capture = portal.capture
        self.session.pending.append(item)
        return [bytes(buf[start - 5:end])]

    # ---------------------------------------------------------------- server messages

    def _capture_plan(self, fields):
        tables = self.tables
        return plan_capture(fields, tables.by_oid, tables.attnames)

    def _work_of(self, head: Pending):
        if head.kind == Pending.QUERY:
            if head.statements is None:
                return None
            works = head.statements[1]
            return works[head.index] if head.index < len(works) else None
        if head.kind == Pending.EXECUTE and head.statements is not None:
            return head.statements[1]
        return None

    def row_description(self, head: Pending, buf, start: int, end: int):
        if self.tables is None or not self.tables.by_oid:
            return None
        if head.kind == Pending.DESCRIBE:
            return self._describe_result(head, buf, start, end)
        work = self._work_of(head)
        if work is not None:
            head.strip = work.strip
            if work.strip == -1:
                return b""
            fields = m.decode_row_description(buf[start:end])
            return m.encode_row_description(fields[:-work.strip])
        key = bytes(buf[start:end])
        cache = self.tables.capture_plans
        plan = cache.get(key, False)
        if plan is False:
            plan = self._capture_plan(m.decode_row_description(buf[start:end]))
            if len(cache) < 10000:
                cache[key] = plan
        head.capture = plan
        return None

    def _describe_result(self, head: Pending, buf, start: int, end: int):
        if head.statements is None:
            return None
        kind, described = head.statements
        fields = m.decode_row_description(buf[start:end])
        if kind == b"S":
            info = described
            if info is not None:
                info.fields = fields
                # a Bind pipelined behind this Describe found no fields: capture now
                for item in self.session.pending:
                    if item.kind == Pending.EXECUTE and item.statements is not None:
                        portal = item.statements[2]
                        if portal.statement is info and portal.work is None \
                                and portal.capture is None:
                            portal.capture = item.capture = self._statement_capture(
                                info, portal.result_formats)
            return None
        portal = described
        if portal is None:
            return None
        if portal.work is not None:
            if portal.work.strip == -1:
                return m.NO_DATA
            return m.encode_row_description(fields[:-portal.work.strip])
        if portal.statement is not None and portal.statement.fields is None:
            # later Binds of the statement without a Describe (pgjdbc's S_1, named
            # statements) capture with these fields and their own result formats
            portal.statement.fields = fields
        plan = portal.capture = self._capture_plan(fields)
        if plan is not None:
            # drivers pipeline Describe and Execute: the Execute is already queued
            for item in self.session.pending:
                if item.kind == Pending.EXECUTE and item.statements is not None \
                        and item.statements[2] is portal:
                    item.capture = plan
        return None

    def data_row(self, head: Pending, buf, start: int, end: int):
        values = m.decode_data_row(buf[start:end])
        if head.strip:
            work = self._work_of(head)
            if work is not None and work.extras:
                added = values[-work.added:]
                self._learn(work, added[:len(work.extras)])
            if head.strip == -1:
                return b""
            return m.encode_data_row(values[:-head.strip])
        encoding = self.session.encoding
        blind = self.blind
        for table, key, row in capture_row(head.capture, values, encoding):
            self._store_for(table).put((table.oid, key), row, self.txlog)
            if blind:
                blind.discard((table.oid, key))
        return None

    def _learn(self, work: StatementWork, extras) -> None:
        table = work.table
        types = table.column_type_oids
        formats = work.formats or (0,) * len(extras)
        nkey = len(table.key)
        encoding = self.session.encoding
        key = tuple(normalize_key(types[c], formats[i], extras[i], encoding)
                    for i, c in enumerate(work.extras[:nkey]))
        store = self._store_for(table)
        if work.kind == "delete":
            store.forget((table.oid, key), self.txlog)
            return
        row = {c: ReadValue(formats[nkey + i], types[c], extras[nkey + i])
               for i, c in enumerate(work.extras[nkey:])}
        known = store.get((table.oid, key)) is not None
        store.put((table.oid, key), row, self.txlog)
        if not known and key not in work.keys:
            # known only from this session's own write, never from a read
            blind = self.blind
            blind.add((table.oid, key))
            if len(blind) > 2 * store.limit:  # drop what the store has evicted since
                rows = store.rows
                self.blind = {k for k in blind if k in rows}

    def command_complete(self, head: Pending, tag: bytes):
        if self.tables is None:
            return None
        word = tag.split(b" ", 1)[0]
        work = self._work_of(head)
        if word in _TX_TAGS:
            self._transaction_tag(head, tag, word)
        elif work is not None:
            rows = m.command_rows(tag)
            if work.expected and rows is not None and rows < work.expected:
                # nothing was raised, so every pinned row existed and matched: a trigger or a
                # row-level security policy kept the write from applying (not a conflict)
                if self.metrics is not None:
                    self.metrics.unapplied(work.table.qualified_name)
        if head.kind == Pending.QUERY:
            head.capture = None
            head.strip = 0
        return None

    def _statement_text(self, head: Pending) -> str:
        if head.statements is None:
            return ""
        if head.kind == Pending.QUERY:
            stmts = head.statements[0]
            return stmts[head.index] if head.index < len(stmts) else ""
        if head.kind == Pending.EXECUTE:
            return head.statements[0]
        return ""  # a CommandComplete where none belongs: the server's problem, not ours

    def _transaction_tag(self, head: Pending, tag: bytes, word: bytes) -> None:
        txlog = self.txlog
        if word in (b"BEGIN", b"START"):
            txlog.begin()
        elif word == b"COMMIT" or tag == b"PREPARE TRANSACTION":
            txlog.commit()
        elif word == b"ROLLBACK":
            stmt = lexer.classify(self._statement_text(head)) if head.statements else None
            if stmt is not None and stmt.rollback_to and stmt.savepoint:
                txlog.rollback_to(stmt.savepoint)
                if self.stale:  # the transaction goes on: a retry inside it must not fail again
                    self._forget_stale()
            elif self.session.status == b"I" or stmt is None or not stmt.rollback_to:
                txlog.rollback()
        elif word == b"SAVEPOINT":
            stmt = lexer.classify(self._statement_text(head))
            if stmt.savepoint:
                txlog.savepoint(stmt.savepoint)
        elif word == b"RELEASE":
            stmt = lexer.classify(self._statement_text(head))
            if stmt.savepoint:
                txlog.release(stmt.savepoint)
        elif word == b"DISCARD":
            if tag in (b"DISCARD ALL", b"DISCARD TEMP"):
                self.guards = False
            if tag == b"DISCARD ALL":
                self.hidden_statements.clear()
                self.statements.clear()
        elif word == b"DEALLOCATE" and tag == b"DEALLOCATE ALL":
            self.hidden_statements.clear()
            self.statements.clear()

    def ready(self, head: Pending | None, status: bytes) -> None:
        if status == b"I":
            if self.txlog.open:
                if head is not None and head.failed:
                    self.txlog.rollback()
                else:
                    self.txlog.commit()
            if self.portals:
                self.portals.clear()
            if self.stale:
                self._forget_stale()

    def _forget_stale(self) -> None:
        """A row the session knew only from its own blind writes (never read), and that a
        conflict proved stale, is forgotten once the failed transaction is over (its rollback
        would otherwise restore it): retrying the blind write then runs as the first one did
        (unknown_original decides) instead of failing against the same values forever.
        A row the session did read stays as read: writing it again without a re-read is
        exactly the lost update the check exists to stop."""
        for table, key in self.stale:
            if (table.oid, key) in self.blind:
                self._store_for(table).forget((table.oid, key))
                self.blind.discard((table.oid, key))
        self.stale.clear()

    def _mark_stale(self, conflict) -> None:
        tables = self.tables
        if tables is None or conflict.audit:
            return
        schema, _, name = conflict.table.partition(".")
        table = tables.by_name.get((schema, name))
        if table is None or not isinstance(conflict.key, dict):
            return
        try:
            key = tuple(normalize_text_key(table.column_type_oids[c], _json_text(conflict.key[c]))
                        for c in table.key)
        except KeyError:
            return
        self.stale.append((table, key))

    def error(self, head: Pending | None, buf, start: int, end: int):
        fields = m.decode_fields(buf[start:end])
        if head is not None and head.kind == Pending.BIND and head.statements \
                and head.statements[0] == "reject":
            _, table, reason = head.statements
            message, hint = conflicts.reject_message(table, reason)
            return m.encode_fields(b"E", {
                "S": "ERROR", "V": "ERROR", "C": conflicts.REJECT_SQLSTATE, "M": message,
                "H": hint, "s": table.schema, "t": table.name})
        conflict = conflicts.parse_conflict(fields)
        if conflict is None:
            if fields.get("C") == conflicts.REJECT_SQLSTATE and "W" in fields \
                    and fields.get("M", "").startswith("optimist: write to"):
                del fields["W"]  # the DO block that raised it is our plumbing
                return m.encode_fields(b"E", fields)
            return None
        self._report(conflict)
        return m.encode_fields(b"E", conflicts.strip_internal_context(fields))

    def notice(self, fields):
        conflict = conflicts.parse_conflict(fields)
        if conflict is None:
            return None
        self._report(conflict)
        return b""  # an audit finding is for the operators, not the application

    def _report(self, conflict) -> None:
        self._mark_stale(conflict)
        session = self.session
        if self.metrics is not None:
            self.metrics.conflict(conflict.table, conflict.kind, audit=conflict.audit)
        conflict_log.warning(
            "%s conflict on %s", "would-be" if conflict.audit else "refused", conflict.table,
            extra={"fields": {
                "table": conflict.table, "key": conflict.key, "kind": conflict.kind,
                "audit": conflict.audit, "user": self.role, "database": self.database,
                "application_name": session.parameters.get("application_name",
                                                           session.application_name),
                "client": getattr(session, "peer", ""),
                "columns": sorted(conflict.columns)}})


def _json_text(value) -> str:
    """A key value from a conflict's JSON DETAIL as PostgreSQL's text form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


_TX_TAGS = {b"BEGIN", b"START", b"COMMIT", b"ROLLBACK", b"SAVEPOINT", b"RELEASE", b"PREPARE",
            b"DISCARD", b"DEALLOCATE"}
