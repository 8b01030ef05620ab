"""What sessions read: bounded stores of row snapshots, undone with the transaction that learned them.

A `SnapshotStore` maps (table oid, normalised key) to the read values of the checked columns.
It is an LRU bounded per store and, through a shared `Budget`, in total. A session's
`TransactionLog` records undo entries per transaction and savepoint, so what a rolled-back
transaction (or savepoint) learned disappears with it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from proxy.values import ReadValue

Key = tuple[int, tuple[Hashable, ...]]  # (table oid, normalized key values)
Row = Mapping[str, ReadValue]
# (store, key, the row before, None if absent) or (None, an on_rollback action, None)
_Undo = tuple["SnapshotStore | None", Any, "dict[str, ReadValue] | None"]
_MISSING = object()


class Budget:
    """A total bound on entries across all stores of a process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.evictions = 0
        self.stores: set[SnapshotStore] = set()

    def reserve(self, store: SnapshotStore) -> None:
        self.used += 1
        while self.used > self.limit:
            victim = max(self.stores, key=len, default=None)
            if victim is None or not victim.evict_one():
                break


class SnapshotStore:
    def __init__(self, limit: int, budget: Budget | None = None) -> None:
        self.limit = limit
        self.budget = budget
        self.rows: OrderedDict[Key, dict[str, ReadValue]] = OrderedDict()
        self.evictions = 0
        if budget is not None:
            budget.stores.add(self)

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: Key) -> dict[str, ReadValue] | None:
        row = self.rows.get(key)
        if row is not None:
            self.rows.move_to_end(key)
        return row

    def put(
        self, key: Key, values: Row, log: TransactionLog | None = None, replace: bool = False
    ) -> None:
        """Remember values read for a row; merge with what was read before unless `replace`."""
        rows = self.rows
        old = rows.get(key)
        if log is not None:
            log.record(self, key, None if old is None else dict(old))
        if old is None:
            rows[key] = dict(values)
            if self.budget is not None:
                self.budget.reserve(self)
            while len(rows) > self.limit:
                self.evict_one()
        else:
            if replace:
                old.clear()
            old.update(values)
            rows.move_to_end(key)

    def forget(self, key: Key, log: TransactionLog | None = None) -> None:
        old = self.rows.get(key)
        if old is None:
            return
        if log is not None:
            log.record(self, key, dict(old))
        self._drop(key)

    def restore(self, key: Key, old: dict[str, ReadValue] | None) -> None:
        if old is None:
            if key in self.rows:
                self._drop(key)
        else:
            if key not in self.rows and self.budget is not None:
                self.budget.reserve(self)
            self.rows[key] = old

    def evict_one(self) -> bool:
        if not self.rows:
            return False
        self.rows.popitem(last=False)
        self.evictions += 1
        if self.budget is not None:
            self.budget.used -= 1
            self.budget.evictions += 1
        return True

    def _drop(self, key: Key) -> None:
        del self.rows[key]
        if self.budget is not None:
            self.budget.used -= 1

    def clear(self) -> None:
        if self.budget is not None:
            self.budget.used -= len(self.rows)
        self.rows.clear()

    def close(self) -> None:
        self.clear()
        if self.budget is not None:
            self.budget.stores.discard(self)


class TransactionLog:
    """Undo entries of the open transaction, one layer per savepoint.

    Layer 0 is the transaction itself (explicit, or the implicit one of a simple query or of an
    extended-protocol batch up to Sync); each SAVEPOINT adds a named layer.
    """

    def __init__(self) -> None:
        self.layers: list[tuple[str | None, list[_Undo]]] = []

    @property
    def open(self) -> bool:
        return bool(self.layers)

    def begin(self) -> None:
        if not self.layers:
            self.layers.append((None, []))

    def record(self, store: SnapshotStore, key: Key, old: dict[str, ReadValue] | None) -> None:
        self.begin()
        self.layers[-1][1].append((store, key, old))

    def on_rollback(self, action: Callable[[], None]) -> None:
        """Run `action` if the current transaction (or savepoint) rolls back."""
        self.begin()
        self.layers[-1][1].append((None, action, None))

    def savepoint(self, name: str) -> None:
        self.begin()
        self.layers.append((name, []))

    def release(self, name: str) -> None:
        index = self._find(name)
        if index is None:
            return
        merged: list[_Undo] = []
        for _, undo in self.layers[index:]:
            merged.extend(undo)
        del self.layers[index:]
        self.layers[-1][1].extend(merged)

    def rollback_to(self, name: str) -> None:
        index = self._find(name)
        if index is None:
            return
        for _, undo in reversed(self.layers[index:]):
            _undo(undo)
        del self.layers[index + 1 :]
        self.layers[index] = (name, [])

    def commit(self) -> None:
        self.layers.clear()

    def rollback(self) -> None:
        for _, undo in reversed(self.layers):
            _undo(undo)
        self.layers.clear()

    def detach(self) -> list[Any]:
        """PREPARE TRANSACTION: the open transaction's undo entries, handed over to be
        applied by ROLLBACK PREPARED (or dropped by COMMIT PREPARED), perhaps elsewhere."""
        merged: list[Any] = []
        for _, undo in self.layers:
            merged.extend(undo)
        self.layers.clear()
        return merged

    def _find(self, name: str) -> int | None:
        for i in range(len(self.layers) - 1, 0, -1):
            if self.layers[i][0] == name:
                return i
        return None


def _undo(entries: list[_Undo]) -> None:
    for store, key, old in reversed(entries):
        if store is None:
            key()  # an on_rollback action
        else:
            store.restore(key, old)


def undo_detached(entries: list[Any]) -> None:
    _undo(entries)
