"""What the locking logic answers a client message with (None: forward it unchanged).

The locking logic never touches the Session: it returns one of these and the Session, which
alone owns the in-flight queue and the output buffers, carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from proxy.session.inflight import Entry, Job


@final  # the Session dispatches on `type(action) is Send`
@dataclass(frozen=True, slots=True)
class Send:
    """Send `messages` in place of the client's message and queue `entries`, one per
    response-producing message among them, in order. `Send((), ())` drops the message."""

    messages: tuple[bytes, ...]
    entries: tuple[Entry, ...]


@final
@dataclass(frozen=True, slots=True)
class Hold:
    """Keep this message, and every one after it, until `job` has run its queries (e.g. the
    catalog and the guard functions must be known before a write can be planned)."""

    job: Job


ClientAction = Send | Hold | None
