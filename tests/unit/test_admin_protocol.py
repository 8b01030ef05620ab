"""The console's protocol handling, sans-IO: what a driver's message sequences get back."""

from __future__ import annotations

import struct

import pytest

from proxy.admin import Console
from proxy.admin.commands import CommandError, parse_command
from proxy.wire import messages as m
from proxy.wire.framing import MessageReader, ProtocolViolation, frame


class FakeOps:
    def __init__(self):
        self.paused = False

    def sessions(self):
        return [("127.0.0.1:1", "app", "db", "", "idle", 3, 7)]

    def pause(self):
        self.paused = True

    def __getattr__(self, name):
        return lambda: []


def messages(out: list[bytes]) -> list[tuple[bytes, bytes]]:
    reader = MessageReader()
    reader.feed(b"".join(out))
    return [(t, bytes(reader.buffer[s:e])) for t, s, e in reader.messages()]


def types(out) -> bytes:
    return b"".join(t for t, _ in messages(out))


def test_commands_are_case_and_space_free():
    assert parse_command("  show\n  Sessions ; ").name == "SHOW SESSIONS"
    assert parse_command(" ; ") is None
    with pytest.raises(CommandError) as err:
        parse_command("DROP TABLE x")
    assert err.value.sqlstate == "42601"


def test_simple_query_runs_each_statement_and_stops_at_an_error():
    ops = FakeOps()
    out = Console(ops).feed(m.encode_query(b"PAUSE; SHOW SESSIONS; nonsense; PAUSE"))
    assert types(out) == b"C" + b"TDC" + b"E" + b"Z"
    assert ops.paused
    (_, tag) = [x for x in messages(out) if x[0] == b"C"][1]
    assert tag == b"SHOW 1\x00"


def test_extended_protocol_with_binary_results():
    bind = m.Bind(b"", b"s1", [], [], [1]).encode()
    out = Console(FakeOps()).feed(
        m.Parse(b"s1", b"SHOW SESSIONS", ()).encode()
        + m.encode_describe(b"S", b"s1")
        + bind
        + m.encode_execute(b"")
        + m.SYNC
    )
    assert types(out) == b"1tT2DCZ"
    (row,) = [b for t, b in messages(out) if t == b"D"]
    values = m.decode_data_row(row)
    assert values[5] == struct.pack("!q", 3) and values[1] == b"app"


def test_an_error_skips_to_sync_and_the_connection_goes_on():
    console = Console(FakeOps())
    out = console.feed(
        m.Parse(b"", b"SELECT 1", ()).encode()
        + m.Bind(b"", b"", [], [], []).encode()
        + m.encode_execute(b"")
        + m.SYNC
        + m.encode_query(b"SHOW SESSIONS")
    )
    assert types(out) == b"EZ" + b"TDCZ"
    assert console.feed(m.TERMINATE) == [] and console.closing


def test_garbage_is_a_protocol_violation():
    with pytest.raises(ProtocolViolation):
        Console(FakeOps()).feed(frame(b"Q", b"no terminator"))
