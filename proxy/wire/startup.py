"""The untyped packets of the startup phase: `length(4) | code(4) | payload`.

The checks and their outcomes follow PostgreSQL's ProcessStartupPacket
(src/backend/tcop/backend_startup.c): what it treats as a communication error (logged, the
socket closed without a word) raises `StartupDropped`; what it answers with a FATAL
ErrorResponse raises `StartupRefused`.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct

from proxy.wire.framing import ProtocolViolation

_HEAD = Struct("!II")
_I32 = Struct("!I")
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3 = 3 << 16

# PostgreSQL refuses startup packets whose body (after the length word) exceeds 10000 bytes
# (MAX_STARTUP_PACKET_LENGTH): 10004 bytes in all.
MAX_STARTUP_PACKET = 10000 + 4
# a cancel key is 4 bytes up to protocol 3.1, up to 256 bytes from 3.2 on
MAX_CANCEL_KEY = 256


class StartupDropped(ProtocolViolation):
    """PostgreSQL closes the connection without a word (it only logs a COMMERROR)."""


class StartupRefused(ProtocolViolation):
    """PostgreSQL answers with a FATAL ErrorResponse and closes."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


@dataclass(slots=True)
class StartupPacket:
    code: int
    raw: bytes  # the whole packet, to forward unchanged
    params: dict[str, str]

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        return self.params.get("database") or self.user


@dataclass(slots=True)
class CancelRequest:
    pid: int
    secret: bytes
    raw: bytes


def packet_length(buf: bytes | bytearray) -> int | None:
    """Length of the packet at the start of `buf`, or None until 4 bytes arrived. Judged on
    the length word alone, as PostgreSQL does: a Terminate or a query sent before the startup
    packet is refused here, without waiting for bytes that may never come."""
    if len(buf) < 4:
        return None
    length: int
    (length,) = _I32.unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise StartupDropped(f"invalid length of startup packet: {length}")
    return length


def unsupported_protocol(code: int) -> StartupRefused:
    major, minor = code >> 16, code & 0xFFFF
    # PostgreSQL names its own range ("server supports 3.0 to 3.2"); the proxy cannot know the
    # server's, and relays any 3.x the server agrees to. PostgreSQL answers a 2.x client in
    # protocol 2's format; the proxy speaks protocol 3 only (either way the client is refused)
    return StartupRefused(
        "0A000", f"unsupported frontend protocol {major}.{minor}: optimist supports 3.0 to 3.x"
    )


def parse_startup(packet: bytes) -> StartupPacket | CancelRequest:
    length, code = _HEAD.unpack_from(packet, 0)
    if code == CANCEL_REQUEST:
        if length < 16 - 4:
            raise StartupDropped("invalid length of cancel request packet")
        key_length = length - 12
        if key_length == 0 or key_length > MAX_CANCEL_KEY:
            raise StartupDropped("invalid length of cancel key in cancel request packet")
        (pid,) = Struct("!i").unpack_from(packet, 8)
        return CancelRequest(pid, bytes(packet[12:length]), bytes(packet[:length]))
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        return StartupPacket(code, bytes(packet[:length]), {})  # PostgreSQL ignores any body
    if code >> 16 != 3:
        raise unsupported_protocol(code)
    params = _parameters(bytes(packet[8:length]))
    if not params.get("user"):
        raise StartupRefused("28000", "no PostgreSQL user name specified in startup packet")
    return StartupPacket(code, bytes(packet[:length]), params)


def _parameters(body: bytes) -> dict[str, str]:
    """`key\\0value\\0 ... \\0`: exactly one terminator, as the packet's last byte."""
    params: dict[str, str] = {}
    end = len(body)
    offset = 0
    while offset < end:
        key_end = body.find(b"\0", offset)
        if key_end < 0:
            key_end = end  # PostgreSQL reads up to the zero byte it appends to the packet
        if key_end == offset:
            break  # the terminator
        if key_end + 1 >= end:
            break  # a key without a value: the layout check below complains
        value_end = body.find(b"\0", key_end + 1)
        if value_end < 0:
            value_end = end
        key = body[offset:key_end].decode("utf-8", "replace")
        params[key] = body[key_end + 1 : value_end].decode("utf-8", "replace")
        offset = value_end + 1
    if offset != end - 1:
        raise StartupRefused(
            "08P01", "invalid startup packet layout: expected terminator as last byte"
        )
    return params
