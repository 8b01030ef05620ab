"""Checking writes: which statements write a protected table, their cached plans, and the
checked form each execution sends, with the values the session read (simple protocol: as
literals in the text; extended protocol: as extra bound parameters of a hidden statement)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy import conflicts
from proxy.locking.counting import Unverified, WriteCounts
from proxy.locking.knowledge import Knowledge, RowKey
from proxy.locking.prepared import PreparedRegistry, PreparedStatement, WriteTarget
from proxy.rewrite import lexer
from proxy.rewrite.planner import InsertPlan, WritePlan, plan_insert, plan_write, written_tables
from proxy.rewrite.scan import scan
from proxy.rules.protected import ProtectedTable
from proxy.session.info import SessionInfo
from proxy.values import ReadValue, normalize_key, normalize_text_key
from proxy.wire import messages as m

if TYPE_CHECKING:
    from proxy.locking.service import DatabaseTables, Generation, LockingService

log = logging.getLogger("optimist.locking")


class Unchecked(Exception):
    """A write that cannot be checked; the reason is a metric label."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class StatementWork:
    """What the proxy does around one client statement it rewrote."""

    __slots__ = ("table", "kind", "sql", "strip", "keys", "expected", "extras", "formats", "added")

    def __init__(
        self,
        table: ProtectedTable,
        kind: str,
        sql: str,
        extras: tuple[str, ...],
        client_returning: bool,
        keys: Sequence[RowKey] = (),
        formats: tuple[int, ...] | None = None,
    ) -> None:
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


@dataclass(frozen=True, slots=True)
class CheckedBind:
    """The messages that replace a client's Bind of a checked write."""

    parse: bytes | None  # the hidden statement's Parse, when it must be prepared first
    bind: bytes
    work: StatementWork | None


class WriteChecker:
    def __init__(
        self,
        service: LockingService,
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

    def target(
        self,
        generation: Generation,
        tables: DatabaseTables,
        text: str,
        unverified: list[Unverified] | None = None,
    ) -> ProtectedTable | None:
        """The protected table a write targets, or None. Writes that can never be checked
        are counted now, or, given `unverified`, listed there to be counted per execution."""
        target = lexer.write_target(text)  # a regex: most statements need no more
        if target is None:
            return None
        if target == lexer.MUST_PARSE:
            for hit in self._hidden_writes(generation, tables, text):
                if unverified is None:
                    self.counts.unverified_hit(hit)
                else:
                    unverified.append(hit)
            return None
        schema, name = target
        return generation.table_for(tables, schema, name)

    def _hidden_writes(
        self, generation: Generation, tables: DatabaseTables, text: str
    ) -> tuple[Unverified, ...]:
        """A WITH statement (or one whose head the lexer cannot read) may write protected
        tables where no guard can go: let it through, but never silently."""
        template = scan(text, self.info.standard_conforming_strings).template

        def protected_written() -> tuple[Unverified, ...]:
            written = written_tables(template)
            if written is None:
                log.debug("statement not parsed, relayed as is: %.80s", text)
                return ((None, "parse_error"),)
            found: dict[int, Unverified] = {}
            for schema, name in written:
                table = generation.table_for(tables, schema, name)
                if table is not None:
                    found[table.oid] = (table, "with_clause")
            return tuple(found.values())

        return self.service.cache.get(
            ("written", generation.version, self.info.database, template), protected_written
        )

    def plan(
        self, generation: Generation, text: str, table: ProtectedTable
    ) -> tuple[Any, tuple[str, ...]]:
        found = scan(text, self.info.standard_conforming_strings)
        template = found.template
        planner = plan_insert if found.keyword == "INSERT" else plan_write
        # plans depend on the table as this database has it: key by database too
        plan = self.service.cache.get(
            (generation.version, self.info.database, template), lambda: planner(template, table, 0)
        )
        return plan, found.literals

    # ---------------------------------------------------------------- simple protocol

    def simple(
        self, generation: Generation, tables: DatabaseTables, guards: bool, stmt: str
    ) -> StatementWork | None:
        """The checked form of one statement of a simple Query, or None to run it as written."""
        table = self.target(generation, tables, stmt)
        if table is None:
            return None
        if not guards:
            self.counts.unverified(table, "guards_unavailable")
            return None
        plan, literals = self.plan(generation, stmt, table)
        if not isinstance(plan, (WritePlan, InsertPlan)):
            self.counts.unverified(table, plan.reason)
            return None
        scs = self.info.standard_conforming_strings
        if isinstance(plan, InsertPlan):
            sql = plan.render_simple(literals, scs)
            return StatementWork(table, "insert", sql, plan.extra_returning, plan.client_returning)
        try:
            keys = [
                tuple(self._literal_key(table, ref, literals) for ref in row)
                for row in plan.pinned_rows
            ]
        except Unchecked as exc:
            self.counts.unverified(table, exc.reason)
            return None
        reads = self.knowledge.read_rows(table, keys, plan.checked_columns, self.counts)
        encoding = self.info.encoding
        texts: list[dict[str, str | None] | None] = []
        for row in reads:
            try:
                texts.append(
                    None if row is None else {c: v.as_text(encoding) for c, v in row.items()}
                )
            except ValueError:  # a binary value with no known text form: that row unchecked
                self.counts.unverified(table, "binary_read")
                texts.append(None)
        if table.unknown_original == "reject" and any(t is None for t in texts):
            return refusal_work(table, plan.kind, "not_read")
        if any(t is not None for t in texts):
            self.counts.checked(table)
        # rows not read pass unchecked, but what the write leaves counts as read from now on
        sql = plan.render_simple(literals, texts, scs)
        checked_keys = [k for k, t in zip(keys, texts) if t is not None]
        return StatementWork(
            table, plan.kind, sql, plan.extra_returning, plan.client_returning, checked_keys
        )

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
        target = None
        unverified: list[Unverified] = []
        if tables is not None and tables.by_oid:
            table = self.target(generation, tables, text, unverified)
            if table is not None:
                plan, literals = self.plan(generation, text, table)
                if isinstance(plan, (WritePlan, InsertPlan)):
                    target = WriteTarget(table, plan, literals)
                else:
                    unverified.append((table, plan.reason))
        # unverified writes are counted at each execution, like checked writes
        return PreparedStatement(text, tuple(parse.param_types), target, tuple(unverified))

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
        if isinstance(plan, InsertPlan):
            keys: list[RowKey] = []
            reads, mask = [], ("insert",)
        else:
            keys = [
                tuple(self._param_key(table, ref, literals, bind) for ref in row)
                for row in plan.pinned_rows
            ]
            reads = self.knowledge.read_rows(table, keys, plan.checked_columns, self.counts)
            mask = tuple(r is not None for r in reads)
            if not all(mask) and table.unknown_original == "reject":
                return self.refused_bind(bind, table, "not_read")
            if any(mask):
                self.counts.checked(table)
        rendered = info.rendered.get((n, mask))
        if rendered is None:
            rendered = info.rendered[(n, mask)] = (
                plan.render_extended(literals, n, scs)
                if mask == ("insert",)
                else plan.render_extended(literals, n, scs, mask)
            )
        extra_values = [reads[row][column] for row, column in rendered.extra_params]
        extra_types = [table.column_type_oids[column] for _, column in rendered.extra_params]
        types = tuple(info.param_types) + (0,) * (n - len(info.param_types))
        name, parse = self._hidden_statement(rendered.sql, types + tuple(extra_types))
        param_formats = [bind.param_format(i) for i in range(n)] + [v.format for v in extra_values]
        params = list(bind.params) + [v.data for v in extra_values]
        extras = plan.extra_returning
        result_formats = list(bind.result_formats)
        if len(result_formats) > 1:
            result_formats += [0] * (len(extras) + (1 if table.notify else 0))
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
        )
        out = m.Bind(bind.portal, name, param_formats, params, result_formats)
        return CheckedBind(parse, out.encode(), work)

    def refused_bind(self, bind: m.Bind, table: ProtectedTable, reason: str) -> CheckedBind:
        """Bind the client's portal to the refusal statement: its Execute raises the refusal
        in the server's own error flow, as the simple protocol's does."""
        name, parse = self._hidden_statement(conflicts.reject_sql(table, reason), ())
        return CheckedBind(parse, m.Bind(bind.portal, name, [], [], []).encode(), None)

    def _hidden_statement(self, sql: str, types: tuple[int, ...]) -> tuple[bytes, bytes | None]:
        name, new = self.registry.hidden_name((sql, types))
        if not new:
            return name, None
        parse = m.Parse(name, sql.encode(self.info.encoding, "surrogateescape"), types)
        return name, parse.encode()

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


def refusal_work(table: ProtectedTable, kind: str, reason: str) -> StatementWork:
    """The simple protocol's refusal: the statement is replaced by one that raises why."""
    return StatementWork(table, kind, conflicts.reject_sql(table, reason), (), True)
