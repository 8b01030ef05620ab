"""Following the session's transactions and savepoints from the server's CommandComplete tags
and ReadyForQuery status, so what a transaction learned is undone with it."""

from __future__ import annotations

from enum import Flag, auto

from proxy.locking.knowledge import Knowledge
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


class SessionReset(Flag):
    """What a completed statement took from the server connection besides its transaction."""

    NONE = 0
    TEMPORARY_OBJECTS = auto()  # DISCARD ALL/TEMP: the guard functions are gone
    PREPARED_STATEMENTS = auto()  # DISCARD ALL, DEALLOCATE ALL


class Transactions:
    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        self.txlog = knowledge.txlog

    def completed(
        self, tag: bytes, word: bytes, text: str, status: bytes, scs: bool
    ) -> SessionReset:
        """A statement with a transaction tag completed. `text`: its SQL (for savepoint
        names); `status`: the transaction status before it."""
        txlog = self.txlog
        if word in (b"BEGIN", b"START"):
            txlog.begin()
        elif word == b"COMMIT" or tag == b"PREPARE TRANSACTION":
            txlog.commit()
        elif word == b"ROLLBACK":
            stmt = scan(text, scs).statement if text else None
            if stmt is not None and stmt.rollback_to and stmt.savepoint:
                txlog.rollback_to(stmt.savepoint)
                if self.knowledge.has_stale:
                    # the transaction goes on: a retry inside it must not fail again
                    self.knowledge.forget_stale()
            elif status == b"I" or stmt is None or not stmt.rollback_to:
                txlog.rollback()
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
        if self.knowledge.has_stale:
            self.knowledge.forget_stale()
