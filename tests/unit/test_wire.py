"""The wire codec: framing by headers only, the decoders, and hostile bytes."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import messages as m
from proxy.wire.framing import MessageReader, ProtocolViolation, frame
from proxy.wire.startup import CancelRequest, packet_length, parse_startup


def test_reader_splits_messages_fed_byte_by_byte():
    stream = frame(b"Q", b"select 1\x00") + frame(b"S", b"") + frame(b"X", b"")
    reader = MessageReader()
    seen = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        msgs = reader.messages()
        for t, s, e in msgs:
            seen.append((t, bytes(reader.buffer[s:e])))
        if msgs:
            reader.consume(msgs[-1][2])
    assert seen == [(b"Q", b"select 1\x00"), (b"S", b""), (b"X", b"")]


def test_reader_refuses_impossible_lengths():
    reader = MessageReader(max_message=1000)
    reader.feed(b"Q" + struct.pack("!I", 2))
    with pytest.raises(ProtocolViolation):
        reader.messages()
    reader = MessageReader(max_message=1000)
    reader.feed(b"Q" + struct.pack("!I", 5000))
    with pytest.raises(ProtocolViolation):
        reader.messages()


def test_bind_round_trip():
    bind = m.Bind(b"p", b"s", [1, 0], [b"\x00\x00\x00\x2a", None], [1])
    body = bind.encode()[5:]
    again = m.decode_bind(body)
    assert again == bind
    assert again.param_format(0) == 1 and again.param_format(1) == 0


def test_parse_round_trip():
    parse = m.Parse(b"stmt", b"select $1", (23,))
    assert m.decode_parse(parse.encode()[5:]) == parse


def test_row_description_and_data_row_round_trip():
    fields = (m.Field(b"id", 16384, 1, 23, 4, -1, 0), m.Field(b"v", 16384, 3, 23, 4, -1, 1))
    assert m.decode_row_description(m.encode_row_description(fields)[5:]) == fields
    row = [b"42", None, b""]
    assert m.decode_data_row(m.encode_data_row(row)[5:]) == row


def test_error_fields_round_trip():
    data = m.error_response("40001", "conflict", detail="{}", hint="retry")
    assert m.decode_fields(data[5:]) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "40001",
        "M": "conflict",
        "D": "{}",
        "H": "retry",
    }


def test_command_rows():
    assert m.command_rows(b"UPDATE 3") == 3
    assert m.command_rows(b"INSERT 0 7") == 7
    assert m.command_rows(b"BEGIN") is None


def test_startup_packets():
    body = struct.pack("!I", 196608) + b"user\x00bob\x00database\x00db\x00\x00"
    packet = struct.pack("!I", len(body) + 4) + body
    assert packet_length(packet) == len(packet)
    parsed = parse_startup(packet)
    assert parsed.user == "bob" and parsed.database == "db" and parsed.raw == packet
    cancel = struct.pack("!IIi", 16, 80877102, 1234) + b"abcd"
    c = parse_startup(cancel)
    assert isinstance(c, CancelRequest) and c.pid == 1234 and c.secret == b"abcd"
    with pytest.raises(ProtocolViolation):
        packet_length(struct.pack("!I", 1 << 20))
    no_user = struct.pack("!I", 196608) + b"database\x00db\x00\x00"
    with pytest.raises(ProtocolViolation):
        parse_startup(struct.pack("!I", len(no_user) + 4) + no_user)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_never_raise_anything_but_protocol_violation(data):
    for decode in (
        m.decode_bind,
        m.decode_parse,
        m.decode_describe_or_close,
        m.decode_execute,
        m.decode_row_description,
        m.decode_data_row,
        m.decode_fields,
        m.decode_parameter_status,
        m.decode_backend_key,
        m.decode_query,
    ):
        try:
            decode(data)
        except ProtocolViolation:
            pass
