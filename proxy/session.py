"""The per-connection state machine (sans-IO).

Fed the bytes each side sends, it returns what to send where. It tracks what later stages need:
the transaction status, the client's prepared statements and portals, and the in-flight
pipeline (`proxy.pending`). Locking work is delegated to an `Enforcer` (proxy.enforcement);
with no rules the session is a relay that looks only at message headers and a few messages.
"""
from __future__ import annotations

import logging
from collections import deque

from proxy.pending import Pending
from proxy.wire import messages as m
from proxy.wire.framing import (DEFAULT_MAX_MESSAGE, FRONTEND_TYPES, SERVER_MAX_MESSAGE,
                                 MessageReader, ProtocolViolation)
from proxy.wire.startup import StartupPacket

log = logging.getLogger("optimist.session")

# client message types that produce a response entry
_CLIENT_KINDS = {
    b"Q": Pending.QUERY,
    b"P": Pending.PARSE,
    b"B": Pending.BIND,
    b"D": Pending.DESCRIBE,
    b"E": Pending.EXECUTE,
    b"C": Pending.CLOSE,
    b"S": Pending.SYNC,
    b"F": Pending.CALL,
}
# server messages that end the response of the entry at the head of the queue
_ENDS = {
    b"1": (Pending.PARSE,),
    b"2": (Pending.BIND,),
    b"3": (Pending.CLOSE,),
    b"n": (Pending.DESCRIBE,),
    b"s": (Pending.EXECUTE,),
}


# Entries nothing ever changes can be shared: a plainly relayed Parse, Bind, Describe, Execute
# or Close needs no object of its own (Query, Sync and FunctionCall entries carry state).
_SHARED_PENDING = {kind: Pending(kind) for kind in (Pending.PARSE, Pending.BIND, Pending.DESCRIBE,
                                                      Pending.EXECUTE, Pending.CLOSE)}


class Session:
    """One client connection and its server connection."""

    def __init__(self, startup: StartupPacket, *, enforcer=None,
                 max_message: int = DEFAULT_MAX_MESSAGE, peer: str = "",
                 count_statement=None) -> None:
        self.startup = startup
        self.user = startup.user
        self.database = startup.database
        self.application_name = startup.params.get("application_name", "")
        self.client_reader = MessageReader(max_message, FRONTEND_TYPES)
        self.server_reader = MessageReader(SERVER_MAX_MESSAGE)
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.pending: deque[Pending] = deque()
        self.status = b"I"
        self.authenticated = False
        self.backend_pid: int | None = None
        self.backend_secret: bytes | None = None
        self.parameters: dict[str, str] = {}
        # the Python codec of client_encoding, for SQL text and text-format values
        self.encoding = "utf-8"
        self.closing = False
        # the server sent a FATAL error: when it closes, the client already knows why
        self.server_fatal = False
        self.peer = peer
        # client messages held back while the proxy's own setup query runs
        self.held: list[bytes] = []
        self.enforcer = enforcer
        if enforcer is not None:
            enforcer.attach(self)
        # statements by type, for metrics: a callable taking the type, or None
        self.count_statement = count_statement
        self.statement_types: dict[bytes, str] = {}
        self.portal_types: dict[bytes, str] = {}

    # ------------------------------------------------------------------ what the relay may ask

    @property
    def busy(self) -> bool:
        """The server still owes the client (or the proxy) a response."""
        return bool(self.pending)

    @property
    def transaction_status(self) -> bytes:
        return self.status

    @property
    def backend_key(self) -> tuple[int, bytes] | None:
        if self.backend_pid is None or self.backend_secret is None:
            return None
        return self.backend_pid, self.backend_secret

    def between_transactions(self) -> bool:
        """Idle outside a transaction with nothing buffered: safe to close (drain)."""
        return self.authenticated and self.status == b"I" and not self.pending \
            and not self.client_reader.pending_bytes()

    def close(self) -> None:
        if self.enforcer is not None:
            self.enforcer.close()

    # ------------------------------------------------------------------ helpers

    @property
    def standard_conforming_strings(self) -> bool:
        return self.parameters.get("standard_conforming_strings", "on") == "on"

    def _parameter_status(self, buf, start: int, end: int) -> None:
        name, value = m.decode_parameter_status(buf[start:end])
        self.parameters[name] = value
        if name == "client_encoding":
            self.encoding = m.python_encoding(value)

    def take_output(self) -> tuple[list[bytes], list[bytes]]:
        to_server, to_client = self.to_server, self.to_client
        self.to_server, self.to_client = [], []
        return to_server, to_client

    def inject(self, data: bytes, item: Pending) -> None:
        """Send the proxy's own request to the server; its responses are consumed."""
        item.hidden = True
        self.pending.append(item)
        self.to_server.append(data)

    # ------------------------------------------------------------------ client -> server

    def client_data(self, data: bytes) -> None:
        if self.held or (self.enforcer is not None and self.enforcer.holding()):
            self.held.append(data)
            return
        self._client_bytes(data)

    def release_held(self) -> None:
        held, self.held = self.held, []
        for chunk in held:
            self._client_bytes(chunk)

    def _client_bytes(self, data: bytes) -> None:
        reader = self.client_reader
        reader.feed(data)
        buf = reader.buffer
        run_start = 0
        pos = 0
        enforcer = self.enforcer
        for mtype, start, end in reader.messages():
            kind = _CLIENT_KINDS.get(mtype)
            if kind is None:
                if mtype == b"X":
                    self.closing = True
                pos = end
                continue
            if self.count_statement is not None and kind <= Pending.EXECUTE:
                self._count(mtype, buf, start, end)
            replacement = None
            if enforcer is not None and self.authenticated:
                replacement = enforcer.client_message(mtype, buf, start, end)
                if replacement == "hold":
                    # the enforcer must learn the catalog first: keep this message and all
                    # after it until it has
                    if start - 5 > run_start:
                        self.to_server.append(bytes(buf[run_start:start - 5]))
                    self.held.append(bytes(buf[start - 5:]))
                    reader.consume(len(buf))
                    return
            if replacement is None:
                self.pending.append(self._pending_for(kind, mtype, buf, start, end))
            else:
                # the enforcer queued its own entries and bytes; send what came before first
                if start - 5 > run_start:
                    self.to_server.append(bytes(buf[run_start:start - 5]))
                self.to_server.extend(replacement)
                run_start = end
            pos = end
        if pos > run_start:
            self.to_server.append(bytes(buf[run_start:pos]))
        reader.consume(pos)
        # an incomplete message stays buffered; it is forwarded once complete

    def _count(self, mtype: bytes, buf, start: int, end: int) -> None:
        """Statements by type: a Query when sent, a prepared statement when executed."""
        if mtype == b"Q":
            self.count_statement(statement_type(buf, start))
        elif mtype == b"P":
            name_end = buf.find(b"\x00", start, end)
            if name_end >= 0:
                self.statement_types[bytes(buf[start:name_end])] = statement_type(buf, name_end + 1)
        elif mtype == b"B":
            portal_end = buf.find(b"\x00", start, end)
            stmt_end = buf.find(b"\x00", portal_end + 1, end)
            if stmt_end >= 0:
                self.portal_types[bytes(buf[start:portal_end])] = self.statement_types.get(
                    bytes(buf[portal_end + 1:stmt_end]), "other")
        elif mtype == b"E":
            portal_end = buf.find(b"\x00", start, end)
            self.count_statement(self.portal_types.get(bytes(buf[start:portal_end]), "other"))

    def _pending_for(self, kind: int, mtype: bytes, buf, start: int, end: int) -> Pending:
        shared = _SHARED_PENDING.get(kind)
        return shared if shared is not None else Pending(kind)

    # ------------------------------------------------------------------ server -> client

    def server_data(self, data: bytes) -> None:
        reader = self.server_reader
        reader.feed(data)
        buf = reader.buffer
        out = self.to_client
        run_start = 0
        pos = 0
        pending = self.pending
        enforcer = self.enforcer
        for mtype, start, end in reader.messages():
            head = pending[0] if pending else None
            # None: forward the message unchanged; bytes: send these instead (b"" drops it)
            replacement = None
            if head is not None and head.hidden:
                replacement = self._hidden_response(head, mtype, buf, start, end)
            elif mtype == b"D":
                if head is not None and (head.capture is not None or head.strip):
                    replacement = enforcer.data_row(head, buf, start, end)
            elif mtype == b"C":
                replacement = self._command_complete(head, buf, start, end)
            elif mtype == b"Z":
                self._ready(head, bytes(buf[start:end]))
            elif mtype == b"E":
                if b"SFATAL\x00" in buf[start:end] or b"SPANIC\x00" in buf[start:end]:
                    self.server_fatal = True
                replacement = self._error(head, buf, start, end)
            elif mtype in _ENDS:
                if head is not None and head.kind in _ENDS[mtype]:
                    pending.popleft()
            elif mtype == b"T":
                replacement = self._row_description(head, buf, start, end)
            elif mtype == b"I":
                self._statement_done(head)
            elif mtype == b"S":
                self._parameter_status(buf, start, end)
            elif mtype == b"N":
                if enforcer is not None:
                    replacement = enforcer.notice(m.decode_fields(buf[start:end]))
            elif mtype == b"K":
                self.backend_pid, self.backend_secret = m.decode_backend_key(buf[start:end])
            if replacement is not None:
                if start - 5 > run_start:
                    out.append(bytes(buf[run_start:start - 5]))
                if replacement:
                    out.append(replacement)
                run_start = end
            pos = end
        if pos > run_start:
            out.append(bytes(buf[run_start:pos]))
        reader.consume(pos)

    def _statement_done(self, head: Pending | None) -> None:
        if head is None:
            return
        if head.kind == Pending.EXECUTE:
            self.pending.popleft()
        elif head.kind == Pending.QUERY:
            head.index += 1

    def _command_complete(self, head: Pending | None, buf, start: int, end: int) -> bytes | None:
        if head is None:
            return None
        replacement = None
        if self.enforcer is not None:
            replacement = self.enforcer.command_complete(
                head, m.decode_command_complete(buf[start:end]))
        self._statement_done(head)
        return replacement

    def _row_description(self, head: Pending | None, buf, start: int, end: int) -> bytes | None:
        replacement = None
        if self.enforcer is not None and head is not None:
            replacement = self.enforcer.row_description(head, buf, start, end)
        if head is not None and head.kind == Pending.DESCRIBE:
            self.pending.popleft()
        return replacement

    def _ready(self, head: Pending | None, status: bytes) -> None:
        self.status = status
        if not self.authenticated:
            self.authenticated = True
            if self.enforcer is not None:
                self.enforcer.authenticated()
            return
        if head is not None and head.ends_with_ready():
            self.pending.popleft()
        if self.enforcer is not None:
            self.enforcer.ready(head, status)

    def _error(self, head: Pending | None, buf, start: int, end: int) -> bytes | None:
        replacement = None
        if self.enforcer is not None:
            replacement = self.enforcer.error(head, buf, start, end)
        if head is None:
            return replacement
        if head.kind == Pending.QUERY or head.kind == Pending.CALL:
            head.failed = True
        else:
            # extended protocol: the server skips everything up to the next Sync
            pending = self.pending
            while pending and pending[0].kind != Pending.SYNC:
                pending.popleft()
            if pending:
                pending[0].failed = True
        return replacement

    def _hidden_response(self, head: Pending, mtype: bytes, buf, start: int, end: int) -> bytes:
        """Responses to the proxy's own requests: consumed, handed to their callback."""
        if mtype == b"D":
            head.rows.append(m.decode_data_row(buf[start:end]))
            return b""
        if mtype in (b"N", b"A"):  # asynchronous: still the client's business
            return None
        if mtype == b"E":
            head.failed = True
            fields = m.decode_fields(buf[start:end])
            log.warning("internal query failed: %s (%s)", fields.get("M"), fields.get("C"))
            if head.kind not in (Pending.QUERY, Pending.SYNC):
                pending = self.pending
                while pending and pending[0].kind != Pending.SYNC:
                    done = pending.popleft()
                    if done.on_done is not None:
                        done.on_done(done)
                if pending:
                    pending[0].failed = True
            if head.surface:
                # the client's own statement cannot run: it must see an error, not silence
                fields["M"] = "optimist: could not prepare the checked form of this statement: " \
                    + fields.get("M", "")
                return m.encode_fields(b"E", fields)
            return b""
        if mtype == b"S":
            self._parameter_status(buf, start, end)
            return None
        finished = False
        if mtype == b"Z":
            self.status = bytes(buf[start:end])
            finished = head.ends_with_ready()
        elif mtype == b"C" or mtype == b"I":
            finished = head.kind == Pending.EXECUTE
        elif mtype in _ENDS:
            finished = head.kind in _ENDS[mtype]
        elif mtype == b"T":
            finished = head.kind == Pending.DESCRIBE
        if finished:
            self.pending.popleft()
            if head.on_done is not None:
                head.on_done(head)
        return b""


_TYPES = {
    b"SELECT": "select", b"VALUES": "select", b"TABLE": "select", b"SHOW": "select",
    b"INSERT": "insert", b"UPDATE": "update", b"DELETE": "delete", b"MERGE": "merge",
    b"WITH": "with", b"COPY": "copy",
    b"BEGIN": "transaction", b"START": "transaction", b"COMMIT": "transaction",
    b"END": "transaction", b"ROLLBACK": "transaction", b"ABORT": "transaction",
    b"SAVEPOINT": "transaction", b"RELEASE": "transaction", b"PREPARE": "transaction",
    b"CREATE": "ddl", b"ALTER": "ddl", b"DROP": "ddl", b"TRUNCATE": "ddl", b"COMMENT": "ddl",
    b"GRANT": "ddl", b"REVOKE": "ddl", b"SET": "set", b"RESET": "set",
}


def statement_type(buf, start: int) -> str:
    """A bounded label for the statement starting at buf[start]: its first keyword's family."""
    head = bytes(buf[start:start + 24]).lstrip(b" \t\r\n(")
    word = head.split(None, 1)[0].rstrip(b";").upper() if head else b""
    return _TYPES.get(word, "other")


__all__ = ["Session", "ProtocolViolation", "statement_type"]
