"""The hot path's caches (issue 12): a Parse classified as writing nothing protected, and a
capture plan per RowDescription shape, are kept per DatabaseTables, so a rules reload or a
DDL refresh (new tables) decides again instead of serving what the old rules decided."""

from __future__ import annotations

from proxy.catalog import CATALOG_COLUMNS
from proxy.wire import messages as m
from proxy.wire.framing import frame
from tests.support.sansio import (
    RULES,
    RecordingMetrics,
    Wire,
    catalog_rows,
    complete,
    data_row,
    make_service,
    ready,
    row_description,
    write_rules,
)

UPDATE_STRICT = b"UPDATE strict SET note = $1 WHERE id = $2"
SELECT_ACCOUNT = b"SELECT id, version FROM accounts WHERE id = $1"
# the same rules without the one for accounts
NO_ACCOUNTS = RULES.replace(
    "  - table: accounts\n    strategy: version\n    version_column: version\n", ""
)


class Metrics(RecordingMetrics):
    def catalog_refreshed(self, reason: str) -> None:
        pass


def _parse_update(wire: Wire):
    wire.client(m.Parse(b"", UPDATE_STRICT, ()).encode(), frame(b"S", b""))
    wire.server(frame(b"1", b""), ready())
    return wire.locking.registry.statements[b""]


def _catalog_answer(names) -> bytes:
    """The catalog query's answer listing only `names` (the other tables do not exist yet)."""
    rows = catalog_rows(names)
    out = m.encode_row_description(
        [m.Field(n.encode(), 0, 0, 25, -1, -1, 0) for n in CATALOG_COLUMNS]
    )
    for row in rows:
        out += m.encode_data_row([v.encode() for v in row])
    return out + complete(b"SELECT %d" % len(rows)) + ready()


def test_a_parse_classified_plain_is_classified_again_after_a_reload(tmp_path):
    rules_path = write_rules(tmp_path, RULES.replace("  - table: strict\n", "  - table: other\n"))
    wire = Wire(make_service(rules_path, Metrics()))
    first = _parse_update(wire)
    assert first.target is None  # strict has no rule: nothing to check
    old_tables = wire.locking.tables
    assert (UPDATE_STRICT.decode(), True) in old_tables.plain_statements
    assert _parse_update(wire).target is None  # the cached decision, looked up once

    rules_path.write_text(RULES)
    assert wire.service.reload("test")
    # the next Parse waits for the catalog under the new rules
    wire.client(m.Parse(b"", UPDATE_STRICT, ()).encode(), frame(b"S", b""))
    wire.server(_catalog_answer(("accounts", "audited", "strict")))
    assert wire.locking.tables is not old_tables
    wire.server(frame(b"1", b""), ready())
    statement = wire.locking.registry.statements[b""]
    assert statement.target is not None and statement.target.table.name == "strict"


def test_a_parse_classified_plain_is_classified_again_after_a_ddl_refresh(tmp_path):
    wire = Wire(make_service(write_rules(tmp_path), Metrics()))
    # a catalog in which strict does not exist yet
    wire.query("SELECT 1")
    wire.server(complete(b"SELECT 1"), ready())
    wire.service.generation.catalog_changed("shop", "test")
    wire.client(m.encode_query(b"SELECT 1"))
    wire.server(_catalog_answer(("accounts", "audited")))
    wire.server(complete(b"SELECT 1"), ready())
    assert _parse_update(wire).target is None
    old_tables = wire.locking.tables
    assert (UPDATE_STRICT.decode(), True) in old_tables.plain_statements

    # the session creates it: after the DDL's transaction the catalog is learned again
    wire.query("CREATE TABLE strict (id int PRIMARY KEY, note text, version int)")
    wire.server(complete(b"CREATE TABLE"), ready())
    wire.client(m.Parse(b"", UPDATE_STRICT, ()).encode(), frame(b"S", b""))
    wire.server(_catalog_answer(("accounts", "audited", "strict")))
    assert wire.locking.tables is not old_tables
    wire.server(frame(b"1", b""), ready())
    statement = wire.locking.registry.statements[b""]
    assert statement.target is not None and statement.target.table.name == "strict"


def _execute_named(wire: Wire) -> None:
    """Bind and Execute of the named statement s1 (no Describe), answered with its row."""
    wire.client(
        m.Bind(b"", b"s1", [], [b"1"], []).encode(),
        m.encode_execute(b""),
        frame(b"S", b""),
    )
    wire.server(frame(b"2", b""), data_row(b"1", b"3"), complete(b"SELECT 1"), ready())


def test_a_statement_capture_plan_is_planned_again_under_reloaded_rules(tmp_path):
    rules_path = write_rules(tmp_path, NO_ACCOUNTS)
    wire = Wire(make_service(rules_path, Metrics()))
    wire.client(
        m.Parse(b"s1", SELECT_ACCOUNT, ()).encode(),
        m.encode_describe(b"S", b"s1"),
        frame(b"S", b""),
    )
    wire.server(
        frame(b"1", b""),
        frame(b"t", b"\x00\x01\x00\x00\x00\x17"),
        row_description("accounts", ["id", "version"]),
        ready(),
    )
    statement = wire.locking.registry.statements[b"s1"]
    assert statement.fields_key is not None
    _execute_named(wire)
    assert wire.locking.tables.capture_plans[statement.fields_key] is None  # not protected

    rules_path.write_text(RULES)
    assert wire.service.reload("test")
    wire.client(m.encode_query(b"SELECT 1"))  # picks up the new rules (the catalog query)
    wire.server(_catalog_answer(("accounts", "audited", "strict")))
    wire.server(complete(b"SELECT 1"), ready())
    _execute_named(wire)  # the same statement, its fields known: captured under the new rules
    assert wire.version_read("accounts", 1) == "3"
