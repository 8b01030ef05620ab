"""The client's prepared statements and portals as the locking logic needs them, and the
hidden statements the proxy prepares for their checked forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.locking.capture import CapturePlan, KeylessCapture
from proxy.rules.protected import ProtectedTable
from proxy.session.inflight import UNRESOLVED
from proxy.wire.messages import Field


@dataclass(frozen=True, slots=True)
class WriteTarget:
    """A statement that writes a protected table, with its cached plan."""

    table: ProtectedTable
    plan: Any  # WritePlan | InsertPlan
    literals: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SqlPrepared:
    """A statement prepared with SQL PREPARE that writes a protected table."""

    # writes that can never be checked: (table or None, reason), counted at each EXECUTE
    unverified: tuple[tuple[ProtectedTable | None, str], ...]
    # the checked write, planned with its key pinned by $n (None: never checkable)
    target: WriteTarget | None = None
    types: tuple[str, ...] = ()  # the declared parameter types, as written
    n_params: int = 0

    def hits(self) -> tuple[tuple[ProtectedTable | None, str], ...]:
        """What an EXECUTE of it counts when it cannot be checked."""
        if self.target is None:
            return self.unverified
        return ((self.target.table, "sql_prepare"), *self.unverified)


@dataclass(slots=True)
class PreparedStatement:
    text: str
    param_types: tuple[int, ...]
    target: WriteTarget | None
    # writes that can never be checked: (table or None, reason), counted at each execution
    unverified: tuple[tuple[ProtectedTable | None, str], ...] = ()
    # RowDescription fields from a Describe of the statement
    fields: tuple[Field, ...] | None = None
    # those fields as the RowDescription's bytes: the key of their capture plan
    # (DatabaseTables.capture_plans), looked up at each Bind instead of planned again
    fields_key: bytes | None = None
    # (n_params, mask) -> RenderedSql of the checked form
    rendered: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    # a protected table the statement only adds rows to (INSERT-only MERGE): counted checked
    creates: ProtectedTable | None = None
    # an SQL EXECUTE: the name of the SQL-level statement it runs, looked up at each Bind
    executes: str | None = None


@dataclass(slots=True)
class Portal:
    statement: PreparedStatement | None
    work: Any = None  # StatementWork of a checked write
    # UNRESOLVED until the statement's fields are known (a Describe answered); None: nothing
    # to capture
    capture: CapturePlan | KeylessCapture | None = UNRESOLVED
    result_formats: tuple[int, ...] | list[int] = ()
    # the client's Bind, kept when it has parameters: a read may be pinned by one
    bind: Any = None
    # the read of the row its statement pins, across the Executes of a suspended portal
    pinned: Any = None


class PreparedRegistry:
    """Statements and portals by name; portals end with the transaction (as in PostgreSQL)."""

    def __init__(self) -> None:
        self.statements: dict[bytes, PreparedStatement] = {}
        self.portals: dict[bytes, Portal] = {}
        # (sql, parameter types) -> name of the proxy's own prepared statement
        self._hidden: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self._counter = 0
        # SQL-level PREPARE name -> what each EXECUTE of it writes (once the PREPARE has
        # completed: one that fails, e.g. on a name in use, leaves the server's statement)
        self.sql_prepared: dict[str, SqlPrepared] = {}
        # PREPAREs sent but not completed yet: an EXECUTE in the same request runs them
        self.sql_pending: dict[str, SqlPrepared | None] = {}

    def sql_statement(self, name: str) -> SqlPrepared | None:
        if name in self.sql_pending:
            return self.sql_pending[name]
        return self.sql_prepared.get(name)

    def sql_hits(self, name: str) -> tuple[tuple[ProtectedTable | None, str], ...]:
        found = self.sql_statement(name)
        return () if found is None else found.hits()

    def parsed(self, name: bytes, statement: PreparedStatement) -> None:
        previous = self.statements.get(name)
        if (
            previous is not None
            and previous.text == statement.text
            and previous.param_types == statement.param_types
        ):
            # the same statement parsed again (asyncpg without a statement cache: Parse,
            # Describe, then Parse again with Bind): what its Describe taught still holds
            statement.fields, statement.fields_key = previous.fields, previous.fields_key
        self.statements[name] = statement

    def closed(self, kind: bytes, name: bytes) -> None:
        (self.statements if kind == b"S" else self.portals).pop(name, None)

    def described(self, kind: bytes, name: bytes) -> PreparedStatement | Portal | None:
        return (self.statements if kind == b"S" else self.portals).get(name)

    def hidden_name(self, key: tuple[str, tuple[int, ...]]) -> tuple[bytes, bool]:
        """The name of the proxy's statement for `key`, and whether it must be prepared now."""
        name = self._hidden.get(key)
        if name is not None:
            return name, False
        while True:  # never a name the client prepared itself (SQL PREPARE or Parse)
            self._counter += 1
            name = b"optimist_%d" % self._counter
            if name not in self.statements and name.decode() not in self.sql_prepared:
                break
        self._hidden[key] = name
        return name, True

    def forget_hidden(self, names: set[bytes]) -> None:
        """Their PREPARE failed: the server has no such statements, so the next execution of
        their forms prepares them again (under new names: a name is never reused)."""
        for key in [k for k, v in self._hidden.items() if v in names]:
            del self._hidden[key]

    def forget_statements(self) -> None:
        """DISCARD ALL / DEALLOCATE ALL: every prepared statement is gone server-side."""
        self._hidden.clear()
        self.statements.clear()
        self.sql_prepared.clear()
        self.sql_pending.clear()

    def request_done(self) -> None:
        """ReadyForQuery: every PREPARE sent so far has completed or failed."""
        if self.sql_pending:
            self.sql_pending.clear()

    def transaction_ended(self) -> None:
        if self.portals:
            self.portals.clear()
