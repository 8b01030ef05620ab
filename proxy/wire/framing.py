"""Splitting a PostgreSQL v3 byte stream into messages, looking only at headers.

Every message after the startup phase is `type(1) | length(4, includes itself) | body`.
The reader keeps one growing buffer and hands out (type, body) pairs of complete messages; the
relay forwards the raw bytes of runs of messages it has no interest in, so a DataRow-heavy
result costs one header unpack per row and no copies.
"""

from __future__ import annotations

from struct import Struct

HEADER = Struct("!cI")
_unpack_header = HEADER.unpack_from

# A message larger than this is refused as a protocol violation unless configured otherwise.
DEFAULT_MAX_MESSAGE = 1 << 30
# What the server may send is the server's business (PostgreSQL's own limit is 1 GB).
SERVER_MAX_MESSAGE = (1 << 31) - 1
# Every message type a frontend may send (protocol 3.0/3.2), for MessageReader.valid_types.
FRONTEND_TYPES = frozenset(bytes([c]) for c in b"QPBDECSHFXdcfp")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid PostgreSQL message stream."""


class MessageReader:
    """Accumulates bytes; yields complete messages as (type byte, start, end) offsets.

    Offsets point into `self.buffer`; they stay valid until `consume()` is called.
    """

    __slots__ = ("buffer", "max_message", "valid_types")

    def __init__(
        self, max_message: int = DEFAULT_MAX_MESSAGE, valid_types: frozenset[bytes] | None = None
    ) -> None:
        self.buffer = bytearray()
        self.max_message = max_message
        # checked on every header, complete or not: a bad type is refused at once, as
        # PostgreSQL does, instead of waiting for a body its length field invents
        self.valid_types = valid_types

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def messages(self) -> list[tuple[bytes, int, int]]:
        """All complete messages in the buffer: (type, body_start, body_end)."""
        buf = self.buffer
        size = len(buf)
        pos = 0
        out: list[tuple[bytes, int, int]] = []
        append = out.append
        valid = self.valid_types
        while size - pos >= 5:
            mtype, length = _unpack_header(buf, pos)
            if valid is not None and mtype not in valid:
                raise ProtocolViolation(f"invalid frontend message type {mtype[0]}")
            if length < 4 or length > self.max_message:
                raise ProtocolViolation(
                    f"invalid message length {length} for message type {mtype!r}"
                )
            end = pos + 1 + length
            if end > size:
                break
            append((mtype, pos + 5, end))
            pos = end
        if valid is not None and pos < size and bytes(buf[pos : pos + 1]) not in valid:
            raise ProtocolViolation(f"invalid frontend message type {buf[pos]}")
        return out

    def consume(self, upto: int) -> None:
        del self.buffer[:upto]

    def pending_bytes(self) -> int:
        return len(self.buffer)


def frame(mtype: bytes, body: bytes) -> bytes:
    """One message with its header."""
    return HEADER.pack(mtype, len(body) + 4) + body
