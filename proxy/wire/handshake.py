"""The startup handshake as a sans-IO state machine: fed the client's first bytes, it says
what to do (answer an encryption request, start TLS, forward a StartupMessage, forward a
CancelRequest, refuse with an error, close). No sockets here: the relay carries it out.
"""
from __future__ import annotations

from dataclasses import dataclass

from proxy.wire.framing import ProtocolViolation
from proxy.wire.startup import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    CancelRequest,
    StartupPacket,
    packet_length,
    parse_startup,
)


@dataclass(frozen=True, slots=True)
class Answer:
    """Write this one byte (b"N": encryption not offered) and keep reading."""
    byte: bytes


@dataclass(frozen=True, slots=True)
class StartTls:
    """Stop reading, write b"S" and hand the connection to TLS; then call `tls_started()`."""


@dataclass(frozen=True, slots=True)
class Forward:
    """Connect upstream and send it this StartupMessage; `rest` followed it (pipelined)."""
    startup: StartupPacket
    rest: bytes


@dataclass(frozen=True, slots=True)
class Cancel:
    """Forward this CancelRequest to the server and close, saying nothing (PostgreSQL's way)."""
    request: CancelRequest


@dataclass(frozen=True, slots=True)
class Refuse:
    """Send a FATAL ErrorResponse and close."""
    sqlstate: str
    message: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close without a word, as PostgreSQL does here; `reason` is for the log."""
    reason: str


Decision = Answer | StartTls | Forward | Cancel | Refuse | Close


class Handshake:
    """Everything a client sends before its StartupMessage (or CancelRequest) is complete.

    `feed` returns the decisions its bytes lead to, in order; a decision other than `Answer`
    ends the plaintext phase (after `StartTls`, feeding resumes once `tls_started()` is called).
    """

    def __init__(self, *, tls_offered: bool, tls_required: bool) -> None:
        self.tls_offered = tls_offered
        self.tls_required = tls_required
        self.tls = False
        self.upgrading = False
        self.finished = False
        self.buffer = bytearray()

    def tls_started(self) -> None:
        self.tls = True
        self.upgrading = False

    def feed(self, data: bytes) -> list[Decision]:
        if self.finished:
            return []
        buf = self.buffer
        buf += data
        decisions: list[Decision] = []
        while not self.upgrading:
            decision = self._next(buf)
            if decision is None:
                break
            decisions.append(decision)
            if not isinstance(decision, Answer):
                self.finished = not isinstance(decision, StartTls)
                break
        return decisions

    def _next(self, buf: bytearray) -> Decision | None:
        try:
            length = packet_length(buf)
        except ProtocolViolation as exc:
            return Refuse("08P01", str(exc))
        if length is None or len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        try:
            parsed = parse_startup(packet)
        except ProtocolViolation as exc:
            return Refuse("08P01", str(exc))
        if isinstance(parsed, CancelRequest):
            return Cancel(parsed)
        if parsed.code == SSL_REQUEST and self.tls_offered and not self.tls:
            if buf:
                # bytes sent before the handshake would be trusted as if encrypted
                return Refuse("08P01", "received unencrypted data after SSL request")
            self.upgrading = True
            return StartTls()
        if parsed.code in (SSL_REQUEST, GSSENC_REQUEST):
            return Answer(b"N")  # not offered; the client may go on in plaintext
        if self.tls_required and not self.tls:
            return Refuse("28000", "optimist: this proxy accepts TLS connections only "
                                   "(use sslmode=require)")
        rest = bytes(buf)
        buf.clear()
        return Forward(parsed, rest)
