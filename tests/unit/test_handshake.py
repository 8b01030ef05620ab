"""The startup handshake state machine, fed bytes: no sockets."""

import struct

from proxy.wire.handshake import (
    Answer,
    Cancel,
    Close,
    Forward,
    Handshake,
    Refuse,
    StartTls,
)
from tests.support.rawpg import (
    cancel_request,
    gssenc_request,
    query,
    ssl_request,
    startup_packet,
)


def plaintext() -> Handshake:
    return Handshake(tls_offered=False, tls_required=False)


def test_startup_message_fed_byte_by_byte_is_forwarded_once_complete():
    packet = startup_packet(user="bob", database="db", application_name="x")
    hs = plaintext()
    for i in range(len(packet) - 1):
        assert hs.feed(packet[i : i + 1]) == []
    [decision] = hs.feed(packet[-1:])
    assert isinstance(decision, Forward)
    assert decision.startup.raw == packet and decision.rest == b""
    assert decision.startup.params == {"user": "bob", "database": "db", "application_name": "x"}


def test_pipelined_bytes_after_the_startup_message_are_handed_on():
    packet = startup_packet()
    [decision] = plaintext().feed(packet + query("select 1"))
    assert isinstance(decision, Forward) and decision.rest == query("select 1")


def test_encryption_requests_answered_n_when_tls_is_not_offered():
    hs = plaintext()
    assert hs.feed(gssenc_request()) == [Answer(b"N")]
    assert hs.feed(ssl_request()) == [Answer(b"N")]
    [decision] = hs.feed(startup_packet())
    assert isinstance(decision, Forward)


def test_ssl_request_starts_tls_when_offered_and_plaintext_resumes_only_after():
    hs = Handshake(tls_offered=True, tls_required=True)
    assert hs.feed(ssl_request()) == [StartTls()]
    hs.tls_started()
    [decision] = hs.feed(startup_packet())
    assert isinstance(decision, Forward)


def test_bytes_smuggled_behind_the_ssl_request_are_refused_before_any_s():
    hs = Handshake(tls_offered=True, tls_required=False)
    [decision] = hs.feed(ssl_request() + startup_packet())
    assert isinstance(decision, Refuse) and decision.sqlstate == "08P01"


def test_plaintext_startup_refused_when_tls_is_required():
    hs = Handshake(tls_offered=True, tls_required=True)
    [decision] = hs.feed(startup_packet())
    assert isinstance(decision, Refuse) and decision.sqlstate == "28000"


def test_cancel_request_is_forwarded_with_its_raw_bytes():
    packet = cancel_request(4321, b"\x01\x02\x03\x04")
    [decision] = plaintext().feed(packet)
    assert isinstance(decision, Cancel)
    assert decision.request.pid == 4321 and decision.request.raw == packet


def test_nothing_more_is_decided_after_the_handshake_ended():
    hs = plaintext()
    [decision] = hs.feed(startup_packet())
    assert isinstance(decision, Forward)
    assert hs.feed(struct.pack("!II", 8, 80877103)) == []


# --------------------------------------------------------------------------- PostgreSQL's answers


def test_terminate_before_the_startup_message_is_closed_without_a_reply():
    """node-postgres' quick connect-then-end: the length word reads 0x58000000."""
    [decision] = plaintext().feed(b"X\0\0\0\x04")
    assert isinstance(decision, Close) and "invalid length of startup packet" in decision.reason


def test_length_word_is_judged_before_the_rest_arrives():
    [decision] = plaintext().feed(struct.pack("!I", 10005))
    assert isinstance(decision, Close)
    assert plaintext().feed(struct.pack("!I", 10004)) == []


def test_malformed_cancel_requests_are_closed_without_a_reply():
    for packet in (
        struct.pack("!II", 8, 80877102),
        struct.pack("!III", 12, 80877102, 1),
        cancel_request(1, b"k" * 257),
    ):
        [decision] = plaintext().feed(packet)
        assert isinstance(decision, Close), packet


def test_a_second_request_of_a_kind_reads_as_an_unsupported_protocol():
    hs = plaintext()
    assert hs.feed(ssl_request()) == [Answer(b"N")]
    assert hs.feed(gssenc_request()) == [Answer(b"N")]
    [decision] = hs.feed(ssl_request())
    assert isinstance(decision, Refuse) and decision.sqlstate == "0A000"
    assert decision.message.startswith("unsupported frontend protocol 1234.5679:")


def test_ssl_request_inside_tls_is_refused():
    hs = Handshake(tls_offered=True, tls_required=False)
    assert hs.feed(ssl_request()) == [StartTls()]
    hs.tls_started()
    [decision] = hs.feed(gssenc_request())
    assert isinstance(decision, Refuse) and decision.sqlstate == "0A000"


def test_bytes_pipelined_behind_an_n_are_refused_after_it():
    answer, refusal = plaintext().feed(ssl_request() + startup_packet())
    assert answer == Answer(b"N")
    assert isinstance(refusal, Refuse) and refusal.sqlstate == "08P01"
    assert refusal.message == "received unencrypted data after SSL request"


def test_other_major_protocol_versions_are_refused_with_0a000():
    for major in (2, 4):
        [decision] = plaintext().feed(startup_packet(protocol=major << 16))
        assert isinstance(decision, Refuse) and decision.sqlstate == "0A000"
        assert decision.message.startswith(f"unsupported frontend protocol {major}.0:")


def test_parameter_layout_and_user_checked_as_postgresql_does():
    def packet(body: bytes) -> bytes:
        body = struct.pack("!I", 3 << 16) + body
        return struct.pack("!I", len(body) + 4) + body

    for body, sqlstate in [
        (b"user\0bob\0", "08P01"),
        (b"user\0bob\0\0x", "08P01"),
        (b"user\0bob\0database\0", "08P01"),
        (b"database\0db\0\0", "28000"),
        (b"user\0\0\0", "28000"),
    ]:
        [decision] = plaintext().feed(packet(body))
        assert isinstance(decision, Refuse) and decision.sqlstate == sqlstate, body
    [decision] = plaintext().feed(packet(b"user\0bob\0user\0eve\0\0"))
    assert isinstance(decision, Forward) and decision.startup.user == "eve"


def test_eof_inside_a_packet_is_worth_a_log_line_eof_before_any_byte_is_not():
    hs = plaintext()
    assert hs.incomplete() is None
    hs.feed(startup_packet()[:10])
    assert hs.incomplete() == "incomplete startup packet"
