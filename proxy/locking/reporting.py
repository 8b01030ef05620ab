"""Recognising the errors and notices the proxy's own SQL raised server-side (conflicts,
audit findings, refusals), reshaping them for the client, and reporting conflicts to the
log and the metrics."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from proxy import conflicts
from proxy.session.info import SessionInfo
from proxy.wire import messages as m

conflict_log = logging.getLogger("optimist.conflicts")


@dataclass(frozen=True, slots=True)
class RecentConflict:
    """One reported conflict, kept for the admin console's SHOW CONFLICTS."""

    at: float  # time.time()
    conflict: conflicts.Conflict
    user: str
    database: str
    application_name: str
    client: str


class ConflictReporter:
    def __init__(
        self,
        info: SessionInfo,
        metrics: Any,
        recent: deque[RecentConflict] | None = None,
    ) -> None:
        self.info = info
        self.metrics = metrics
        # the process's ring buffer of recent conflicts (LockingService.recent_conflicts)
        self.recent = recent

    def error(self, fields: dict[str, str]) -> bytes | None:
        """The client's version of an ErrorResponse, or None to relay it unchanged."""
        if conflicts.is_refusal(fields):
            fields.pop("W", None)  # the DO block that raised it is our plumbing
            return m.encode_fields(b"E", fields)
        conflict = conflicts.parse_conflict(fields)
        if conflict is None:
            return None
        self._report(conflict)
        return m.encode_fields(b"E", conflicts.strip_internal_context(fields))

    def notice(self, fields: dict[str, str]) -> bytes | None:
        conflict = conflicts.parse_conflict(fields)
        if conflict is None:
            return None
        self._report(conflict)
        return b""  # an audit finding is for the operators, not the application

    def _report(self, conflict: conflicts.Conflict) -> None:
        if self.metrics is not None:
            self.metrics.conflict(conflict.table, conflict.kind, audit=conflict.audit)
        info = self.info
        if self.recent is not None:
            self.recent.append(
                RecentConflict(
                    time.time(),
                    conflict,
                    info.user,
                    info.database,
                    info.application_name,
                    info.peer,
                )
            )
        conflict_log.warning(
            "%s conflict on %s",
            "would-be" if conflict.audit else "refused",
            conflict.table,
            extra={
                "fields": {
                    "table": conflict.table,
                    "key": conflict.key,
                    "kind": conflict.kind,
                    "audit": conflict.audit,
                    "user": info.user,
                    "database": info.database,
                    "application_name": info.application_name,
                    "client": info.peer,
                    "columns": sorted(conflict.columns),
                }
            },
        )
