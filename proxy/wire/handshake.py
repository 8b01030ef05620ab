"""The startup handshake as a sans-IO state machine: fed the client's first bytes, it says
what to do (answer an encryption request, start TLS, forward a StartupMessage, forward a
CancelRequest, refuse with an error, close). No sockets here: the relay carries it out.

Each answer is PostgreSQL's own (ProcessStartupPacket in src/backend/tcop/backend_startup.c),
so a client cannot tell the proxy from the server before the server is even reached.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.wire import messages as m
from proxy.wire.startup import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    CancelRequest,
    StartupDropped,
    StartupPacket,
    StartupRefused,
    packet_length,
    parse_startup,
    unsupported_protocol,
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
    """Send `reply()` (a FATAL ErrorResponse) and close."""

    sqlstate: str
    message: str
    detail: str | None = None

    def reply(self) -> bytes:
        return m.error_response(self.sqlstate, self.message, severity="FATAL", detail=self.detail)


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
        # an encryption request of each kind is answered once; PostgreSQL reads a second one
        # as a startup packet of protocol 1234.5679 (or .5680) and refuses it
        self.ssl_done = False
        self.gss_done = False
        self._answered = ""  # which request the last Answer was for
        self.upgrading = False
        self.finished = False
        self.buffer = bytearray()

    def tls_started(self) -> None:
        self.tls = True
        self.ssl_done = self.gss_done = True
        self.upgrading = False

    def incomplete(self) -> str | None:
        """Why the client's EOF is worth a log line: it stopped inside a packet."""
        if self.finished or not self.buffer:
            return None
        return "incomplete startup packet"

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
            if isinstance(decision, Answer):
                if buf:
                    # sent before our answer could be read: PostgreSQL refuses it as possibly
                    # injected by a man in the middle
                    decisions.append(
                        Refuse(
                            "08P01",
                            f"received unencrypted data after {self._answered}",
                            detail=_MITM_DETAIL,
                        )
                    )
                    self.finished = True
                    break
                continue
            self.finished = not isinstance(decision, StartTls)
            break
        return decisions

    def _next(self, buf: bytearray) -> Decision | None:
        try:
            length = packet_length(buf)
        except StartupDropped as exc:
            return Close(str(exc))
        if length is None or len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        try:
            parsed = parse_startup(packet)
        except StartupDropped as exc:
            return Close(str(exc))
        except StartupRefused as exc:
            return _refuse(exc)
        if isinstance(parsed, CancelRequest):
            return Cancel(parsed)
        if parsed.code == SSL_REQUEST and not self.ssl_done:
            self.ssl_done = True
            if self.tls_offered:
                if buf:
                    # refused before any 'S': bytes sent ahead of the handshake must never be
                    # taken for bytes that came through TLS
                    return Refuse(
                        "08P01", "received unencrypted data after SSL request", detail=_MITM_DETAIL
                    )
                self.upgrading = True
                return StartTls()
            self._answered = "SSL request"
            return Answer(b"N")
        if parsed.code == GSSENC_REQUEST and not self.gss_done:
            self.gss_done = True
            self._answered = "GSSAPI encryption request"
            return Answer(b"N")  # GSSAPI encryption is never offered
        if parsed.code in (SSL_REQUEST, GSSENC_REQUEST):
            return _refuse(unsupported_protocol(parsed.code))
        if self.tls_required and not self.tls:
            return Refuse(
                "28000", "optimist: this proxy accepts TLS connections only (use sslmode=require)"
            )
        rest = bytes(buf)
        buf.clear()
        return Forward(parsed, rest)


_MITM_DETAIL = (
    "This could be either a client-software bug or evidence of an attempted "
    "man-in-the-middle attack."
)


def _refuse(exc: StartupRefused) -> Refuse:
    return Refuse(exc.sqlstate, exc.message)
