"""Following the session's transactions and savepoints from the server's CommandComplete tags
and ReadyForQuery status, so what a transaction taught is undone with it (see the table in
proxy.locking.knowledge)."""

from __future__ import annotations

import re
from collections import OrderedDict
from enum import Flag, auto
from typing import Any

from proxy.locking.knowledge import Knowledge
from proxy.locking.snapshots import undo_detached
from proxy.rewrite.lexer import literal_text
from proxy.rewrite.scan import scan

TRANSACTION_TAGS = frozenset(
    {
        b"BEGIN",
        b"START",
        b"COMMIT",
        b"ROLLBACK",
        b"SAVEPOINT",
        b"RELEASE",
        b"PREPARE",
        b"DISCARD",
        b"DEALLOCATE",
    }
)
# tags of statements that write nothing: reads after them still see only committed rows
# (unless they ran server-side code: a SELECT calling a function may write)
_READ_ONLY_TAGS = frozenset(
    {
        b"SELECT",
        b"SHOW",
        b"FETCH",
        b"MOVE",
        b"SET",
        b"RESET",
        b"LISTEN",
        b"UNLISTEN",
        b"NOTIFY",
        b"EXPLAIN",
        b"DECLARE",
        b"CLOSE",
        b"LOCK",
        b"PREPARE",
        b"EXECUTE",
        b"DEALLOCATE",
        b"DISCARD",
        b"BEGIN",
        b"START",
        b"SAVEPOINT",
        b"RELEASE",
    }
)
_GID = re.compile(
    r"(?is)\s*(?:prepare\s+transaction|commit\s+prepared|rollback\s+prepared)\s+('(?:[^']|'')*')"
)
# prepared transactions whose outcome is not known yet, by gid (a bound: an abandoned one is
# eventually forgotten, i.e. treated as committed)
PREPARED_MAX = 1000


class PreparedTransactions:
    """Process-wide: COMMIT/ROLLBACK PREPARED may come from any session."""

    def __init__(self) -> None:
        self._undo: OrderedDict[str, list[Any]] = OrderedDict()

    def prepared(self, gid: str, entries: list[Any]) -> None:
        self._undo[gid] = entries
        while len(self._undo) > PREPARED_MAX:
            self._undo.popitem(last=False)

    def finished(self, gid: str, committed: bool) -> None:
        entries = self._undo.pop(gid, None)
        if entries is not None and not committed:
            undo_detached(entries)


class SessionReset(Flag):
    """What a completed statement took from the server connection besides its transaction."""

    NONE = 0
    TEMPORARY_OBJECTS = auto()  # DISCARD ALL/TEMP: the guard functions are gone
    PREPARED_STATEMENTS = auto()  # DISCARD ALL, DEALLOCATE ALL


def _gid(text: str) -> str | None:
    found = _GID.match(text)
    return literal_text(found.group(1)) if found else None


class Transactions:
    def __init__(self, knowledge: Knowledge, prepared: PreparedTransactions) -> None:
        self.knowledge = knowledge
        self.txlog = knowledge.txlog
        self.prepared = prepared

    def statement_done(self, word: bytes, server_code: bool = False) -> None:
        """Any other statement completed: note whether the transaction has written. A
        statement that ran server-side code (`SELECT transfer(1, 2)`) may have written."""
        if server_code or word not in _READ_ONLY_TAGS:
            self.knowledge.wrote = True

    def completed(
        self, tag: bytes, word: bytes, text: str, status: bytes, scs: bool
    ) -> SessionReset:
        """A statement with a transaction tag completed. `text`: its SQL (for savepoint
        names); `status`: the transaction status before it."""
        txlog = self.txlog
        if word in (b"BEGIN", b"START", b"COMMIT", b"ROLLBACK") or tag == b"PREPARE TRANSACTION":
            # a transaction ends or starts (or a savepoint's row locks are released): what
            # this one read or locked no longer excuses its own changes (side_effects.py)
            self.knowledge.own.transaction_ended()
        if word in (b"BEGIN", b"START"):
            txlog.begin()
        elif tag == b"PREPARE TRANSACTION":
            gid = _gid(text)
            entries = txlog.detach()
            if gid is not None:
                self.prepared.prepared(gid, entries)
            self.knowledge.wrote = False
        elif tag in (b"COMMIT PREPARED", b"ROLLBACK PREPARED"):
            gid = _gid(text)
            if gid is not None:
                self.prepared.finished(gid, committed=tag == b"COMMIT PREPARED")
        elif word == b"COMMIT":
            txlog.commit()
            self.knowledge.wrote = False
        elif word == b"ROLLBACK":
            stmt = scan(text, scs).statement if text else None
            if stmt is not None and stmt.rollback_to and stmt.savepoint:
                txlog.rollback_to(stmt.savepoint)
            elif status == b"I" or stmt is None or not stmt.rollback_to:
                txlog.rollback()
                self.knowledge.wrote = False
        elif word == b"SAVEPOINT":
            stmt = scan(text, scs).statement
            if stmt.savepoint:
                txlog.savepoint(stmt.savepoint)
        elif word == b"RELEASE":
            stmt = scan(text, scs).statement
            if stmt.savepoint:
                txlog.release(stmt.savepoint)
        elif word == b"DISCARD":
            if tag == b"DISCARD ALL":
                return SessionReset.TEMPORARY_OBJECTS | SessionReset.PREPARED_STATEMENTS
            if tag == b"DISCARD TEMP":
                return SessionReset.TEMPORARY_OBJECTS
        elif word == b"DEALLOCATE" and tag == b"DEALLOCATE ALL":
            return SessionReset.PREPARED_STATEMENTS
        return SessionReset.NONE

    def idle(self, failed: bool) -> None:
        """ReadyForQuery 'I': an implicit transaction (simple query, batch up to Sync) ended,
        committed unless its request failed."""
        if self.txlog.open:
            if failed:
                self.txlog.rollback()
            else:
                self.txlog.commit()
        self.knowledge.wrote = False
        self.knowledge.own.transaction_ended()
