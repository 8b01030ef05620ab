"""What a session knows of protected rows.

| event | effect on the session's snapshot of a row |
|---|---|
| a read returns the row | created or refreshed with the values read |
| its own INSERT returns the row | created (the session wrote every value) |
| its own checked UPDATE of a row it had read | refreshed for the columns it wrote or verified, and the version bumped after its check passed; other columns stay as last read |
| its own UPDATE of a row it never read | nothing: a write is not a read |
| its own DELETE | forgotten |
| its own MERGE, unverified upsert, or bulk write (which rows: unknown) | forgotten (the pinned or returned rows; every row of the table for a bulk write), undone by ROLLBACK |
| ROLLBACK (or ROLLBACK TO SAVEPOINT) | what its own writes taught is undone (back to what it knew before); what it read stays seen, unless read after its own writes (or server-side code: a function may write) in that transaction (it may have seen its own uncommitted changes) |
| PREPARE TRANSACTION | kept pending until COMMIT PREPARED (kept) or ROLLBACK PREPARED (undone), from any session |
| its own transaction changed the row (a trigger) | kept; a change under an own row version is excused when the values were read in this REPEATABLE READ / SERIALIZABLE transaction, learned from its own checked write in it, or (READ COMMITTED) found unchanged and locked by the proxy's hidden lock before a write of a table with user triggers (proxy.locking.side_effects); a READ COMMITTED read not locked so proves nothing: still a conflict |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from proxy.locking.capture import CapturePlan, capture_row
from proxy.locking.counting import UnverifiedSink
from proxy.locking.side_effects import LOCKED, READ, OwnChanges
from proxy.locking.snapshots import SnapshotStore, TransactionLog
from proxy.rules.protected import ProtectedTable
from proxy.values import ReadSettings, ReadValue, normalize_key

RowKey = tuple[Any, ...]


class Knowledge:
    def __init__(self, store: SnapshotStore, role_store: Callable[[], SnapshotStore]) -> None:
        self.store = store
        # () -> the store shared by every session of this role (scope: user)
        self._role_store = role_store
        self.txlog = TransactionLog()
        # the open transaction has written: what it reads now may be its own uncommitted
        # changes, so those reads are undone with it
        self.wrote = False
        # which snapshot values this transaction read or learned (proxy.locking.side_effects)
        self.own = OwnChanges()

    def store_for(self, table: ProtectedTable) -> SnapshotStore:
        if table.scope == "user":
            return self._role_store()
        return self.store

    def close(self) -> None:
        self.store.close()

    # ---------------------------------------------------------------- reads

    def capture(
        self,
        plan: CapturePlan,
        values: Sequence[bytes | None],
        encoding: str,
        settings: ReadSettings | None = None,
    ) -> None:
        txlog = self.txlog if self.wrote else None
        for table, key, row in capture_row(plan, values, encoding, settings):
            self.store_for(table).put((table.oid, key), row, txlog)
            if table.scope != "user":
                self.own.mark((table.oid, key), row, READ)

    def capture_pinned(self, table: ProtectedTable, key: RowKey, row: dict[str, ReadValue]) -> None:
        """A row read without its key, which its statement pinned (proxy.locking.pinned)."""
        self.store_for(table).put((table.oid, key), row, self.txlog if self.wrote else None)
        if table.scope != "user":
            self.own.mark((table.oid, key), row, READ)

    def forget_pinned(self, table: ProtectedTable, key: RowKey) -> None:
        """Several rows answered one key pin: what was read of that key cannot be trusted."""
        self.store_for(table).forget((table.oid, key), self.txlog)

    def forget_table(self, table: ProtectedTable) -> None:
        """Its own write changed rows of the table it cannot name (a bulk UPDATE, an unpinned
        MERGE, whose version the proxy bumped): every row it read of it may be stale."""
        store = self.store_for(table)
        for key in [k for k in store.rows if k[0] == table.oid]:
            store.forget(key, self.txlog)

    def forget_rows(self, table: ProtectedTable, keys: Sequence[RowKey]) -> None:
        """Rows its own write changed in a way it cannot learn: what it read is stale (undone
        by a rollback, like anything the transaction's writes taught)."""
        store = self.store_for(table)
        for key in keys:
            store.forget((table.oid, key), self.txlog)

    def read_rows(
        self,
        table: ProtectedTable,
        keys: Sequence[RowKey],
        columns: Sequence[str],
        counts: UnverifiedSink,
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

    def learn(
        self,
        work: Any,
        extras: Sequence[bytes | None],
        encoding: str,
        settings: ReadSettings | None = None,
    ) -> None:
        """A row the session's own write returned (the RETURNING columns the proxy added)."""
        table = work.table
        types = table.column_type_oids
        formats = work.formats or (0,) * len(extras)
        nkey = len(table.key)
        if len(extras) < len(work.extras) or len(formats) < len(work.extras):
            return  # not the row the checked form returns: nothing to learn, never a crash
        key = tuple(
            normalize_key(types[c], formats[i], extras[i], encoding)
            for i, c in enumerate(work.extras[:nkey])
        )
        store = self.store_for(table)
        if work.kind == "delete" or work.forgets:
            store.forget((table.oid, key), self.txlog)
            return
        learned = work.learned
        if learned is not None and key not in work.keys:
            return  # not a row whose check ran: the session knows nothing new of it
        row = {
            c: ReadValue(formats[nkey + i], types[c], extras[nkey + i], settings)
            for i, c in enumerate(work.extras[nkey:])
            if learned is None or c in learned
        }
        if learned is not None and store.get((table.oid, key)) is None:
            return  # evicted since it was read: a write does not bring it back
        store.put((table.oid, key), row, self.txlog)
        if table.scope != "user":
            self.own.mark((table.oid, key), row, LOCKED)  # its own write holds the row's lock

    def own_flag(self, table: ProtectedTable, key: RowKey, columns: Sequence[str]) -> str | None:
        """What this transaction vouches for the read values of `columns` of the row when its
        own transaction changed it (proxy.locking.side_effects)."""
        return self.own.flag((table.oid, key), columns)
