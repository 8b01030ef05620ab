"""What the server still owes the client: one entry per response-producing client message.

The server answers in order, so a FIFO of these entries tells which request each server
message belongs to. Entries the proxy itself injected are `hidden`: their responses are
consumed by the proxy and never reach the client.
"""
from __future__ import annotations

from collections.abc import Callable


class Pending:
    __slots__ = ("kind", "hidden", "strip", "on_done", "statements", "index",
                 "failed", "rows", "capture", "surface")

    # kinds
    QUERY = 0      # simple Query: ends with ReadyForQuery
    PARSE = 1      # ParseComplete
    BIND = 2       # BindComplete
    DESCRIBE = 3   # [ParameterDescription] RowDescription | NoData
    EXECUTE = 4    # DataRow* CommandComplete | EmptyQueryResponse | PortalSuspended
    CLOSE = 5      # CloseComplete
    SYNC = 6       # ReadyForQuery
    CALL = 7       # FunctionCall: FunctionCallResponse, ReadyForQuery

    def __init__(self, kind: int, *, hidden: bool = False,
                 strip: int = 0, on_done: Callable | None = None, statements=None) -> None:
        self.kind = kind
        self.hidden = hidden
        # number of trailing result columns the proxy added and must remove (-1: all of them,
        # the client's statement returns no rows at all)
        self.strip = strip
        self.on_done = on_done
        # simple Query: per-statement descriptions, advanced by CommandComplete
        self.statements = statements
        self.index = 0
        self.failed = False
        self.rows: list = []
        self.capture = None
        # a hidden request made on the client's behalf: its error is the client's to see
        self.surface = False

    def ends_with_ready(self) -> bool:
        return self.kind in (Pending.QUERY, Pending.SYNC, Pending.CALL)

    def __repr__(self) -> str:  # for test failure messages
        return f"Pending(kind={self.kind}, hidden={self.hidden})"
