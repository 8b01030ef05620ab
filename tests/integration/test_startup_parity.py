"""Every startup-phase oddity gets the answer PostgreSQL gives: the same raw bytes are sent
straight to PostgreSQL and through the proxy, and what comes back is compared (encryption
answer bytes, each message's type, an error's severity, SQLSTATE and text, and whether the
connection was closed, or reached ReadyForQuery).

PostgreSQL's rules (src/backend/tcop/backend_startup.c, ProcessStartupPacket): a bad length
word, a partial packet, a malformed CancelRequest are communication errors, logged and
answered by closing the socket without a word; a bad protocol version, a bad parameter
layout or a missing user name get a FATAL ErrorResponse.
"""

from __future__ import annotations

import re
import socket
import struct
import time

import pytest

from tests.support.rawpg import (
    CANCEL_REQUEST_CODE,
    PROTOCOL_3_0,
    Msg,
    cancel_request,
    gssenc_request,
    query,
    ssl_request,
    startup_packet,
    terminate,
)


def _packet(body: bytes) -> bytes:
    return struct.pack("!I", len(body) + 4) + body


def _startup_body(*pairs: bytes, protocol: int = PROTOCOL_3_0) -> bytes:
    return struct.pack("!I", protocol) + b"".join(pairs)


HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
CLIENT_HELLO = bytes.fromhex("16030100a5010000a10303") + b"\0" * 160

# name -> (steps, then_eof). A step is (bytes to send, number of one-byte answers to read
# before the next step: the 'S'/'N' of an encryption request). then_eof: half-close after the
# last step, for the cases about a client that stops sending.
CASES: dict[str, tuple[list[tuple[bytes, int]], bool]] = {
    # ---- nothing, or a partial packet, then EOF: closed without a word
    "nothing": ([], True),
    "partial-length-word": ([(b"\0\0", 0)], True),
    "eof-inside-packet": ([(startup_packet()[:-7], 0)], True),
    "eof-after-ssl-n": ([(ssl_request(), 1)], True),
    # ---- invalid length word: closed without a word, as soon as the 4 bytes are in
    "length-zero": ([(b"\0" * 8, 0)], False),
    "length-4": ([(struct.pack("!II", 4, PROTOCOL_3_0), 0)], False),
    "length-7": ([(struct.pack("!I", 7) + b"\0\3\0", 0)], False),
    "length-10005": ([(struct.pack("!II", 10005, PROTOCOL_3_0) + b"x" * 200, 0)], False),
    "length-huge": ([(struct.pack("!II", 0xFFFFFFF0, PROTOCOL_3_0) + b"x" * 100, 0)], False),
    # node-postgres quick-disconnect: Terminate queued before the StartupMessage
    "terminate-before-startup": ([(terminate() + startup_packet(), 0)], False),
    "query-before-startup": ([(query("select 1"), 0)], False),
    "http": ([(HTTP, 0)], False),
    "tls-client-hello-without-ssl-request": ([(CLIENT_HELLO, 0)], False),
    # ---- protocol versions
    "protocol-2.0": ([(startup_packet(protocol=2 << 16), 0)], False),
    "protocol-9.9": ([(startup_packet(protocol=(9 << 16) | 9), 0)], False),
    "unknown-request-code": ([(struct.pack("!II", 8, (1234 << 16) | 5681), 0)], False),
    "protocol-3.1": ([(startup_packet(protocol=(3 << 16) | 1), 0)], False),
    "protocol-3.2": ([(startup_packet(protocol=(3 << 16) | 2), 0)], False),
    "protocol-3.9": ([(startup_packet(protocol=(3 << 16) | 9), 0)], False),
    "protocol-option": ([(startup_packet(**{"_pq_.frobnicate": "on"}), 0)], False),
    # ---- parameters
    "no-user": ([(_packet(_startup_body(b"database\0postgres\0\0")), 0)], False),
    "empty-user": ([(_packet(_startup_body(b"user\0\0database\0postgres\0\0")), 0)], False),
    "no-terminator": ([(_packet(_startup_body(b"user\0postgres\0")), 0)], False),
    "missing-value": ([(_packet(_startup_body(b"user\0postgres\0database\0")), 0)], False),
    "bytes-after-terminator": ([(_packet(_startup_body(b"user\0postgres\0\0junk")), 0)], False),
    "bad-replication-value": ([(startup_packet(replication="maybe"), 0)], False),
    # ---- encryption requests
    "ssl-then-startup": ([(ssl_request(), 1), (startup_packet(), 0)], False),
    "gss-then-ssl-then-startup": (
        [(gssenc_request(), 1), (ssl_request(), 1), (startup_packet(), 0)],
        False,
    ),
    # each kind of request is answered once, whatever came between
    "ssl-gss-ssl": ([(ssl_request(), 1), (gssenc_request(), 1), (ssl_request(), 0)], False),
    "gss-ssl-gss": ([(gssenc_request(), 1), (ssl_request(), 1), (gssenc_request(), 0)], False),
    "ssl-twice": ([(ssl_request(), 1), (ssl_request(), 0)], False),
    "gss-twice": ([(gssenc_request(), 1), (gssenc_request(), 0)], False),
    "startup-pipelined-behind-ssl-request": ([(ssl_request() + startup_packet(), 1)], False),
    "startup-pipelined-behind-gss-request": ([(gssenc_request() + startup_packet(), 1)], False),
    "garbage-after-ssl-n": ([(ssl_request(), 1), (HTTP, 0)], False),
    "terminate-after-ssl-n": ([(ssl_request(), 1), (terminate(), 0)], False),
    # ---- cancel requests: never answered
    "cancel-unknown-backend": ([(cancel_request(1, b"\1\2\3\4"), 0)], False),
    "cancel-without-pid": ([(struct.pack("!II", 8, CANCEL_REQUEST_CODE), 0)], False),
    "cancel-without-key": ([(struct.pack("!III", 12, CANCEL_REQUEST_CODE, 1), 0)], False),
    "cancel-key-257-bytes": ([(cancel_request(1, b"k" * 257), 0)], False),
}


def outcome(host: str, port: int, steps: list[tuple[bytes, int]], then_eof: bool) -> dict:
    """What the server at host:port answers to `steps`: the answer bytes, the messages up to
    ReadyForQuery or the end, and how it ended ('ready', 'closed' or 'open')."""
    with socket.create_connection((host, port), timeout=10) as sock:
        answers = b""
        buf = b""
        for payload, n_answers in steps:
            sock.sendall(payload)
            while len(buf) < n_answers:
                chunk = sock.recv(1)
                if not chunk:
                    break
                buf += chunk
            answers += buf[:n_answers]
            buf = buf[n_answers:]
        if then_eof:
            sock.shutdown(socket.SHUT_WR)
        messages, end = _read_messages(sock, buf)
    return {"answers": answers, "messages": messages, "end": end}


def _read_messages(sock: socket.socket, buf: bytes, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    messages = []
    while True:
        if buf.startswith(b"EFATAL:") and buf.endswith(b"\0"):
            # protocol 2's ErrorResponse (a client asking for 2.0 gets its refusal in 2.0)
            messages.append(("E-v2", _same_meaning(buf[1:-1].decode())))
            buf = b""
        while len(buf) >= 5:
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            msg = Msg(buf[:1], buf[5 : 1 + length])
            buf = buf[1 + length :]
            messages.append(_summary(msg))
            if msg.kind == b"Z":
                return messages, "ready"
        left = deadline - time.monotonic()
        if left <= 0:
            return messages + ([("partial", buf)] if buf else []), "open"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return messages + ([("partial", buf)] if buf else []), "closed"
        buf += chunk


def _same_meaning(text: str) -> str:
    # PostgreSQL names the protocol range it supports ("server supports 3.0 to 3.2"); the proxy
    # cannot know the server's before connecting to it, and relays any 3.x the server accepts:
    # the text after the requested version differs on purpose
    return re.sub(
        r"(unsupported frontend protocol \d+\.\d+): .*", r"\1: ...", text, flags=re.DOTALL
    )


def _summary(msg: Msg) -> tuple:
    if msg.kind in (b"E", b"N"):
        f = msg.fields
        return (
            msg.kind.decode(),
            f.get("S"),
            f.get("V"),
            f.get("C"),
            _same_meaning(f.get("M")),
            f.get("D"),
        )
    if msg.kind in (b"R", b"v", b"Z"):
        return (msg.kind.decode(), msg.payload)
    # ParameterStatus values and the cancel key differ from one backend to the next
    return (msg.kind.decode(),)


@pytest.mark.parametrize("name", list(CASES))
def test_startup_oddity_answered_as_postgresql_does(pg, proxy, name):
    if getattr(pg, "external", False):
        pytest.skip("compares with the embedded server's own answers")
    steps, then_eof = CASES[name]
    direct = outcome(pg.host, pg.port, steps, then_eof)
    proxied = outcome(proxy.host, proxy.port, steps, then_eof)
    if name == "protocol-2.0":
        # PostgreSQL answers a 2.x client in protocol 2's format ("EFATAL:  ...\n\0"); the proxy
        # speaks protocol 3 only (its fuzz test holds every reply to a well-formed v3 stream).
        # Same refusal, same text, then closed either way.
        [(kind, text)] = direct.pop("messages")
        assert kind == "E-v2" and text.startswith("FATAL:  ")
        assert proxied.pop("messages") == [("E", "FATAL", "FATAL", "0A000", text[8:], None)]
    assert proxied == direct, f"{name}:\n direct  {direct}\n proxied {proxied}"
