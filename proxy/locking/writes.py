"""Checking writes: which statements write a protected table, their cached plans, and the
checked form each execution sends, with the values the session read (simple protocol: as
literals in the text; extended protocol: as extra bound parameters of a hidden statement)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from proxy import conflicts
from proxy.arrays import binary_array_elements, text_array_elements
from proxy.locking.compare import Uncomparable, extended_kind, extended_param, simple_form
from proxy.locking.counting import Unverified, WriteCounts
from proxy.locking.knowledge import Knowledge, RowKey
from proxy.locking.prepared import PreparedRegistry, PreparedStatement, SqlPrepared, WriteTarget
from proxy.rewrite import lexer
from proxy.rewrite.cte import plan_with
from proxy.rewrite.lexer import _skip_noise
from proxy.rewrite.merge import plan_merge
from proxy.rewrite.planner import (
    InsertPlan,
    KeyRef,
    WritePlan,
    plan_insert,
    plan_write,
    written_tables,
)
from proxy.rewrite.planner import Unverified as Unplanned
from proxy.rewrite.render import OWN_CHANGES, Printed, fill_arguments, literal_kind
from proxy.rewrite.scan import scan
from proxy.rewrite.server_code import may_run_server_code, runs_server_code
from proxy.rewrite.sql_prepared import (
    SqlPrepare,
    literal_argument,
    sql_execute_parts,
    sql_prepare_parts,
    sql_prepared_name,
)
from proxy.rules.protected import ProtectedTable
from proxy.session.info import SessionInfo
from proxy.values import ReadValue, normalize_key, normalize_text_key
from proxy.wire import messages as m

if TYPE_CHECKING:
    from proxy.config import Settings
    from proxy.locking.generation import DatabaseTables, Generation
    from proxy.rewrite.cache import RewriteCache


class WriteServices(Protocol):
    """What the write checker uses of the process-wide locking state (LockingService has it):
    declared here so that it needs no import of the service that creates it."""

    settings: Settings
    cache: RewriteCache


log = logging.getLogger("optimist.locking")


class Unchecked(Exception):
    """A write that cannot be checked; the reason is a metric label."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class StatementWork:
    """What the proxy does around one client statement it rewrote."""

    __slots__ = (
        "table",
        "kind",
        "sql",
        "strip",
        "keys",
        "expected",
        "extras",
        "formats",
        "added",
        "learned",
        "forgets",
        "forget_keys",
        "forget_tables",
        "setup",
        "setup_name",
    )

    def __init__(
        self,
        table: ProtectedTable,
        kind: str,
        sql: str,
        extras: tuple[str, ...],
        client_returning: bool,
        keys: Sequence[RowKey] = (),
        formats: tuple[int, ...] | None = None,
        learned: frozenset[str] | None = None,
        forgets: bool = False,
    ) -> None:
        self.table = table
        self.kind = kind
        self.sql = sql
        self.extras = extras
        # trailing columns the proxy added: the captured columns, then a notification
        self.added = len(extras) + (1 if table.notify else 0)
        # trailing columns to remove from results; -1: the client expects no rows at all
        self.strip = self.added if client_returning else (-1 if self.added else 0)
        self.keys = keys
        self.expected = len(set(keys))
        self.formats = formats  # result formats of the extra columns (None: text)
        # the columns a checked row's RETURNING refreshes (None: all, for the session's own
        # INSERT); `keys`: the rows whose check ran, the only ones it may refresh
        self.learned = learned
        # the rows it returns were changed unchecked, their version bumped by the proxy (an
        # unverified upsert): what the session read of them is stale, so it is forgotten
        self.forgets = forgets
        # rows forgotten once the statement completes (a write that returns nothing to learn
        # from, such as a MERGE: see WritePlan.forget_pinned)
        self.forget_keys: Sequence[RowKey] = ()
        # rows it changed are unknown (a bulk write): all the session read of the table is
        # forgotten once it completes, never left at a version the proxy's bump moved on
        self.forget_tables: tuple[ProtectedTable, ...] = ()
        # SQL to run first, in a query of its own (the PREPARE of a hidden SQL statement)
        self.setup: str | None = None
        self.setup_name: bytes | None = None  # the hidden statement `setup` prepares


@dataclass(frozen=True, slots=True)
class CheckedBind:
    """The messages that replace a client's Bind of a checked write."""

    parse: bytes | None  # the hidden statement's Parse, when it must be prepared first
    bind: bytes
    work: StatementWork | None
    # a Close of the hidden statement before its Parse: behind a transaction pooler it is
    # prepared at each Bind, under one name a previous one may have left on the connection
    close: bytes | None = None


# the hidden statement's name behind a transaction pooler (prepared again at each Bind)
TRANSACTION_STATEMENT = b"optimist_tx"


class WriteChecker:
    def __init__(
        self,
        service: WriteServices,
        info: SessionInfo,
        knowledge: Knowledge,
        registry: PreparedRegistry,
        counts: WriteCounts,
    ) -> None:
        self.service = service
        self.info = info
        self.knowledge = knowledge
        self.registry = registry
        self.counts = counts

    # ---------------------------------------------------------------- which table, which plan

    def examine(
        self, generation: Any, tables: Any, text: str
    ) -> tuple[ProtectedTable | None, tuple[Unverified, ...]]:
        """The protected table a statement writes at its top level (to be checked), and the
        writes it makes that can never be checked (counted at each execution)."""
        target = lexer.write_target(text)  # a regex: most statements need no more
        table = None
        hits: tuple[Unverified, ...] = ()
        if target == lexer.MUST_PARSE:
            table, hits, _ = self._hidden_writes(generation, tables, text)
        elif target is not None:
            table = generation.table_for(tables, target[0], target[1])
        else:
            named = _SQL_PREPARED.match(text) or _SQL_PREPARED.match(_skip_noise(text))
            if named is not None:
                return None, self._sql_prepared(generation, tables, text, named.group(1).upper())
        if may_run_server_code(text) and self.server_code(text):
            hits += ((None, "server_code"),)
        return table, hits

    def target(
        self,
        generation: Generation,
        tables: DatabaseTables,
        text: str,
        unverified: list[Unverified] | None = None,
    ) -> ProtectedTable | None:
        """The protected table a write targets, or None. Writes that can never be checked
        are counted now, or, given `unverified`, listed there to be counted per execution."""
        table, hits = self.examine(generation, tables, text)
        for hit in hits:
            if unverified is None:
                self.counts.unverified_hit(hit)
            else:
                unverified.append(hit)
        return table

    def server_code(self, text: str) -> bool:
        """Whether the statement runs code the proxy cannot see into (cached by template)."""
        scs = self.info.standard_conforming_strings
        found = scan(text, scs)
        return self.service.cache.get(
            ("server_code", found.keyword, found.template),
            lambda: runs_server_code(found.keyword, found.template, scs),
        )

    def _sql_prepared(
        self, generation: Any, tables: Any, text: str, keyword: str
    ) -> tuple[Unverified, ...]:
        """SQL-level PREPARE / EXECUTE / DEALLOCATE: a prepared write runs at EXECUTE, counted
        there (checked by `sql_execute`, else `sql_prepare`)."""
        scs = self.info.standard_conforming_strings
        registry = self.registry
        if keyword == "EXECUTE":
            name = sql_prepared_name(text, scs)
            return registry.sql_hits(name) if name is not None else ()
        if keyword == "DEALLOCATE":
            name = sql_prepared_name(text, scs)
            if name is None or name == "all":
                registry.sql_prepared.clear()
                registry.sql_pending.clear()
            else:
                registry.sql_prepared.pop(name, None)
                registry.sql_pending[name] = None
            return ()
        found = sql_prepare_parts(text, scs)
        if found is not None:  # known to the EXECUTEs of this request, kept once completed
            registry.sql_pending[found.name] = self._sql_statement(generation, tables, found)
        return ()  # PREPARE itself writes nothing

    def _sql_statement(self, generation: Any, tables: Any, found: SqlPrepare) -> SqlPrepared | None:
        """A PREPAREd body planned as a write with its key pinned by $n, as a Parse is."""
        table, hits = self.examine(generation, tables, found.body)
        inner = [(t, "sql_prepare" if t is not None else reason) for t, reason in hits]
        target = None
        if table is not None:
            plan, literals = self.plan(generation, tables, found.body, table)
            if isinstance(plan, WritePlan) or (
                isinstance(plan, InsertPlan) and plan.on_conflict != "update"
            ):
                target = WriteTarget(table, plan, literals)
            else:
                inner.insert(0, (table, "sql_prepare"))
        if not inner and target is None:
            return None
        unique = {(t.oid if t is not None else None, r): (t, r) for t, r in inner}
        return SqlPrepared(tuple(unique.values()), target, found.types, found.n_params)

    def sql_prepare_done(self, generation: Any, tables: Any, text: str) -> None:
        """A PREPARE completed: its statement now exists on the server (PREPARE is not
        transactional: a rollback keeps it)."""
        found = sql_prepare_parts(text, self.info.standard_conforming_strings)
        if found is None:
            return
        statement = None
        if tables is not None and tables.by_oid:
            statement = self._sql_statement(generation, tables, found)
        if statement is None:
            self.registry.sql_prepared.pop(found.name, None)
        else:
            self.registry.sql_prepared[found.name] = statement

    def sql_execute(
        self, generation: Any, tables: Any, guards: bool, stmt: str
    ) -> StatementWork | None | bool:
        """`EXECUTE p(args)` of a write prepared with SQL PREPARE, in a simple query: run as
        `EXECUTE optimist_N(args, <read values>)`, a hidden SQL statement of the checked form
        (prepared first, once per form). Each EXECUTE runs a checked form, whose rows not
        read pass unchecked (counted), as a Bind of a Parse does; False: not such an EXECUTE
        (counted as `sql_prepare` by `simple`)."""
        scs = self.info.standard_conforming_strings
        parts = sql_execute_parts(stmt, scs)
        statement = self.registry.sql_statement(parts.name) if parts is not None else None
        if parts is None or statement is None or statement.target is None:
            return False
        if len(parts.args) != statement.n_params or self.info.status == b"E":
            return False  # the server refuses it as written
        if self.service.settings.pooler_mode == "transaction":
            # the hidden statement would be prepared on one pooled server connection and run
            # on another (as the client's own PREPARE is): counted `sql_prepare`, run as written
            return False
        for hit in statement.unverified:
            self.counts.unverified_hit(hit)
        refused = self.refusal(tables, statement.unverified, stmt)
        if refused is not None:
            return refusal_work(refused[0], "refused", refused[1], "unverified")
        table, plan = statement.target.table, statement.target.plan
        if not guards:
            return self._unchecked(table, "guards_unavailable")
        literals, args = statement.target.literals, parts.args
        forms: list[dict[str, str | Printed | None] | None] = []
        keys: list[RowKey] = []
        missing = RowReasons()
        if isinstance(plan, InsertPlan):
            self.counts.checked(table)  # a new row overwrites nothing
            mask: tuple[bool, ...] = ()
            rendered = plan.render_extended(literals, len(args), scs)
        else:
            elements: list[str] = []
            key_unknown = False
            try:
                keys, elements = self._execute_keys(table, plan, literals, args)
            except Unchecked as exc:
                missing.reasons.append(exc.reason)  # no row checked; the version still bumped
                key_unknown = True
            reads = self.knowledge.read_rows(table, keys, plan.checked_columns, missing)
            for row in reads:
                try:
                    forms.append(
                        None
                        if row is None
                        else {c: simple_form(v, self.info.encoding) for c, v in row.items()}
                    )
                except Uncomparable as exc:
                    missing.unverified(table, exc.reason)
                    forms.append(None)
            if plan.array_key is not None:  # each read row's key hole: its element
                for form, element in zip(forms, elements):
                    if form is not None:
                        form[table.key[0]] = element
            mask = tuple(f is not None for f in forms)
            if not keys and plan.array_key is None:
                mask = (False,) * len(plan.pinned_rows)
            kinds = {
                (i, c): literal_kind(v)
                for i, form in enumerate(forms)
                for c, v in (form or {}).items()
            }
            if missing.reasons:
                refusal = self._unchecked(table, _reason(plan, missing), plan.kind)
                if refusal is not None:
                    return refusal
            else:
                self.counts.checked(table)
            rendered = plan.render_extended(literals, len(args), scs, mask, kinds)
        extra = fill_arguments(
            rendered.extra_params,
            forms,
            table.column_types,
            scs,
            conflicts.guard_schema_sql(table.guard_schema),
        )
        declared = "(" + ", ".join(statement.types) + ")" if statement.types else ""
        prepare = f" AS {rendered.sql}"
        name, new = self.registry.hidden_name((f"PREPARE{declared}{prepare}", ()))
        hidden = name.decode()
        all_args = ", ".join((*args, *extra))
        sql = f"EXECUTE {hidden}({all_args})" if all_args else f"EXECUTE {hidden}"
        setup = f"PREPARE {hidden}{declared}{prepare}" if new else None
        if isinstance(plan, InsertPlan):
            work = insert_work(table, sql, plan)
        else:
            work = simple_work(table, plan, sql, keys, [k for k, ok in zip(keys, mask) if ok])
            if key_unknown:  # it bumps a row it cannot name: what was read of it may be stale
                work.forget_tables = (table,)
        work.setup = setup
        work.setup_name = name if new else None
        return work

    def _execute_keys(
        self, table: ProtectedTable, plan: WritePlan, literals: Sequence[str], args: Sequence[str]
    ) -> tuple[list[RowKey], list[str]]:
        """The rows an EXECUTE pins (and, for `= ANY(<array>)`, their elements): a $n key takes the EXECUTE's argument, known when it is a
        literal (any other expression, `sql_prepare`: its value is the server's)."""
        scs = self.info.standard_conforming_strings

        def text_of(ref: KeyRef) -> str | None:
            if ref.param is None:
                return ref.value_text(literals, (), scs)
            value = literal_argument(args[ref.param - 1], scs) if ref.param <= len(args) else None
            if value is None:
                raise Unchecked("sql_prepare")
            return value

        if plan.array_key is not None:
            text = text_of(plan.array_key)
            elements = None if text is None else text_array_elements(text)
            if elements is None or len(elements) > _MAX_ARRAY_KEYS:
                raise Unchecked("key_array")
            oid = table.column_type_oids[table.key[0]]
            texts = [e for e in elements if e is not None]
            return [(normalize_text_key(oid, e),) for e in texts], texts
        keys = []
        for row in plan.pinned_rows:
            key = []
            for ref in row:
                text = text_of(ref)
                if text is None:
                    raise Unchecked("no_key_pin")
                key.append(normalize_text_key(table.column_type_oids[ref.column], text))
            keys.append(tuple(key))
        return keys, []

    def refusal(
        self, tables: Any, hits: Sequence[Unverified], text: str
    ) -> tuple[ProtectedTable, str] | None:
        """The table whose rules refuse one of these unverified writes (`unverified:
        reject`), and why; None when they may pass."""
        for table, reason in hits:
            if table is not None:
                if table.unverified == "reject":
                    return table, reason
                continue
            for strict in tables.by_oid.values():
                if strict.unverified != "reject":
                    continue
                # server code may write any table; a statement the parser cannot read is
                # refused only when it names the strict table
                if reason == "server_code" or strict.name.lower() in text.lower():
                    return strict, reason
        return None

    def _hidden_writes(
        self, generation: Generation, tables: DatabaseTables, text: str
    ) -> tuple[ProtectedTable | None, tuple[Unverified, ...], WritePlan | None]:
        """A WITH statement (or one whose head the lexer cannot read) may write protected
        tables: one write checked where it can be (proxy.rewrite.cte: the table and the plan),
        every other write of a protected table let through, but never silently."""
        template = scan(text, self.info.standard_conforming_strings).template

        def protected_written() -> tuple[Any, tuple[Unverified, ...], WritePlan | None]:
            planned = plan_with(template, lambda s, n: generation.table_for(tables, s, n))
            if planned is not None:  # each write counted once: the plan's, or with_clause
                hits = tuple((t, "with_clause") for t in planned.unverified)
                return planned.table, hits, planned.plan
            written = written_tables(template)
            if written is None:
                log.debug("statement not parsed, relayed as is: %.80s", text)
                return None, ((None, "parse_error"),), None
            found: dict[int, Unverified] = {}
            for schema, name in written:
                table = generation.table_for(tables, schema, name)
                if table is not None:
                    found[table.oid] = (table, "with_clause")
            return None, tuple(found.values()), None

        return self.service.cache.get(
            ("written", generation.version, tables.cache_key, template), protected_written
        )

    def plan(
        self, generation: Generation, tables: DatabaseTables, text: str, table: ProtectedTable
    ) -> tuple[Any, tuple[str, ...]]:
        found = scan(text, self.info.standard_conforming_strings)
        template = found.template
        if found.target == lexer.MUST_PARSE:  # a WITH statement: planned with its writes
            with_plan = self._hidden_writes(generation, tables, text)[2]
            return (with_plan or Unplanned("with_clause")), found.literals
        if found.keyword == "MERGE" and _MERGE_OVERWRITES.search(template) is None:
            return NOTHING_TO_CHECK, found.literals  # a MERGE that only inserts overwrites nothing
        planner = {"INSERT": plan_insert, "MERGE": plan_merge}.get(found.keyword, plan_write)
        # plans depend on the table as this database has it (learned again after DDL)
        plan = self.service.cache.get(
            (generation.version, tables.cache_key, template), lambda: planner(template, table, 0)
        )
        if isinstance(plan, Unplanned) and plan.reason == "no_key_pin":
            if _KEY_ARRAY.search(template):
                return Unplanned("key_array"), found.literals
        return plan, found.literals

    # ---------------------------------------------------------------- simple protocol

    def simple(self, generation: Any, tables: Any, guards: bool, stmt: str) -> StatementWork | None:
        """The checked form of one statement of a simple Query, or None to run it as written.
        Each write of a protected table is counted once: checked, or unverified{reason}."""
        table, hits = self.examine(generation, tables, stmt)
        if hits and hits[0][1] == "sql_prepare" and table is None:
            work = self.sql_execute(generation, tables, guards, stmt)
            if work is not False:
                return work  # type: ignore[return-value]  # a StatementWork or None
        for hit in hits:
            self.counts.unverified_hit(hit)
        refused = self.refusal(tables, hits, stmt)
        if refused is not None:
            return refusal_work(refused[0], "refused", refused[1], "unverified")
        if table is None:
            return None
        if not guards:
            return self._unchecked(table, "guards_unavailable")
        plan, literals = self.plan(generation, tables, stmt, table)
        if plan is NOTHING_TO_CHECK:
            self.counts.checked(table)
            return None
        if not isinstance(plan, (WritePlan, InsertPlan)):
            return self._unchecked(table, plan.reason)
        scs = self.info.standard_conforming_strings
        if isinstance(plan, InsertPlan):
            if plan.on_conflict == "update":
                refusal = self._unchecked(table, "upsert")
                if refusal is not None:
                    return refusal
            else:
                self.counts.checked(table)  # a new row overwrites nothing
            sql = plan.render_simple(literals, scs)
            return insert_work(table, sql, plan)
        elements: list[str] = []
        try:
            if plan.array_key is not None:
                elements = self._array_elements(plan.array_key, literals, None)
                keys = [
                    (normalize_text_key(table.column_type_oids[table.key[0]], e),) for e in elements
                ]
            else:
                keys = [
                    tuple(self._literal_key(table, ref, literals) for ref in row)
                    for row in plan.pinned_rows
                ]
        except Unchecked as exc:
            return self._unchecked(table, exc.reason)
        missing = RowReasons(plan.unpinned)  # a bulk UPDATE: why no row can be checked
        reads = self.knowledge.read_rows(table, keys, plan.checked_columns, missing)
        encoding = self.info.encoding
        texts: list[dict[str, str | Printed | None] | None] = []
        for i, row in enumerate(reads):
            try:
                texts.append(
                    None if row is None else {c: simple_form(v, encoding) for c, v in row.items()}
                )
            except Uncomparable as exc:  # compared in no exact way: that row unchecked
                missing.unverified(table, exc.reason)
                texts.append(None)
            if elements and texts[-1] is not None:
                texts[-1][table.key[0]] = elements[i]  # the key's hole
            if texts[-1] is not None:  # what the session vouches for if the row is its own
                texts[-1][OWN_CHANGES] = self.knowledge.own_flag(
                    table, keys[i], plan.checked_columns
                )
        if missing.reasons:
            refusal = self._unchecked(table, _reason(plan, missing), plan.kind)
            if refusal is not None:
                return refusal
        else:
            self.counts.checked(table)
        # rows not read pass unchecked (counted), and stay unknown: a write is not a read
        sql = plan.render_simple(literals, texts, scs)
        checked_keys = [k for k, t in zip(keys, texts) if t is not None]
        return simple_work(table, plan, sql, keys, checked_keys)

    def _unchecked(
        self, table: ProtectedTable, reason: str, kind: str = "update"
    ) -> StatementWork | None:
        """Count a write that cannot be (wholly) checked; the refusal in its place when the
        table's rules will not let it through."""
        self.counts.unverified(table, reason)
        setting = refusing_setting(table, reason)
        return None if setting is None else refusal_work(table, kind, reason, setting)

    def _literal_key(self, table: ProtectedTable, ref: Any, literals: Sequence[str]) -> Any:
        if ref.param is not None:
            raise Unchecked("no_key_pin")  # a $n in a simple query: not ours to guess
        text = ref.value_text(literals, (), self.info.standard_conforming_strings)
        if text is None:
            raise Unchecked("no_key_pin")
        return normalize_text_key(table.column_type_oids[ref.column], text)

    # ---------------------------------------------------------------- extended protocol

    def prepared(
        self, generation: Generation, tables: DatabaseTables, parse: m.Parse
    ) -> PreparedStatement:
        text = parse.query.decode(self.info.encoding, "surrogateescape")
        target = creates = None
        unverified: list[Unverified] = []
        plain_key = (text, self.info.standard_conforming_strings)
        if tables is not None and plain_key in tables.plain_statements:
            # classified before under these tables (a SELECT parsed again): nothing to check
            return PreparedStatement(text, tuple(parse.param_types), None)
        if tables is not None and tables.by_oid:
            table = self.target(generation, tables, text, unverified)
            if table is not None:
                plan, literals = self.plan(generation, tables, text, table)
                if plan is NOTHING_TO_CHECK:
                    creates = table
                elif isinstance(plan, (WritePlan, InsertPlan)):
                    target = WriteTarget(table, plan, literals)
                else:
                    unverified.append((table, plan.reason))
        executes = None
        head = _SQL_PREPARED.match(text)
        if head is not None and head.group(1).upper() == "EXECUTE":
            # what it runs is known at each Bind (a DEALLOCATE / PREPARE may come between)
            executes = sql_prepared_name(text, self.info.standard_conforming_strings)
            unverified = [hit for hit in unverified if hit[1] == "server_code"]
        elif (
            target is None
            and creates is None
            and not unverified
            and tables is not None
            # an SQL PREPARE / DEALLOCATE changes the registry at each Parse: never cached
            and head is None
            and _SQL_PREPARED.match(_skip_noise(text)) is None
            and len(tables.plain_statements) < _PLAIN_STATEMENTS_MAX
        ):
            tables.plain_statements.add(plain_key)
        # writes are counted at each execution: checked or unverified{reason}
        return PreparedStatement(
            text,
            tuple(parse.param_types),
            target,
            tuple(unverified),
            creates=creates,
            executes=executes,
        )

    def bind_unverified(
        self, tables: Any, info: PreparedStatement, bind: m.Bind
    ) -> CheckedBind | None:
        """Count what an execution of the statement writes unchecked (and an INSERT-only
        MERGE as checked); the refusal in its place when the rules will not let it pass."""
        if info.creates is not None:
            self.counts.checked(info.creates)
        hits = info.unverified
        if info.executes is not None:
            hits += self.registry.sql_hits(info.executes)
        for hit in hits:
            self.counts.unverified_hit(hit)
        refused = self.refusal(tables, hits, info.text)
        if refused is None:
            return None
        return self.refused_bind(bind, refused[0], refused[1], "unverified")

    def unchecked_bind(
        self, table: ProtectedTable, reason: str, bind: m.Bind
    ) -> CheckedBind | None:
        """Count a write bound unchecked; the refusal when the table's rules want one."""
        self.counts.unverified(table, reason)
        setting = refusing_setting(table, reason)
        return None if setting is None else self.refused_bind(bind, table, reason, setting)

    def checked_bind(
        self, info: PreparedStatement, target: WriteTarget, bind: m.Bind
    ) -> CheckedBind:
        """Bind the client's parameters, plus the read values as extra ones, to the checked
        form of its statement, prepared once per session under a hidden name. Rows the
        session has not read are left unguarded (the form depends on which: the mask)."""
        table, plan, literals = target.table, target.plan, target.literals
        n = len(bind.params)
        scs = self.info.standard_conforming_strings
        reads: list[dict[str, ReadValue] | None]
        mask: tuple[str] | tuple[bool, ...]  # ("insert",), or which pinned rows were read
        kinds: dict[tuple[int, str], str] = {}  # how each read is compared (render.BY_VALUE...)
        own_flags: tuple[str | None, ...] = ()
        if isinstance(plan, InsertPlan):
            keys: list[RowKey] = []
            reads, mask = [], ("insert",)
            if plan.on_conflict == "update":
                refusal = self.unchecked_bind(table, "upsert", bind)
                if refusal is not None:
                    return refusal
            else:
                self.counts.checked(table)  # a new row overwrites nothing
        else:
            if plan.array_key is not None:
                elements = self._array_elements(plan.array_key, literals, bind)
                key_oid = table.column_type_oids[table.key[0]]
                keys = [(normalize_text_key(key_oid, e),) for e in elements]
            else:
                keys = [
                    tuple(self._param_key(table, ref, literals, bind) for ref in row)
                    for row in plan.pinned_rows
                ]
            missing = RowReasons(plan.unpinned)
            reads = self.knowledge.read_rows(table, keys, plan.checked_columns, missing)
            if plan.array_key is not None:  # each read row's key hole: its element, as text
                encoded = [e.encode(self.info.encoding, "surrogateescape") for e in elements]
                reads = [
                    None if r is None else {**r, table.key[0]: ReadValue(0, key_oid, data)}
                    for r, data in zip(reads, encoded)
                ]
            for i, row in enumerate(reads):
                try:
                    for c, v in (row or {}).items():
                        kinds[(i, c)] = extended_kind(v)
                except Uncomparable as exc:  # compared in no exact way: that row unchecked
                    missing.unverified(table, exc.reason)
                    reads[i] = None
            mask = tuple(r is not None for r in reads)
            # what the session vouches for if a row version is its own: part of the form, a
            # literal (proxy.rewrite.render.Own), and of its shape below
            own = tuple(
                None if r is None else self.knowledge.own_flag(table, k, plan.checked_columns)
                for r, k in zip(reads, keys)
            )
            for i, flag in enumerate(own):
                if flag is not None:
                    kinds[(i, OWN_CHANGES)] = flag
                    own_flags = own
            if missing.reasons:
                refusal = self.unchecked_bind(table, _reason(plan, missing), bind)
                if refusal is not None:
                    return refusal
            else:
                self.counts.checked(table)
        # the form depends on which rows are checked and how each read is compared
        shape: tuple[object, ...] = (n, mask, tuple(kinds.values())) if kinds else (n, mask)
        if own_flags:
            shape += (own_flags,)
        rendered = info.rendered.get(shape)
        if rendered is None:
            if len(info.rendered) >= _RENDERED_FORMS:  # arrays of every length: stay bounded
                info.rendered.clear()
            rendered = info.rendered[shape] = (
                plan.render_extended(literals, n, scs)
                if mask == ("insert",)
                else plan.render_extended(literals, n, scs, mask, kinds)
            )
        encoding = self.info.encoding
        extra = [
            extended_param(reads[row][column], role, encoding)
            for row, column, role in rendered.extra_params
        ]
        types = tuple(info.param_types) + (0,) * (n - len(info.param_types))
        name, parse, close = self._hidden_statement(
            rendered.sql, types + tuple(t for t, _, _ in extra)
        )
        param_formats = [bind.param_format(i) for i in range(n)] + [f for _, f, _ in extra]
        params = list(bind.params) + [d for _, _, d in extra]
        extras = (
            plan.returned_columns(any(m_ is True for m_ in mask))
            if isinstance(plan, WritePlan)
            else plan.extra_returning
        )
        result_formats = list(bind.result_formats)
        if len(result_formats) > 1:
            # nothing added to a write that forgets (a MERGE, a WITH): no notification either
            notifies = table.notify and not (isinstance(plan, WritePlan) and plan.forget_pinned)
            result_formats += [0] * (len(extras) + (1 if notifies else 0))
            extra_formats = (0,) * len(extras)
        else:
            extra_formats = ((result_formats[0] if result_formats else 0),) * len(extras)
        checked_keys = [k for k, ok in zip(keys, mask) if ok is True]
        work = StatementWork(
            table,
            plan.kind,
            rendered.sql,
            extras,
            plan.client_returning,
            checked_keys,
            extra_formats,
            learned=(
                plan.learned_columns
                if isinstance(plan, WritePlan)
                else (frozenset() if plan.on_conflict == "update" else None)
            ),
            forgets=isinstance(plan, InsertPlan) and plan.on_conflict == "update",
        )
        if isinstance(plan, WritePlan):
            _forgetting(work, plan, keys)
        out = m.Bind(bind.portal, name, param_formats, params, result_formats)
        return CheckedBind(parse, out.encode(), work, close)

    def refused_bind(
        self,
        bind: m.Bind,
        table: ProtectedTable,
        reason: str,
        setting: str = "unknown_original",
    ) -> CheckedBind:
        """Bind the client's portal to the refusal statement: its Execute raises the refusal
        in the server's own error flow, as the simple protocol's does."""
        sql = conflicts.reject_sql(table, reason, setting)
        name, parse, close = self._hidden_statement(sql, ())
        return CheckedBind(parse, m.Bind(bind.portal, name, [], [], []).encode(), None, close)

    def _hidden_statement(
        self, sql: str, types: tuple[int, ...]
    ) -> tuple[bytes, bytes | None, bytes | None]:
        """(name, its Parse or None when prepared already, a Close to send before the Parse)."""
        if self.service.settings.pooler_mode == "transaction":
            # a statement prepared once would live on one server connection only: prepare it
            # right before its Bind (one batch up to Sync, so one server connection)
            encoded = sql.encode(self.info.encoding, "surrogateescape")
            fresh = m.Parse(TRANSACTION_STATEMENT, encoded, types).encode()
            return TRANSACTION_STATEMENT, fresh, m.encode_close(b"S", TRANSACTION_STATEMENT)
        name, new = self.registry.hidden_name((sql, types))
        if not new:
            return name, None, None
        parse = m.Parse(name, sql.encode(self.info.encoding, "surrogateescape"), types)
        return name, parse.encode(), None

    def _array_elements(
        self, ref: KeyRef, literals: Sequence[str], bind: m.Bind | None
    ) -> list[str]:
        """The keys `= ANY(<array>)` pins, as text (NULLs pin nothing); Unchecked("key_array")
        when the array cannot be read (binary elements of an unknown type, a malformed or
        decorated literal, too many elements)."""
        elements: list[str | None] | None
        if ref.param is not None:
            if bind is None:
                raise Unchecked("no_key_pin")  # a $n in a simple query: not ours to guess
            index = ref.param - 1
            data = bind.params[index] if index < len(bind.params) else None
            if data is None:
                raise Unchecked("key_array")
            if bind.param_format(index) == 1:
                elements = binary_array_elements(data)
            else:
                elements = text_array_elements(data.decode(self.info.encoding, "surrogateescape"))
        else:
            text = ref.value_text(literals, (), self.info.standard_conforming_strings)
            elements = None if text is None else text_array_elements(text)
        if elements is None or len(elements) > _MAX_ARRAY_KEYS:
            raise Unchecked("key_array")
        return [e for e in elements if e is not None]

    def _param_key(
        self, table: ProtectedTable, ref: Any, literals: Sequence[str], bind: m.Bind
    ) -> Any:
        type_oid = table.column_type_oids[ref.column]
        if ref.param is not None:
            index = ref.param - 1
            if index >= len(bind.params):
                raise Unchecked("no_key_pin")
            return normalize_key(
                type_oid, bind.param_format(index), bind.params[index], self.info.encoding
            )
        return self._literal_key(table, ref, literals)


def refusal_work(
    table: ProtectedTable, kind: str, reason: str, setting: str = "unknown_original"
) -> StatementWork:
    """The simple protocol's refusal: the statement is replaced by one that raises why."""
    return StatementWork(table, kind, conflicts.reject_sql(table, reason, setting), (), True)


def refusing_setting(table: ProtectedTable, reason: str) -> str | None:
    """The rule setting that refuses an unverified write of `table` for `reason`, if any."""
    if table.unverified == "reject":
        return "unverified"
    if table.unknown_original == "reject" and reason in _NOT_READ:
        return "unknown_original"
    return None


class RowReasons:
    """Collects why pinned rows cannot be checked, so that the statement is counted once."""

    def __init__(self, first: str | None = None) -> None:
        self.reasons: list[str] = [] if first is None else [first]

    def unverified(self, table: ProtectedTable, reason: str) -> None:
        self.reasons.append(reason)


def _reason(plan: WritePlan, missing: RowReasons) -> str:
    """Why a write is not (wholly) checked: an upsert of a row never read is an `upsert`."""
    reason = missing.reasons[0]
    return "upsert" if plan.upsert and reason == "not_read" else reason


class _NothingToCheck:
    """A write that only creates rows (an INSERT-only MERGE): counted checked."""


NOTHING_TO_CHECK = _NothingToCheck()
# an `= ANY(<array>)` guard has a branch per element: past this many, the write is unverified
_MAX_ARRAY_KEYS = 1000
_RENDERED_FORMS = 64
_NOT_READ = frozenset({"not_read", "column_not_read", "binary_read", "settings_unknown"})
_MERGE_OVERWRITES = re.compile(r"\bthen\s+(?:update|delete)\b", re.I)
_KEY_ARRAY = re.compile(r"=\s*(?:any|some)\s*\(", re.I)
# SQL-level prepared statements (the head of PREPARE / EXECUTE / DEALLOCATE)
# bounds DatabaseTables.plain_statements (texts with literals inlined are all different)
_PLAIN_STATEMENTS_MAX = 10000
_SQL_PREPARED = re.compile(r"\s*(prepare|execute|deallocate)(?![\w$])", re.I)


def simple_work(
    table: ProtectedTable,
    plan: WritePlan,
    sql: str,
    keys: Sequence[RowKey],
    checked_keys: Sequence[RowKey],
) -> StatementWork:
    """The work of a checked form sent as SQL text (a simple query, an SQL EXECUTE): what its
    RETURNING refreshes (only the rows whose check ran) and what it forgets."""
    work = StatementWork(
        table,
        plan.kind,
        sql,
        plan.returned_columns(bool(checked_keys)),
        plan.client_returning,
        list(checked_keys),
        learned=plan.learned_columns,
    )
    return _forgetting(work, plan, keys)


def _forgetting(work: StatementWork, plan: WritePlan, keys: Sequence[RowKey]) -> StatementWork:
    """A write no RETURNING can teach about (WritePlan.forget_pinned): forget its pinned rows
    once it completes; it may apply to fewer rows than pinned without anything amiss (a MERGE
    whose WHEN conditions do not hold), so that is not counted unapplied."""
    if plan.forget_pinned:
        work.forget_keys = keys
        work.expected = 0
        # nothing was added to its result (no RETURNING, so no notification either): its
        # rows, if any, are the client's as they come (a WITH statement's SELECT)
        work.added = work.strip = 0
    work.forget_tables = plan.forgets_tables
    return work


def insert_work(table: ProtectedTable, sql: str, plan: InsertPlan) -> StatementWork:
    # an upsert's DO UPDATE may return an existing row the session never read: learn nothing
    learned: frozenset[str] | None = frozenset() if plan.on_conflict == "update" else None
    return StatementWork(
        table,
        "insert",
        sql,
        plan.extra_returning,
        plan.client_returning,
        learned=learned,
        forgets=plan.on_conflict == "update",
    )
