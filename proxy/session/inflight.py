"""What the server still owes: one typed entry per response-producing message, in order.

The server answers in order, so a FIFO of these entries tells which request each server
message belongs to. Only the Session changes the queue; the locking logic hands it the entries
it wants queued (see proxy.locking.actions) and reads them back when their responses arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.locking.capture import CapturePlan
    from proxy.locking.pinned import PinnedRead


class Kind(IntEnum):
    QUERY = 0  # simple Query: ends with ReadyForQuery
    PARSE = 1  # ParseComplete
    BIND = 2  # BindComplete
    DESCRIBE = 3  # [ParameterDescription] RowDescription | NoData
    EXECUTE = 4  # DataRow* CommandComplete | EmptyQueryResponse | PortalSuspended
    CLOSE = 5  # CloseComplete
    SYNC = 6  # ReadyForQuery
    CALL = 7  # FunctionCall: FunctionCallResponse, ReadyForQuery


_ENDS_WITH_READY = frozenset({Kind.QUERY, Kind.SYNC, Kind.CALL})


class Entry:
    """A plainly relayed request: nothing to remember about it (instances are shared)."""

    __slots__ = ("kind",)
    hidden = False
    # result rows of a protected table to capture (Query/Execute entries set their own)
    capture: CapturePlan | PinnedRead | None = None
    # trailing result columns the proxy added and must remove (-1: every column, the client's
    # statement returns no rows at all)
    strip = 0

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def ends_with_ready(self) -> bool:
        return self.kind in _ENDS_WITH_READY

    def __repr__(self) -> str:  # for test failure messages
        return f"{type(self).__name__}({self.kind.name})"


RELAYED = {
    kind: Entry(kind) for kind in (Kind.PARSE, Kind.BIND, Kind.DESCRIBE, Kind.EXECUTE, Kind.CLOSE)
}


class Completion(Entry):
    """Sync, simple Query or FunctionCall: ends with ReadyForQuery; remembers a failure so the
    transaction bookkeeping knows whether an implicit transaction committed."""

    __slots__ = ("failed",)

    def __init__(self, kind: Kind) -> None:
        super().__init__(kind)
        self.failed = False


class QueryEntry(Completion):
    """A simple Query the locking logic looked into: per statement, its text and the work the
    proxy does around it (None: relayed as written)."""

    __slots__ = ("statements", "works", "index", "capture", "strip")

    def __init__(self, statements: list[str], works: list[Any]) -> None:
        super().__init__(Kind.QUERY)
        self.statements = statements
        self.works = works
        self.index = 0
        self.capture = None
        self.strip = 0

    def current_text(self) -> str:
        return self.statements[self.index] if self.index < len(self.statements) else ""

    def current_work(self) -> Any:
        return self.works[self.index] if self.index < len(self.works) else None


UNRESOLVED: Any = object()  # an Execute's capture plan, looked up at its first row


class ExecuteEntry(Entry):
    """An Execute of a portal the locking logic knows: its statement text, the checked write
    around it (or None), and what to capture from its rows."""

    __slots__ = ("text", "work", "portal", "capture", "strip")

    def __init__(self, text: str, work: Any, portal: Any) -> None:
        super().__init__(Kind.EXECUTE)
        self.text = text
        self.work = work
        self.portal = portal
        self.capture = UNRESOLVED if work is None else None
        self.strip = 0 if work is None else work.strip


class DescribeEntry(Entry):
    """What a Describe described when it was sent: a pipelined Bind may rebind the (unnamed)
    portal or statement before the answer arrives."""

    __slots__ = ("target_kind", "target")

    def __init__(self, target_kind: bytes, target: Any) -> None:
        super().__init__(Kind.DESCRIBE)
        self.target_kind = target_kind
        self.target = target


# ---------------------------------------------------------------- the proxy's own requests


@dataclass(frozen=True, slots=True)
class InternalQuery:
    """A simple query the proxy runs on the session's server connection for itself."""

    sql: str


@dataclass(slots=True)
class InternalResult:
    rows: list[list[bytes | None]] = field(default_factory=list)
    failed: bool = False


# A job yields InternalQuery values and receives each one's InternalResult (psycopg 3's
# generators are the model): the Session runs the I/O, the job stays free of it.
Job = Generator[InternalQuery, InternalResult, None]


class InternalEntry(Entry):
    """A request the proxy sent for itself: its responses are consumed, never relayed.
    `surface`: made on the client's behalf (the checked form of its statement), so an error
    is the client's to see. `done`: handed the result once the request completed (a hidden
    statement ahead of the client's whose answer the locking logic reads)."""

    __slots__ = ("job", "result", "surface", "done")
    hidden = True

    def __init__(
        self,
        kind: Kind,
        job: Job | None = None,
        *,
        surface: bool = False,
        done: Callable[[InternalResult], None] | None = None,
    ) -> None:
        super().__init__(kind)
        self.job = job
        self.result = InternalResult()
        self.surface = surface
        self.done = done
