"""A tiny raw-socket client speaking just enough of the v3 protocol to send arbitrary bytes.

Use it for garbage, truncated packets, SSLRequest/GSSENCRequest/CancelRequest and for
clients that vanish mid-query.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


# --------------------------------------------------------------------------- frontend packets


def startup_packet(
    user: str = "postgres", database: str = "postgres", protocol: int = PROTOCOL_3_0, **params: str
) -> bytes:
    body = struct.pack("!I", protocol)
    for k, v in {"user": user, "database": database, **params}.items():
        body += k.encode() + b"\0" + str(v).encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!II", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid: int, key: bytes | int) -> bytes:
    if isinstance(key, int):
        key = struct.pack("!I", key)
    return struct.pack("!III", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def terminate() -> bytes:
    return message(b"X")


def sync() -> bytes:
    return message(b"S")


# --------------------------------------------------------------------------- backend messages


@dataclass
class Msg:
    kind: bytes
    payload: bytes

    @property
    def fields(self) -> dict[str, str]:
        """ErrorResponse/NoticeResponse fields by code letter (S, V, C, M, D, ...)."""
        out: dict[str, str] = {}
        for part in self.payload.split(b"\0"):
            if part:
                out[chr(part[0])] = part[1:].decode(errors="replace")
        return out

    def __repr__(self) -> str:
        return f"Msg({self.kind!r}, {self.payload[:60]!r})"


@dataclass
class Session:
    messages: list[Msg] = field(default_factory=list)
    backend_pid: int | None = None
    backend_key: bytes | None = None
    parameters: dict[str, str] = field(default_factory=dict)


class RawClient:
    """A blocking socket with message-level helpers. Every read is bounded by ``timeout``."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._buf = b""

    # -- context manager
    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, reset: bool = False) -> None:
        """Close; ``reset=True`` sends an RST (SO_LINGER 0) like a killed process might."""
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed after {len(self._buf)} of {n} bytes")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv_byte(self) -> bytes:
        return self.recv_exact(1)

    def recv_message(self) -> Msg:
        head = self.recv_exact(5)
        kind = head[:1]
        (length,) = struct.unpack("!I", head[1:])
        if length < 4 or length > 1 << 30:
            raise ValueError(f"bad message length {length} for {kind!r}")
        return Msg(kind, self.recv_exact(length - 4))

    def read_until(self, kinds: bytes | tuple[bytes, ...] = b"Z") -> list[Msg]:
        """Messages up to and including the first whose kind is in ``kinds``."""
        if isinstance(kinds, bytes):
            kinds = (kinds,)
        out = []
        while True:
            m = self.recv_message()
            out.append(m)
            if m.kind in kinds:
                return out

    def read_until_close(self, timeout: float | None = None) -> tuple[bytes, str]:
        """Everything the peer sends until it closes: (bytes, how) where how is
        'eof', 'reset' or 'timeout'."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        data, self._buf = self._buf, b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, "timeout"
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return data, "timeout"
            except (ConnectionResetError, BrokenPipeError):
                return data, "reset"
            if not chunk:
                return data, "eof"
            data += chunk

    def startup(self, user: str = "postgres", database: str = "postgres", **params: str) -> Session:
        """StartupMessage, then read through ReadyForQuery (trust auth expected)."""
        self.send(startup_packet(user, database, **params))
        s = Session()
        for m in self.read_until((b"Z", b"E")):
            s.messages.append(m)
            if m.kind == b"E":
                raise RuntimeError(f"startup failed: {m.fields}")
            if m.kind == b"K":
                s.backend_pid = struct.unpack("!I", m.payload[:4])[0]
                s.backend_key = m.payload[4:]
            elif m.kind == b"S":
                k, v, _ = m.payload.split(b"\0", 2)
                s.parameters[k.decode()] = v.decode()
            elif m.kind == b"R":
                (code,) = struct.unpack("!I", m.payload[:4])
                if code != 0:
                    raise RuntimeError(
                        f"authentication method {code} requested; tests expect trust"
                    )
        return s

    def simple_query(self, sql: str) -> list[Msg]:
        self.send(query(sql))
        return self.read_until(b"Z")


def rows(msgs: list[Msg]) -> list[list[str | None]]:
    """Text-format DataRow values of a simple query's messages."""
    out = []
    for m in msgs:
        if m.kind != b"D":
            continue
        (n,) = struct.unpack("!H", m.payload[:2])
        pos, row = 2, []
        for _ in range(n):
            (ln,) = struct.unpack("!i", m.payload[pos : pos + 4])
            pos += 4
            if ln < 0:
                row.append(None)
            else:
                row.append(m.payload[pos : pos + ln].decode())
                pos += ln
        out.append(row)
    return out
