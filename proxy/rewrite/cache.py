"""The rewrite cache: normalized statement -> plan (or the reason it cannot be guarded).

Bounded LRU. Keys are whatever the caller finds identifying, typically
(rules version, template text[, n_params][, table oid]): normalize() makes statements that
differ only in their literals share one entry, so an application's few hundred statement shapes
are planned once each. Not thread-safe: one event loop uses it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

__all__ = ["RewriteCache"]

T = TypeVar("T")
_MISSING = object()


class RewriteCache:
    def __init__(self, maxsize: int = 10000) -> None:
        if maxsize < 1:
            raise ValueError("the rewrite cache needs room for at least one plan")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The cached value for key, or factory()'s result, cached (evicting the least
        recently used entry when full)."""
        entries = self._entries
        value = entries.get(key, _MISSING)
        if value is not _MISSING:
            self.hits += 1
            entries.move_to_end(key)
            return value  # type: ignore[return-value]
        self.misses += 1
        value = factory()
        entries[key] = value
        if len(entries) > self.maxsize:
            entries.popitem(last=False)
        return value

    def peek(self, key: Hashable, default: object = None) -> object:
        """The cached value without counting or refreshing it."""
        return self._entries.get(key, default)

    def clear(self) -> None:
        self._entries.clear()
