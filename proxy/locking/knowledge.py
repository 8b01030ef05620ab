"""What a session knows of protected rows: captured from the rows it reads, refreshed by the
results of its own checked writes, undone with the transaction that learned it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from proxy.locking.capture import CapturePlan, capture_row
from proxy.locking.counting import WriteCounts
from proxy.locking.snapshots import SnapshotStore, TransactionLog
from proxy.rules.protected import ProtectedTable
from proxy.values import ReadValue, normalize_key

RowKey = tuple[Any, ...]


class Knowledge:
    def __init__(self, store: SnapshotStore, role_store: Callable[[], SnapshotStore]) -> None:
        self.store = store
        # (table) -> the store shared by every session of this role (scope: user)
        self._role_store = role_store
        self.txlog = TransactionLog()
        # (table, key) of rows a conflict proved stale, forgotten when the transaction ends
        self._stale: list[tuple[ProtectedTable, RowKey]] = []
        # (table oid, key) of rows known only from the session's own unchecked writes
        self._blind: set[tuple[int, RowKey]] = set()

    def store_for(self, table: ProtectedTable) -> SnapshotStore:
        if table.scope == "user":
            return self._role_store()
        return self.store

    def close(self) -> None:
        self.store.close()

    # ---------------------------------------------------------------- reads

    def capture(self, plan: CapturePlan, values: Sequence[bytes | None], encoding: str) -> None:
        blind = self._blind
        txlog = self.txlog
        for table, key, row in capture_row(plan, values, encoding):
            self.store_for(table).put((table.oid, key), row, txlog)
            if blind:
                blind.discard((table.oid, key))

    def read_rows(
        self,
        table: ProtectedTable,
        keys: Sequence[RowKey],
        columns: Sequence[str],
        counts: WriteCounts,
    ) -> list[dict[str, ReadValue] | None]:
        """Per pinned row, the read values of `columns`, or None (counted) when the session
        has not read that row, or not all of those columns."""
        store = self.store_for(table)
        out: list[dict[str, ReadValue] | None] = []
        for key in keys:
            row = store.get((table.oid, key))
            if row is None:
                counts.unverified(table, "not_read")
                out.append(None)
                continue
            try:
                out.append({c: row[c] for c in columns})
            except KeyError:
                counts.unverified(table, "column_not_read")
                out.append(None)
        return out

    # ---------------------------------------------------------------- own writes

    def learn(self, work: Any, extras: Sequence[bytes | None], encoding: str) -> None:
        """The row a checked write left, from the RETURNING columns the proxy added."""
        table = work.table
        types = table.column_type_oids
        formats = work.formats or (0,) * len(extras)
        nkey = len(table.key)
        key = tuple(
            normalize_key(types[c], formats[i], extras[i], encoding)
            for i, c in enumerate(work.extras[:nkey])
        )
        store = self.store_for(table)
        if work.kind == "delete":
            store.forget((table.oid, key), self.txlog)
            return
        row = {
            c: ReadValue(formats[nkey + i], types[c], extras[nkey + i])
            for i, c in enumerate(work.extras[nkey:])
        }
        known = store.get((table.oid, key)) is not None
        store.put((table.oid, key), row, self.txlog)
        if not known and key not in work.keys:
            # known only from this session's own write, never from a read
            blind = self._blind
            blind.add((table.oid, key))
            if len(blind) > 2 * store.limit:  # drop what the store has evicted since
                rows = store.rows
                self._blind = {k for k in blind if k in rows}

    # ---------------------------------------------------------------- conflicts

    def mark_stale(self, table: ProtectedTable, key: RowKey) -> None:
        self._stale.append((table, key))

    @property
    def has_stale(self) -> bool:
        return bool(self._stale)

    def forget_stale(self) -> None:
        """A row the session knew only from its own blind writes (never read), and that a
        conflict proved stale, is forgotten once the failed transaction is over (its rollback
        would otherwise restore it): retrying the blind write then runs as the first one did
        (unknown_original decides) instead of failing against the same values forever.
        A row the session did read stays as read: writing it again without a re-read is
        exactly the lost update the check exists to stop."""
        for table, key in self._stale:
            if (table.oid, key) in self._blind:
                self.store_for(table).forget((table.oid, key))
                self._blind.discard((table.oid, key))
        self._stale.clear()
