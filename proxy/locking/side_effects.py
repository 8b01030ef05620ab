"""The session's own side effects: which snapshot values may excuse a change its own
transaction made (a trigger fired by its own write changing another protected row).

A check fails when a row no longer holds what the session read. If the row version is its own
transaction's (xmin), the change is the session's own only when the row *before its
transaction touched it* still held the snapshot; PostgreSQL does not show that pre-image. The
proxy vouches for it, per pinned row, with a flag the guard function reads on its slow path
(proxy.conflicts, `optimist_modified`):

* ``read``: every compared value was read in this same transaction. Under REPEATABLE READ or
  SERIALIZABLE (the guard checks `transaction_isolation` itself), another session's change
  of the row after that read makes the own transaction's change of it fail (40001,
  concurrent update) in PostgreSQL itself, so an own row version sits on exactly what was
  read. Under READ COMMITTED it proves nothing (the own UPDATE re-applies on top of another
  session's change, EvalPlanQual): no exemption.
* ``locked``: every compared value came from the session's own checked write (or INSERT) of
  this transaction, which has held the row's lock since; nobody else can have changed it, in
  any isolation level.

Marks live for one transaction: any COMMIT, ROLLBACK (to a savepoint too: its row locks are
released, and values it taught are undone), PREPARE TRANSACTION, BEGIN or the end of an
implicit transaction forgets them all. A table with `scope: user` gets none (its snapshots
are shared by sessions whose reads are not this transaction's).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

READ, LOCKED = "read", "locked"
# marked rows per transaction; past it, rows are left unmarked (their checks stay strict)
MAX_ROWS = 10000

_Key = tuple[int, tuple[Hashable, ...]]


class OwnChanges:
    def __init__(self) -> None:
        self.marks: dict[_Key, dict[str, str]] = {}

    def mark(self, key: _Key, columns: Iterable[str], how: str) -> None:
        row = self.marks.get(key)
        if row is None:
            if len(self.marks) >= MAX_ROWS:
                return
            row = self.marks[key] = {}
        for column in columns:
            # a re-read of a row its own write locked sees the current value: still locked
            if how == LOCKED or row.get(column) != LOCKED:
                row[column] = how

    def flag(self, key: _Key, columns: Sequence[str]) -> str | None:
        """What the proxy vouches for the values of `columns` of the row (see above)."""
        row = self.marks.get(key)
        if row is None or not columns:
            return None
        how = LOCKED
        for column in columns:
            found = row.get(column)
            if found is None:
                return None
            if found == READ:
                how = READ
        return how

    def transaction_ended(self) -> None:
        if self.marks:
            self.marks.clear()
