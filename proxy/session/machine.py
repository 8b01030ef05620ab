"""The per-connection protocol state machine (sans-IO).

Fed the bytes each side sends, it returns what to send where. It alone owns the protocol
state of one connection pair: the framing of both directions, the in-flight queue
(`proxy.session.inflight`), the transaction status, the server's parameters and the proxy's
own queries. Locking work is delegated to a `locking` object (proxy.locking.SessionLocking):
the Session hands it decoded messages and carries out the typed actions it returns
(`proxy.session.actions`). With no rules the session is a relay that looks only at message
headers and a few messages.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from proxy.session.actions import Hold, Send
from proxy.session.inflight import (
    RELAYED,
    Completion,
    DescribeEntry,
    Entry,
    ExecuteEntry,
    InternalEntry,
    InternalQuery,
    InternalResult,
    Job,
    Kind,
    QueryEntry,
)
from proxy.session.info import SessionInfo
from proxy.session.statement_types import statement_type
from proxy.wire import messages as m
from proxy.wire.framing import (
    DEFAULT_MAX_MESSAGE,
    FRONTEND_TYPES,
    SERVER_MAX_MESSAGE,
    MessageReader,
    ProtocolViolation,
)
from proxy.wire.startup import StartupPacket

log = logging.getLogger("optimist.session")

# client message types that produce a response entry
_CLIENT_KINDS = {
    b"Q": Kind.QUERY,
    b"P": Kind.PARSE,
    b"B": Kind.BIND,
    b"D": Kind.DESCRIBE,
    b"E": Kind.EXECUTE,
    b"C": Kind.CLOSE,
    b"S": Kind.SYNC,
    b"F": Kind.CALL,
}
# server messages that end the response of the entry at the head of the queue
_ENDS = {
    b"1": Kind.PARSE,
    b"2": Kind.BIND,
    b"3": Kind.CLOSE,
    b"n": Kind.DESCRIBE,
    b"s": Kind.EXECUTE,
}

# the kinds the hot path compares with, as module globals (an Enum attribute lookup costs more)
_QUERY, _DESCRIBE, _EXECUTE, _SYNC = Kind.QUERY, Kind.DESCRIBE, Kind.EXECUTE, Kind.SYNC

Buffer = bytes | bytearray  # a slice of the reader's buffer (the decoders need `find`)


class Locking(Protocol):
    """What the Session asks of the locking logic (proxy.locking.SessionLocking)."""

    def authenticated(self) -> Job | None: ...
    def query(self, sql: str, raw: bytes) -> Send | Hold | None: ...
    def parse(self, parse: m.Parse) -> Hold | None: ...
    def bind(self, bind: m.Bind, raw: bytes) -> Send | None: ...
    def describe(self, kind: bytes, name: bytes, raw: bytes) -> Send | None: ...
    def execute(self, portal: bytes, max_rows: int, raw: bytes) -> Send | None: ...
    def close_target(self, kind: bytes, name: bytes) -> None: ...
    def sync(self) -> None: ...
    def row_description(self, entry: Entry, body: Buffer) -> bytes | None: ...
    def data_row(self, entry: Entry, body: Buffer) -> bytes | None: ...
    def command_complete(self, entry: Entry, tag: bytes) -> None: ...
    def error(self, entry: Entry | None, fields: dict[str, str]) -> bytes | None: ...
    def notice(self, fields: dict[str, str]) -> bytes | None: ...
    def ready(self, entry: Entry | None, status: bytes) -> None: ...
    def close(self) -> None: ...
    def remembered_rows(self) -> int: ...


class Session:
    """The protocol state of one client connection and its server connection."""

    def __init__(
        self,
        startup: StartupPacket,
        *,
        locking_for: Callable[[SessionInfo], Locking] | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        peer: str = "",
        count_statement: Callable[[str], None] | None = None,
    ) -> None:
        self.info = SessionInfo(
            startup.user, startup.database, startup.params.get("application_name", ""), peer
        )
        self._client_reader = MessageReader(max_message, FRONTEND_TYPES)
        self._server_reader = MessageReader(SERVER_MAX_MESSAGE)
        self._to_server: list[bytes] = []
        self._to_client: list[bytes] = []
        self._inflight: deque[Entry] = deque()
        self.authenticated = False
        self._backend_key: tuple[int, bytes] | None = None
        # the client sent Terminate
        self.closing = False
        # the server sent a FATAL error: when it closes, the client already knows why
        self.server_fatal = False
        # client bytes held back while the proxy's own queries run
        self._held: list[bytes] = []
        self._job: Job | None = None
        self.locking = locking_for(self.info) if locking_for is not None else None
        # statements by type, for metrics
        self._count_statement = count_statement
        self._statement_types: dict[bytes, str] = {}
        self._portal_types: dict[bytes, str] = {}

    # ------------------------------------------------------------------ what the relay may ask

    @property
    def busy(self) -> bool:
        """The server still owes the client (or the proxy) a response."""
        return bool(self._inflight)

    @property
    def transaction_status(self) -> bytes:
        return self.info.status

    @property
    def backend_key(self) -> tuple[int, bytes] | None:
        return self._backend_key

    @property
    def in_flight(self) -> tuple[Entry, ...]:
        """The queue, for tests and diagnostics."""
        return tuple(self._inflight)

    def awaiting_transaction(self) -> bool:
        """Outside a transaction with nothing of the client's in flight: its next bytes
        start a new transaction (PAUSE holds them). The proxy's own bootstrap queries may
        still run: the client has its ReadyForQuery already."""
        return (
            self.authenticated
            and self.info.status == b"I"
            and not self._client_reader.pending_bytes()
            and (not self._inflight or (self._job is not None and not self._held))
        )

    def buffered_client_bytes(self) -> int:
        return self._client_reader.pending_bytes()

    def between_transactions(self) -> bool:
        """Idle outside a transaction with nothing buffered: safe to close (drain)."""
        return (
            self.authenticated
            and self.info.status == b"I"
            and not self._inflight
            and not self._client_reader.pending_bytes()
            and not self._held
        )

    def close(self) -> None:
        if self.locking is not None:
            self.locking.close()

    def take_output(self) -> tuple[list[bytes], list[bytes]]:
        to_server, to_client = self._to_server, self._to_client
        self._to_server, self._to_client = [], []
        return to_server, to_client

    # ------------------------------------------------------------------ the proxy's own queries

    def _run_job(self, job: Job) -> None:
        """Start (or continue) a job: send its next query, or release the client when done."""
        self._job = job
        self._advance_job(job, None)

    def _advance_job(self, job: Job, result: InternalResult | None) -> None:
        try:
            query: InternalQuery = next(job) if result is None else job.send(result)
        except StopIteration:
            self._job = None
            self._release_held()
            return
        self._inflight.append(InternalEntry(_QUERY, job))
        self._to_server.append(m.encode_query(query.sql.encode("utf-8")))

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for chunk in held:
            if self._job is not None:  # a held message started another job
                self._held.append(chunk)
            else:
                self._client_bytes(chunk)

    # ------------------------------------------------------------------ client -> server

    def client_data(self, data: bytes) -> None:
        if self._held or self._job is not None:
            self._held.append(data)
            return
        self._client_bytes(data)

    def _client_bytes(self, data: bytes) -> None:
        reader = self._client_reader
        reader.feed(data)
        buf = reader.buffer
        run_start = 0
        pos = 0
        locking = self.locking if self.authenticated else None
        out = self._to_server
        inflight = self._inflight
        for mtype, start, end in reader.messages():
            kind = _CLIENT_KINDS.get(mtype)
            if kind is None:
                if mtype == b"X":
                    self.closing = True
                pos = end
                continue
            if self._count_statement is not None and kind <= _EXECUTE:
                self._count(mtype, buf, start, end)
            action = None if locking is None else self._ask(locking, mtype, buf, start, end)
            if action is None:
                entry = RELAYED.get(kind)
                inflight.append(entry if entry is not None else Completion(kind))
            elif type(action) is Send:
                # send what came before, then the replacement
                if start - 5 > run_start:
                    out.append(bytes(buf[run_start : start - 5]))
                out.extend(action.messages)
                inflight.extend(action.entries)
                run_start = end
            else:  # Hold: keep this message and all after it until the job has answered
                if start - 5 > run_start:
                    out.append(bytes(buf[run_start : start - 5]))
                self._held.append(bytes(buf[start - 5 :]))
                reader.consume(len(buf))
                self._run_job(action.job)
                return
            pos = end
        if pos > run_start:
            out.append(bytes(buf[run_start:pos]))
        reader.consume(pos)
        # an incomplete message stays buffered; it is forwarded once complete

    def _ask(
        self, locking: Locking, mtype: bytes, buf: bytearray, start: int, end: int
    ) -> Send | Hold | None:
        """Decode the message and ask the locking logic what to do with it."""
        if mtype == b"Q":
            # one copy: the raw message, its text sliced from it (up to the first NUL)
            raw = bytes(buf[start - 5 : end])
            nul = raw.find(b"\x00", 5)
            if nul < 0:
                raise ProtocolViolation("unterminated string in message")
            return locking.query(raw[5:nul].decode(self.info.encoding, "surrogateescape"), raw)
        if mtype == b"B":
            return locking.bind(m.decode_bind(buf[start:end]), bytes(buf[start - 5 : end]))
        if mtype == b"E":
            portal, max_rows = m.decode_execute(buf[start:end])
            return locking.execute(portal, max_rows, bytes(buf[start - 5 : end]))
        if mtype == b"P":
            return locking.parse(m.decode_parse(buf[start:end]))
        if mtype == b"D":
            kind, name = m.decode_describe_or_close(buf[start:end])
            return locking.describe(kind, name, bytes(buf[start - 5 : end]))
        if mtype == b"C":
            kind, name = m.decode_describe_or_close(buf[start:end])
            locking.close_target(kind, name)
        elif mtype == b"S":
            locking.sync()
        return None

    def _count(self, mtype: bytes, buf: bytearray, start: int, end: int) -> None:
        """Statements by type: a Query when sent, a prepared statement when executed."""
        count = self._count_statement
        assert count is not None
        if mtype == b"Q":
            count(statement_type(buf, start))
        elif mtype == b"P":
            name_end = buf.find(b"\x00", start, end)
            if name_end >= 0:
                self._statement_types[bytes(buf[start:name_end])] = statement_type(
                    buf, name_end + 1
                )
        elif mtype == b"B":
            portal_end = buf.find(b"\x00", start, end)
            stmt_end = buf.find(b"\x00", portal_end + 1, end)
            if stmt_end >= 0:
                self._portal_types[bytes(buf[start:portal_end])] = self._statement_types.get(
                    bytes(buf[portal_end + 1 : stmt_end]), "other"
                )
        elif mtype == b"E":
            portal_end = buf.find(b"\x00", start, end)
            count(self._portal_types.get(bytes(buf[start:portal_end]), "other"))

    # ------------------------------------------------------------------ server -> client

    def server_data(self, data: bytes) -> None:
        reader = self._server_reader
        reader.feed(data)
        buf = reader.buffer
        out = self._to_client
        run_start = 0
        pos = 0
        inflight = self._inflight
        locking = self.locking
        for mtype, start, end in reader.messages():
            head = inflight[0] if inflight else None
            # None: forward the message unchanged; bytes: send these instead (b"" drops it)
            replacement = None
            if head is not None and head.hidden:
                replacement = self._internal_response(head, mtype, buf, start, end)  # type: ignore[arg-type]
            elif mtype == b"D":
                if (
                    head is not None
                    and (head.capture is not None or head.strip)
                    and locking is not None
                ):
                    replacement = locking.data_row(head, buf[start:end])
            elif mtype == b"C":
                if head is not None:
                    if locking is not None:
                        locking.command_complete(head, m.decode_command_complete(buf[start:end]))
                    self._statement_done(head)
            elif mtype == b"Z":
                self._ready(head, bytes(buf[start:end]))
            elif mtype == b"E":
                replacement = self._error(head, buf, start, end)
            elif mtype in _ENDS:
                if head is not None and head.kind == _ENDS[mtype]:
                    inflight.popleft()
            elif mtype == b"T":
                if locking is not None and head is not None:
                    replacement = locking.row_description(head, buf[start:end])
                if head is not None and head.kind == _DESCRIBE:
                    inflight.popleft()
            elif mtype == b"I":
                self._statement_done(head)
            elif mtype == b"S":
                self._parameter_status(buf, start, end)
            elif mtype == b"N":
                if locking is not None:
                    replacement = locking.notice(m.decode_fields(buf[start:end]))
            elif mtype == b"K":
                self._backend_key = m.decode_backend_key(buf[start:end])
            if replacement is not None:
                if start - 5 > run_start:
                    out.append(bytes(buf[run_start : start - 5]))
                if replacement:
                    out.append(replacement)
                run_start = end
            pos = end
        if pos > run_start:
            out.append(bytes(buf[run_start:pos]))
        reader.consume(pos)

    def _parameter_status(self, buf: bytearray, start: int, end: int) -> None:
        name, value = m.decode_parameter_status(buf[start:end])
        self.info.set_parameter(name, value)

    def _statement_done(self, head: Entry | None) -> None:
        if head is None:
            return
        if head.kind == _EXECUTE:
            self._inflight.popleft()
        elif type(head) is QueryEntry:
            head.index += 1

    def _ready(self, head: Entry | None, status: bytes) -> None:
        self.info.status = status
        if not self.authenticated:
            self.authenticated = True
            if self.locking is not None:
                job = self.locking.authenticated()
                if job is not None:
                    self._run_job(job)
            return
        if head is not None and head.ends_with_ready():
            self._inflight.popleft()
        if self.locking is not None:
            self.locking.ready(head, status)

    def _error(self, head: Entry | None, buf: bytearray, start: int, end: int) -> bytes | None:
        body = buf[start:end]
        if b"SFATAL\x00" in body or b"SPANIC\x00" in body:
            self.server_fatal = True
        replacement = None
        if self.locking is not None:
            replacement = self.locking.error(head, m.decode_fields(body))
        if head is None:
            return replacement
        if isinstance(head, Completion):
            if head.kind != _SYNC:
                head.failed = True  # simple Query / FunctionCall: ReadyForQuery follows
                return replacement
        self._skip_to_sync()
        return replacement

    def _skip_to_sync(self) -> None:
        """Extended protocol: after an error the server skips everything up to the next Sync."""
        inflight = self._inflight
        while inflight and inflight[0].kind != _SYNC:
            done = inflight.popleft()
            if type(done) is InternalEntry and done.job is not None:
                done.result.failed = True
                self._finish_internal(done)
        if inflight:
            head = inflight[0]
            if isinstance(head, Completion):
                head.failed = True
            elif type(head) is InternalEntry:
                head.result.failed = True

    def _finish_internal(self, entry: InternalEntry) -> None:
        if entry.job is not None:
            self._advance_job(entry.job, entry.result)
        elif entry.done is not None:
            entry.done(entry.result)

    def _internal_response(
        self, head: InternalEntry, mtype: bytes, buf: bytearray, start: int, end: int
    ) -> bytes | None:
        """Responses to the proxy's own requests: consumed, handed to the job that asked."""
        if mtype == b"D":
            head.result.rows.append(m.decode_data_row(buf[start:end]))
            return b""
        if mtype in (b"N", b"A"):  # asynchronous: still the client's business
            return None
        if mtype == b"E":
            head.result.failed = True
            fields = m.decode_fields(buf[start:end])
            if b"SFATAL\x00" in buf[start:end] or b"SPANIC\x00" in buf[start:end]:
                self.server_fatal = True
            log.warning("internal query failed: %s (%s)", fields.get("M"), fields.get("C"))
            if head.kind not in (_QUERY, _SYNC):
                self._skip_to_sync()
            if head.surface:
                # the client's own statement cannot run: it must see an error, not silence
                fields["M"] = (
                    "optimist: could not prepare the checked form of this "
                    "statement: " + fields.get("M", "")
                )
                return m.encode_fields(b"E", fields)
            return b""
        if mtype == b"S":
            self._parameter_status(buf, start, end)
            return None
        finished = False
        if mtype == b"Z":
            self.info.status = bytes(buf[start:end])
            finished = head.ends_with_ready()
        elif mtype == b"C" or mtype == b"I":
            finished = head.kind == _EXECUTE
        elif mtype in _ENDS:
            finished = head.kind == _ENDS[mtype]
        elif mtype == b"T":
            finished = head.kind == _DESCRIBE
        if finished:
            self._inflight.popleft()
            self._finish_internal(head)
        return b""


__all__ = ["Session", "ProtocolViolation", "statement_type", "DescribeEntry", "ExecuteEntry"]
