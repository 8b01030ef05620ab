"""The untyped packets of the startup phase: `length(4) | code(4) | payload`."""
from __future__ import annotations

from dataclasses import dataclass
from struct import Struct

from proxy.wire.framing import ProtocolViolation

_HEAD = Struct("!II")
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3 = 3 << 16

# PostgreSQL refuses startup packets whose body (after the length word) exceeds 10000 bytes
# (MAX_STARTUP_PACKET_LENGTH): 10004 bytes in all.
MAX_STARTUP_PACKET = 10000 + 4


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
    """Length of the packet at the start of `buf`, or None until 4 bytes arrived."""
    if len(buf) < 4:
        return None
    (length,) = Struct("!I").unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolViolation(f"invalid startup packet length {length}")
    return length


def parse_startup(packet: bytes) -> StartupPacket | CancelRequest:
    length, code = _HEAD.unpack_from(packet, 0)
    if code == CANCEL_REQUEST:
        if length < 16:
            raise ProtocolViolation("CancelRequest too short")
        (pid,) = Struct("!i").unpack_from(packet, 8)
        return CancelRequest(pid, bytes(packet[12:length]), bytes(packet[:length]))
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        if length != 8:
            raise ProtocolViolation("SSLRequest/GSSENCRequest must be 8 bytes")
        return StartupPacket(code, bytes(packet[:8]), {})
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    parts = bytes(packet[8:length]).split(b"\x00")
    # key, value, key, value, ..., "", ""  (the list ends with an empty key)
    params: dict[str, str] = {}
    it = iter(parts)
    for key in it:
        if not key:
            break
        value = next(it, None)
        if value is None:
            raise ProtocolViolation("startup packet parameter without a value")
        params[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    if "user" not in params:
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
    return StartupPacket(code, bytes(packet[:length]), params)
