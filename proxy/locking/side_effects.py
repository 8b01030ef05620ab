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

Under READ COMMITTED a ``read`` mark becomes ``locked`` when the proxy locks the row while it
still holds what was read (`lock_query`): before a write that may fire a user trigger, inside
a transaction block, a hidden `optimist_lock_verified(SELECT ... FOR NO KEY UPDATE)` of the
READ-marked rows runs in the same round trip, ahead of the client's statement. Every
READ-marked row of a protected table is a candidate (not only the tables the trigger's source
names: a trigger may reach any table through the functions it calls, and locking a row whose
change is then the session's own is always sound); a row found changed is not locked and keeps
its mark (its later write conflicts, as it must). Past MAX_LOCKED rows nothing is locked.

Marks live for one transaction: any COMMIT, ROLLBACK (to a savepoint too: its row locks are
released, and values it taught are undone), PREPARE TRANSACTION, BEGIN or the end of an
implicit transaction forgets them all. A table with `scope: user` gets none (its snapshots
are shared by sessions whose reads are not this transaction's).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from proxy.locking.compare import Uncomparable, simple_form
from proxy.rewrite.render import Printed, Same, fill_simple
from proxy.sqlnames import quote_ident, quote_literal
from proxy.values import INT_TYPES, NUMERIC_TYPE, TEXT_TYPES, UUID_TYPE

READ, LOCKED = "read", "locked"
# marked rows per transaction; past it, rows are left unmarked (their checks stay strict)
MAX_ROWS = 10000
# READ-marked rows one hidden lock statement locks at most; with more, it is not sent (their
# writes after a trigger keep the conservative conflict)
MAX_LOCKED = 100
# key types whose normalized key (proxy.values.normalize_key) is their exact value
_KEY_TYPES = frozenset({*INT_TYPES, *TEXT_TYPES, UUID_TYPE, NUMERIC_TYPE})

_Key = tuple[int, tuple[Hashable, ...]]


class OwnChanges:
    def __init__(self) -> None:
        self.marks: dict[_Key, dict[str, str]] = {}
        # bumped when a transaction ends: a lock's answer belongs to the transaction it ran in
        self.epoch = 0

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

    def read_rows(self) -> list[tuple[_Key, list[str]]]:
        """The rows with READ-marked columns, and those columns."""
        out = []
        for key, row in self.marks.items():
            columns = [c for c, how in row.items() if how == READ]
            if columns:
                out.append((key, columns))
        return out

    def transaction_ended(self) -> None:
        self.epoch += 1
        if self.marks:
            self.marks.clear()


class LockRequest:
    """One hidden lock statement: its SQL (the `q` of optimist_lock_verified), and what its
    answer turns into LOCKED marks."""

    __slots__ = ("sql", "rows", "own", "epoch")

    def __init__(self, sql: str, rows: list[tuple[_Key, list[str]]], own: OwnChanges) -> None:
        self.sql = sql
        self.rows = rows  # answer index -> (row, the columns it compared)
        self.own = own
        self.epoch = own.epoch

    def answered(self, value: bytes | None) -> None:
        """The function's int[] in text form ({0,2}), or NULL: nothing was locked."""
        if value is None or self.own.epoch != self.epoch:
            return
        body = value.decode("ascii", "replace").strip("{}")
        for part in body.split(",") if body else ():
            try:
                index = int(part)
            except ValueError:
                continue
            if 0 <= index < len(self.rows):
                key, columns = self.rows[index]
                self.own.mark(key, columns, LOCKED)


def lock_query(
    own: OwnChanges,
    table_of: Callable[[int], Any],
    row_of: Callable[[Any, _Key], dict[str, Any] | None],
    encoding: str,
    scs: bool,
    functions: str,
) -> LockRequest | None:
    """The lock statement for the session's READ-marked rows, or None (none, or too many).
    `table_of(oid)`: the protected table; `row_of(table, key)`: the snapshot's values."""
    candidates = own.read_rows()
    if not candidates or len(candidates) > MAX_LOCKED:
        return None
    by_table: dict[int, list[tuple[str, str, int]]] = {}
    rows: list[tuple[_Key, list[str]]] = []
    for key, columns in candidates:
        table = table_of(key[0])
        if table is None or table.mode == "off" or table.scope == "user":
            continue
        values = row_of(table, key)
        if values is None:
            continue
        try:
            pin, checks = _row_sql(table, key, values, columns, encoding, scs, functions)
        except (Uncomparable, KeyError, ValueError):
            continue  # not comparable exactly here: that row stays READ
        by_table.setdefault(table.oid, []).append((pin, checks, len(rows)))
        rows.append((key, columns))
    if not rows:
        return None
    selects = []
    for oid, found in by_table.items():
        table = table_of(oid)
        relation = quote_ident(table.schema) + "." + quote_ident(table.name)
        number = " ".join(f"WHEN {pin} THEN {n}" for pin, _, n in found)
        check = " ".join(f"WHEN {pin} THEN {checks}" for pin, checks, _ in found)
        pins = " OR ".join(pin for pin, _, _ in found)
        # the key in a WHERE the planner can use; each row's values through the CASE.
        # FOR NO KEY UPDATE is the lock its trigger's UPDATE takes; under READ COMMITTED a
        # row changed meanwhile is re-checked on its newest version (EvalPlanQual), so a row
        # returned both holds what was read and is locked by this transaction
        selects.append(
            f"SELECT CASE {number} END AS n FROM {relation}"
            f" WHERE ({pins}) AND CASE {check} ELSE false END FOR NO KEY UPDATE"
        )
    union = " UNION ALL ".join(f"SELECT n FROM ({q}) AS t{i}" for i, q in enumerate(selects))
    return LockRequest(f"SELECT ARRAY({union})", rows, own)


def _row_sql(
    table: Any,
    key: _Key,
    values: dict[str, Any],
    columns: Sequence[str],
    encoding: str,
    scs: bool,
    functions: str,
) -> tuple[str, str]:
    """(the key pin, the test that every READ column still holds what was read) of one row,
    compared in the domain it was read in (proxy.locking.compare, as a checked write does)."""
    pin = []
    for k, value in zip(table.key, key[1]):
        # the key as normalize_key keeps it: exact text only for these types (a date's is
        # as printed under the read's DateStyle: it could pin another row)
        if table.column_type_oids[k] not in _KEY_TYPES or type(value) not in (int, str, Decimal):
            raise ValueError(k)
        literal = quote_literal(str(value), scs)
        pin.append(f"{quote_ident(k)} = CAST({literal} AS {table.column_types[k]})")
    pieces: list[object] = []
    reads: dict[str, str | Printed | None] = {}
    for column in columns:
        sql_type = table.column_types[column]
        reads[column] = simple_form(values[column], encoding)
        if pieces:
            pieces.append(" AND ")
        pieces += [
            Same(0, column, sql_type, False),
            quote_ident(column),
            Same(0, column, sql_type, True),
        ]
    return "(" + " AND ".join(pin) + ")", "(" + fill_simple(
        pieces, (), [reads], scs, functions
    ) + ")"
