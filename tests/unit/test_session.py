"""The session state machine, fed bytes directly: no sockets, no server."""

import struct

from proxy.session import Session
from proxy.session.actions import Send
from proxy.session.inflight import RELAYED, InternalEntry, InternalQuery, Kind
from proxy.wire import messages as m
from proxy.wire.framing import frame
from proxy.wire.startup import parse_startup


def startup():
    body = struct.pack("!I", 196608) + b"user\x00alice\x00database\x00shop\x00\x00"
    return parse_startup(struct.pack("!I", len(body) + 4) + body)


def ready(status=b"I"):
    return frame(b"Z", status)


def authed_session():
    s = Session(startup())
    s.server_data(
        frame(b"R", struct.pack("!i", 0))
        + frame(b"S", b"client_encoding\x00UTF8\x00")
        + frame(b"K", struct.pack("!i", 77) + b"secr")
        + ready()
    )
    s.take_output()
    return s


def test_authentication_phase_is_relayed_and_tracked():
    s = Session(startup())
    assert not s.authenticated
    auth = (
        frame(b"R", struct.pack("!i", 0)) + frame(b"K", struct.pack("!i", 77) + b"secr") + ready()
    )
    s.server_data(auth)
    to_server, to_client = s.take_output()
    assert b"".join(to_client) == auth
    assert s.authenticated and s.backend_key == (77, b"secr")
    assert s.info.parameters == {}


def test_simple_query_status_and_queue():
    s = authed_session()
    q = m.encode_query(b"begin; select 1")
    s.client_data(q)
    to_server, _ = s.take_output()
    assert b"".join(to_server) == q
    assert [p.kind for p in s.in_flight] == [Kind.QUERY]
    s.server_data(
        frame(b"C", b"BEGIN\x00") + frame(b"T", b"\x00\x00") + frame(b"C", b"SELECT 1\x00")
    )
    assert [p.kind for p in s.in_flight] == [Kind.QUERY]  # until its ReadyForQuery
    s.server_data(ready(b"T"))
    assert not s.in_flight and s.transaction_status == b"T"


def test_error_in_pipeline_skips_to_sync():
    s = authed_session()
    msgs = (
        m.Parse(b"", b"select 1/0", ()).encode()
        + m.Bind(b"", b"", [], [], []).encode()
        + m.encode_execute(b"")
        + m.SYNC
        + m.Parse(b"", b"select 1", ()).encode()
        + m.SYNC
    )
    s.client_data(msgs)
    assert [p.kind for p in s.in_flight] == [
        Kind.PARSE,
        Kind.BIND,
        Kind.EXECUTE,
        Kind.SYNC,
        Kind.PARSE,
        Kind.SYNC,
    ]
    s.server_data(
        frame(b"1", b"") + frame(b"2", b"") + m.error_response("22012", "division by zero")
    )
    assert [p.kind for p in s.in_flight] == [Kind.SYNC, Kind.PARSE, Kind.SYNC]
    s.server_data(ready() + frame(b"1", b"") + ready())
    assert not s.in_flight


def test_partial_messages_are_buffered_not_lost():
    s = authed_session()
    q = m.encode_query(b"select 42")
    s.client_data(q[:3])
    assert s.take_output()[0] == []
    s.client_data(q[3:])
    assert b"".join(s.take_output()[0]) == q
    reply = frame(b"C", b"SELECT 1\x00") + ready()
    s.server_data(reply[:4])
    s.server_data(reply[4:])
    assert b"".join(s.take_output()[1]) == reply
    assert not s.in_flight


class _Locking:
    """Just enough locking logic to drive the Session's own-query sub-protocol."""

    def __init__(self, job=None, on_bind=None):
        self.job, self.on_bind = job, on_bind

    def authenticated(self):
        return self.job

    def query(self, sql, raw):
        return None

    def parse(self, parse):
        return None

    def bind(self, bind, raw):
        return self.on_bind(bind) if self.on_bind else None

    def describe(self, kind, name, raw):
        return None

    def execute(self, portal, max_rows, raw):
        return None

    def close_target(self, kind, name):
        pass

    def sync(self):
        pass

    def row_description(self, entry, body):
        return None

    def data_row(self, entry, body):
        return None

    def command_complete(self, entry, tag):
        pass

    def error(self, entry, fields):
        return None

    def notice(self, fields):
        return None

    def ready(self, entry, status):
        pass

    def close(self):
        pass


def test_hidden_query_responses_are_consumed():
    seen = []

    def job():
        seen.append((yield InternalQuery("select 1")))

    s = Session(startup(), locking_for=lambda info: _Locking(job()))
    s.server_data(ready())
    to_server, _ = s.take_output()
    assert b"".join(to_server) == m.encode_query(b"select 1")
    s.client_data(m.encode_query(b"select 2"))  # held until the proxy's query has answered
    assert s.take_output() == ([], [])
    s.server_data(
        frame(b"T", b"\x00\x00")
        + m.encode_data_row([b"1"])
        + frame(b"C", b"SELECT 1\x00")
        + ready()
    )
    to_server, to_client = s.take_output()
    assert to_client == [] and b"".join(to_server) == m.encode_query(b"select 2")
    assert seen and seen[0].rows == [[b"1"]] and not seen[0].failed
    s.server_data(frame(b"C", b"SELECT 1\x00") + ready())
    _, to_client = s.take_output()
    assert b"".join(to_client) == frame(b"C", b"SELECT 1\x00") + ready()


def test_terminate_marks_closing():
    s = authed_session()
    s.client_data(m.TERMINATE)
    assert s.closing


def test_statement_types_for_both_protocols():
    s = authed_session()
    seen = []
    s = Session(startup(), count_statement=seen.append)
    s.server_data(ready())
    s.client_data(
        m.encode_query(b"  select 1")
        + m.encode_query(b"(SELECT 1)")
        + m.encode_query(b"update t set a = 1")
        + m.encode_query(b"vacuum")
    )
    s.client_data(
        m.Parse(b"s1", b"DELETE FROM t WHERE id = $1", ()).encode()
        + m.Bind(b"p", b"s1", [], [b"1"], []).encode()
        + m.encode_execute(b"p")
        + m.encode_execute(b"p")
        + m.SYNC
    )
    assert seen == ["select", "select", "update", "other", "delete", "delete"]


def test_error_of_a_hidden_request_made_for_the_client_reaches_the_client():
    def checked_form(bind):
        return Send(
            (
                m.Parse(b"optimist_1", b"bad sql", ()).encode(),
                m.Bind(b"", b"optimist_1", [], [], []).encode(),
            ),
            (InternalEntry(Kind.PARSE, surface=True), RELAYED[Kind.BIND]),
        )

    s = Session(startup(), locking_for=lambda info: _Locking(on_bind=checked_form))
    s.server_data(ready())
    s.client_data(m.Bind(b"", b"s", [], [], []).encode() + m.encode_execute(b"") + m.SYNC)
    s.take_output()
    s.server_data(m.error_response("42601", "syntax error") + ready())
    _, to_client = s.take_output()
    out = b"".join(to_client)
    assert b"could not prepare the checked form" in out and out.endswith(ready())
    assert not s.in_flight
