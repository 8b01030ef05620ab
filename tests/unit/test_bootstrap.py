"""A catalog query that fails must not hold the client's statement forever (sans-IO)."""

from __future__ import annotations

from proxy.session.machine import Session
from proxy.wire import messages as m
from proxy.wire.startup import parse_startup
from tests.unit.test_fuzz_wire import (
    AUTH_OK,
    frame,
    make_enforcement,
    settings_response,
    startup_packet,
)


def test_failed_catalog_query_lets_the_held_statement_run(tmp_path_factory):
    service = make_enforcement(tmp_path_factory)
    s = Session(parse_startup(startup_packet()), locking_for=service.locking_for)
    s.server_data(AUTH_OK)
    s.take_output()
    s.server_data(settings_response())  # the printing settings, asked first
    s.take_output()
    assert s.in_flight and s.in_flight[0].hidden  # the catalog query went out
    failure = frame(b"E", b"SERROR\x00C57014\x00Mcanceling statement\x00\x00") + frame(b"Z", b"I")
    s.server_data(failure)
    s.take_output()
    s.client_data(m.encode_query(b"SELECT 1"))
    to_server, _ = s.take_output()
    # the statement itself goes out, not another catalog query in its place
    assert to_server == [m.encode_query(b"SELECT 1")]
