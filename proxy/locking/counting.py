"""Counting what happens to writes of protected tables (no-ops without metrics)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from proxy.rules.protected import ProtectedTable

log = logging.getLogger("optimist.locking")

# A write that could not be checked: (the table, or None when the statement could not be
# parsed to know which tables it writes, and the reason, a metric label)
Unverified = tuple[ProtectedTable | None, str]

# the table label of writes that may hit any protected table (server-side code)
ANY_TABLE = "*"


class UnverifiedSink(Protocol):
    """Where a row that cannot be checked is reported (counted, or collected first)."""

    def unverified(self, table: ProtectedTable, reason: str) -> None: ...


class WriteCounts:
    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def checked(self, table: ProtectedTable) -> None:
        if self.metrics is not None:
            self.metrics.checked(table.qualified_name)

    def unverified(self, table: ProtectedTable, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.unverified(table.qualified_name, reason)
        log.debug("unverified write to %s: %s", table.qualified_name, reason)

    def unverified_hit(self, hit: Unverified) -> None:
        table, reason = hit
        if table is None and reason == "server_code":
            # code the proxy cannot see into may write any protected table: one series
            if self.metrics is not None:
                self.metrics.unverified(ANY_TABLE, reason)
            log.debug("server-side code on a session with protected tables")
        elif table is None:
            if self.metrics is not None:
                self.metrics.unparsed()
        else:
            self.unverified(table, reason)

    def unapplied(self, table: ProtectedTable) -> None:
        if self.metrics is not None:
            self.metrics.unapplied(table.qualified_name)
