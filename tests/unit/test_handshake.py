"""The startup handshake state machine, fed bytes: no sockets."""
import struct

from proxy.wire.handshake import Answer, Cancel, Forward, Handshake, Refuse, StartTls
from tests.support.rawpg import (cancel_request, gssenc_request, query, ssl_request,
                                 startup_packet)


def plaintext() -> Handshake:
    return Handshake(tls_offered=False, tls_required=False)


def test_startup_message_fed_byte_by_byte_is_forwarded_once_complete():
    packet = startup_packet(user="bob", database="db", application_name="x")
    hs = plaintext()
    for i in range(len(packet) - 1):
        assert hs.feed(packet[i:i + 1]) == []
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
