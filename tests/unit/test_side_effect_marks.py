"""What the session vouches for when a row version is its own transaction's (issue 11, case 4;
proxy.locking.side_effects): the flag its checked writes hand the guard function, in both
protocols, and when a transaction's marks are forgotten. The races themselves run against a
real server in tests/integration/test_side_effects.py."""

from __future__ import annotations

import pytest

from proxy.locking.side_effects import LOCKED, MAX_LOCKED, READ, OwnChanges, lock_query
from proxy.values import ReadValue
from proxy.wire import messages as m
from tests.support.sansio import (
    BIND_COMPLETE,
    PARSE_COMPLETE,
    RecordingMetrics,
    Wire,
    complete,
    data_row,
    make_service,
    ready,
    row_description,
    write_rules,
)

UPDATE_1 = "UPDATE accounts SET balance = 5 WHERE id = 1"
NONE, AS_READ, AS_LOCKED = "'own', NULL::text", "'own', 'read'::text", "'own', 'locked'::text"


@pytest.fixture
def wire(tmp_path):
    return Wire(make_service(write_rules(tmp_path), RecordingMetrics()))


def statement(wire: Wire, sql: str, tag: bytes) -> None:
    wire.query(sql)
    wire.server(complete(tag), ready(b"T" if tag != b"COMMIT" else b"I"))


def own(sql: str) -> str:
    for flag in (NONE, AS_READ, AS_LOCKED):
        if flag in sql:
            return flag
    raise AssertionError(sql)


def test_a_read_of_this_transaction_is_vouched_for_as_read(wire):
    statement(wire, "BEGIN ISOLATION LEVEL REPEATABLE READ", b"BEGIN")
    wire.read("accounts", 1, 3)
    assert own(wire.query(UPDATE_1)) == AS_READ


def test_a_read_of_an_earlier_transaction_is_not(wire):
    wire.read("accounts", 1, 3)  # autocommit: its transaction ended at ReadyForQuery
    statement(wire, "BEGIN", b"BEGIN")
    assert own(wire.query(UPDATE_1)) == NONE
    wire.server(complete(b"UPDATE 0"), ready(b"T"))
    statement(wire, "COMMIT", b"COMMIT")
    statement(wire, "BEGIN", b"BEGIN")
    wire.read("accounts", 1, 3)
    statement(wire, "COMMIT", b"COMMIT")
    statement(wire, "BEGIN", b"BEGIN")
    assert own(wire.query(UPDATE_1)) == NONE


def test_a_value_learned_from_the_own_checked_write_is_vouched_for_as_locked(wire):
    statement(wire, "BEGIN", b"BEGIN")
    wire.read("accounts", 1, 3)
    sql = wire.query(UPDATE_1)
    assert "RETURNING" in sql
    # the proxy's RETURNING row of the checked write: learned, then stripped
    wire.server(
        row_description("accounts", ["id", "version"]),
        data_row(b"1", b"4"),
        complete(b"UPDATE 1"),
        ready(b"T"),
    )
    assert wire.version_read("accounts", 1) == "4"
    assert own(wire.query(UPDATE_1)) == AS_LOCKED
    wire.server(complete(b"UPDATE 0"), ready(b"T"))
    # a savepoint rolled back releases its row locks: nothing is vouched for any more
    statement(wire, "SAVEPOINT s", b"SAVEPOINT")
    statement(wire, "ROLLBACK TO SAVEPOINT s", b"ROLLBACK")
    assert own(wire.query(UPDATE_1)) == NONE


def test_the_extended_protocol_carries_the_flag_in_the_form_not_as_a_parameter(wire):
    statement(wire, "BEGIN", b"BEGIN")
    wire.read("accounts", 1, 3)
    sent = wire.client(
        m.Parse(b"u", b"UPDATE accounts SET balance = $1 WHERE id = $2", ()).encode(),
        m.Bind(b"", b"u", [0], [b"5", b"1"], []).encode(),
        m.encode_execute(b""),
        m.SYNC,
    )
    parse = m.decode_parse(sent[1][1])
    assert own(parse.query.decode()) == AS_READ
    assert m.decode_bind(sent[2][1]).params == [b"5", b"1", b"3"]
    wire.server(PARSE_COMPLETE, PARSE_COMPLETE, BIND_COMPLETE, complete(b"UPDATE 0"), ready(b"T"))
    # the same statement with nothing vouched for: another hidden form
    statement(wire, "COMMIT", b"COMMIT")
    wire.read("accounts", 1, 3)
    sent = wire.client(
        m.Bind(b"", b"u", [0], [b"5", b"1"], []).encode(), m.encode_execute(b""), m.SYNC
    )
    assert own(m.decode_parse(sent[0][1]).query.decode()) == NONE


def test_marks_need_every_compared_column_and_a_re_read_keeps_locked():
    own_changes = OwnChanges()
    key = (1, (1,))
    own_changes.mark(key, ["version"], LOCKED)
    own_changes.mark(key, ["version", "owner"], READ)
    assert own_changes.flag(key, ["version"]) == LOCKED
    assert own_changes.flag(key, ["version", "owner"]) == READ
    assert own_changes.flag(key, ["version", "balance"]) is None
    own_changes.transaction_ended()
    assert own_changes.flag(key, ["version"]) is None


class _Table:
    oid, schema, name, key, mode, scope = 7, "public", "orders", ("id",), "enforce", "session"
    column_types = {"id": "integer", "total": "numeric(12,2)"}
    column_type_oids = {"id": 23, "total": 1700}


def test_the_lock_statement_compares_read_values_and_its_answer_marks_locked():
    own = OwnChanges()
    table = _Table()
    values = {(7, (1,)): {"total": ReadValue(0, 1700, b"10.00")}, (7, (2,)): None}
    own.mark((7, (1,)), ["total"], READ)
    own.mark((7, (2,)), ["total"], READ)  # evicted from the store since: not a candidate
    request = lock_query(own, {7: table}.get, lambda t, k: values[k], "utf-8", True, "pg_temp")
    assert request is not None and len(request.rows) == 1
    assert "id = CAST('1' AS integer)" in request.sql
    assert "total IS NOT DISTINCT FROM CAST('10.00' AS numeric(12,2))" in request.sql
    assert "FOR NO KEY UPDATE" in request.sql
    request.answered(None)  # nothing locked (or the function caught an error)
    assert own.flag((7, (1,)), ["total"]) == READ
    request.answered(b"{0}")
    assert own.flag((7, (1,)), ["total"]) == LOCKED
    # an answer that arrives after its transaction ended marks nothing
    own.transaction_ended()
    own.mark((7, (1,)), ["total"], READ)
    request.answered(b"{0}")
    assert own.flag((7, (1,)), ["total"]) == READ


def test_past_the_bound_nothing_is_locked():
    own = OwnChanges()
    for i in range(MAX_LOCKED + 1):
        own.mark((7, (i,)), ["total"], READ)
    row = {"total": ReadValue(0, 1700, b"1")}
    assert lock_query(own, {7: _Table()}.get, lambda t, k: row, "utf-8", True, "pg_temp") is None
