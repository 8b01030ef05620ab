"""Guard functions installed in a schema of their own (proxy.locking.installed): every
function the rewriter may call is installable, and once a database has them no statement the
rewriter produces names pg_temp; behind a transaction pooler (pooler_mode = transaction) no
pg_temp function is ever created."""

from __future__ import annotations

import re

import pytest

from proxy import conflicts
from proxy.config import Settings
from proxy.locking import installed
from proxy.locking.generation import Generation
from proxy.locking.service import LockingService
from proxy.rewrite.merge import plan_merge
from proxy.rewrite.planner import WritePlan, plan_insert, plan_write
from proxy.rewrite.render import AS_PRINTED, BINARY_PRINTED, Printed
from proxy.rules.loader import load_rules
from proxy.wire import messages as m
from proxy.wire.framing import frame
from tests.support.sansio import (
    BIND_COMPLETE,
    PARSE_COMPLETE,
    RULES,
    RecordingMetrics,
    Wire,
    catalog_rows,
    complete,
    ready,
)

CREATED = re.compile(r"CREATE OR REPLACE FUNCTION (\S+)\.(\w+)\(")

# a columns-strategy table whose checked columns are compared as printed (timestamptz,
# float8): their checks call optimist_text / optimist_value
ITEMS_RULES = """\
version: 1
tables:
  - table: items
    strategy: columns
    check: any
"""
ITEMS_ROWS = [
    ["public", "items", "16500", str(n), col, str(oid), name, pk, "t", "t", str(oid)]
    for n, (col, oid, name, pk) in enumerate(
        [
            ("id", 23, "integer", "t"),
            ("name", 25, "text", "f"),
            ("at", 1184, "timestamp with time zone", "f"),
            ("ratio", 701, "double precision", "f"),
        ],
        1,
    )
]
SETTINGS = '{TimeZone,UTC,DateStyle,"ISO, MDY",extra_float_digits,1}'


def test_every_guard_function_is_created_in_the_given_schema_and_listed_for_install():
    sql = conflicts.guard_functions_sql("40001", "optimist")
    created = CREATED.findall(sql)
    assert {schema for schema, _ in created} == {"optimist"}
    assert sorted(name for _, name in created) == sorted(installed.FUNCTIONS)
    # the names the rewriter calls and the conflict parser hides are these functions
    assert set(conflicts._FUNCTION_NAMES) <= {n.removesuffix("_audit") for n in installed.FUNCTIONS}
    assert "pg_temp" not in sql
    # a schema name is quoted as an identifier
    assert 'FUNCTION "Guards"."optimist_text"' not in sql
    assert "FUNCTION \"Guards\".optimist_text(" in conflicts.guard_functions_sql("40001", "Guards")
    # pg_temp stays what it was
    assert {s for s, _ in CREATED.findall(conflicts.guard_functions_sql())} == {"pg_temp"}


def test_install_sql_stamps_every_function_with_the_version_of_its_source():
    sql = installed.install_sql("optimist", "40001")
    v = installed.version("40001")
    for signature in installed.signatures("optimist"):
        assert f"COMMENT ON FUNCTION {signature} IS 'optimist guard function {v}'" in sql
        assert f"GRANT EXECUTE ON FUNCTION {signature} TO PUBLIC" in sql
    # another conflict SQLSTATE is another version: its functions raise another error
    assert installed.version("40P01") != v
    with pytest.raises(ValueError):
        installed.version("nope")


def rows(comment_of):
    return [("optimist guard function", name, comment_of(name)) for name in installed.FUNCTIONS]


def test_judging_what_is_installed():
    v = installed.COMMENT_PREFIX + installed.version("40001")
    assert installed.judge_installed([], "optimist", "40001") == installed.Installed(False)
    assert installed.judge_installed(rows(lambda n: v), "optimist", "40001").usable
    old = installed.judge_installed(
        rows(lambda n: installed.COMMENT_PREFIX + "0123456789abcdef"), "optimist", "40001"
    )
    assert not old.usable and "version 0123456789abcdef, this proxy needs" in (old.problem or "")
    partial = installed.judge_installed(rows(lambda n: v)[:4], "optimist", "40001")
    assert not partial.usable and "missing optimist_text, optimist_value" in (partial.problem or "")
    # the catalog's and the fingerprint's rows in the same result are not the installed query's
    mixed = [["x"], ["a", "b", "c", "d"], ["other", "optimist_text", v]]
    assert installed.judge_installed(mixed, "optimist", "40001") == installed.Installed(False)


def items_table(tmp_path, guard_schema: str):
    path = tmp_path / "rules.yaml"
    path.write_text(ITEMS_RULES)
    generation = Generation(load_rules([str(path)]))
    tables = generation.read_catalog("shop", ITEMS_ROWS, guard_schema)
    return tables.by_name[("public", "items")]


STATEMENTS = [
    "UPDATE items SET name = 'x' WHERE id = 1",
    "UPDATE items SET at = now(), ratio = 0.5 WHERE id = 1 RETURNING *",
    "DELETE FROM items WHERE id = 1",
    "UPDATE items SET name = 'x' WHERE id = ANY('{1,2}')",
    "INSERT INTO items VALUES (1, 'x', now(), 1) ON CONFLICT (id) DO UPDATE SET name = 'y'",
    "UPDATE items SET name = $1 WHERE id = $2",
    "MERGE INTO items t USING (SELECT 1) s ON t.id = 1 WHEN MATCHED THEN UPDATE SET name = 'x'",
]


def rendered(table) -> list[str]:
    """Every form the rewriter writes for STATEMENTS: simple with printed and canonical reads,
    extended with reads bound as printed text and as binary."""
    out = []
    read = {
        "id": "1",
        "name": "mug",
        "at": Printed("2024-01-01 00:00:00+00", SETTINGS),
        "ratio": Printed("0.5", SETTINGS, canonical=True),
    }
    for sql in STATEMENTS:
        planner = {"INSERT": plan_insert, "MERGE": plan_merge}.get(sql.split()[0], plan_write)
        plan = planner(sql, table, 2)
        assert isinstance(plan, WritePlan), (sql, plan)
        reads = [read, read] if plan.array_key is not None else [read] * len(plan.pinned_rows)
        out.append(plan.render_simple([], reads))
        for kind in (AS_PRINTED, BINARY_PRINTED):
            mask = (True,) * max(1, len(plan.pinned_rows))
            kinds = {(0, "at"): kind, (0, "ratio"): kind}
            if plan.array_key is None:
                out.append(plan.render_extended([], 2, True, mask, kinds).sql)
    return out


def test_with_installed_functions_the_rewriter_names_no_pg_temp(tmp_path):
    forms = rendered(items_table(tmp_path, "optimist"))
    text = "\n".join(forms)
    assert "pg_temp" not in text
    for function in ("optimist_modified", "optimist_present", "optimist_text", "optimist_value"):
        assert f"optimist.{function}(" in text, function
    # every guard function call names the schema
    calls = re.findall(r"(\w+\.)?(optimist_(?:modified|present|text|value))\(", text)
    assert calls and all(prefix == "optimist." for prefix, _ in calls)
    # the same statements without an install call pg_temp's (what the schema replaces)
    default = "\n".join(rendered(items_table(tmp_path, "pg_temp")))
    assert "pg_temp.optimist_text(" in default and "pg_temp.optimist_value(" in default
    assert "optimist.optimist_" not in default


def installed_answer(sqlstate: str = "40001") -> bytes:
    comment = (installed.COMMENT_PREFIX + installed.version(sqlstate)).encode()
    fields = [m.Field(n, 0, 0, 25, -1, -1, 0) for n in (b"tag", b"proname", b"c")]
    out = m.encode_row_description(fields)
    for name in installed.FUNCTIONS:
        out += m.encode_data_row([b"optimist guard function", name.encode(), comment])
    return out + complete(b"SELECT 6")


def catalog_answer() -> bytes:
    found = catalog_rows()
    out = m.encode_row_description([m.Field(b"c%d" % i, 0, 0, 25, -1, -1, 0) for i in range(11)])
    out += b"".join(m.encode_data_row([v.encode() for v in row]) for row in found)
    return out + complete(b"SELECT %d" % len(found))


class PooledWire(Wire):
    """A session behind a transaction pooler; its bootstrap answered with or without the
    installed functions."""

    def __init__(self, service: LockingService, with_install: bool) -> None:
        self.with_install = with_install
        super().__init__(service)

    def server(self, *messages: bytes):
        if getattr(self, "bootstrap_query", None) is not None and not hasattr(self, "booted"):
            self.booted = True
            answer = (installed_answer() if self.with_install else b"") + catalog_answer()
            return super().server(answer + ready())
        return super().server(*messages)


def pooled_service(tmp_path, metrics) -> LockingService:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    settings = Settings(rules=[str(path)], pooler_mode="transaction")
    return LockingService(settings, load_rules([str(path)]), metrics=metrics)


def test_behind_a_transaction_pooler_no_pg_temp_function_is_created(tmp_path):
    metrics = RecordingMetrics()
    wire = PooledWire(pooled_service(tmp_path, metrics), with_install=True)
    (first,) = wire.bootstrap_query
    bootstrap = m.decode_query(first[1]).decode()
    assert "CREATE" not in bootstrap and "optimist guard function" in bootstrap
    assert wire.locking.bootstrap.guards
    assert wire.locking.tables.guard_schema == "optimist"
    wire.read("accounts", 1, 3)
    sql = wire.query("UPDATE accounts SET balance = 5 WHERE id = 1")
    assert "optimist.optimist_modified(" in sql and "pg_temp" not in sql
    assert metrics.of("unverified", "public.accounts", "guards_unavailable") == 0


def test_behind_a_transaction_pooler_without_install_writes_pass_unverified(tmp_path):
    metrics = RecordingMetrics()
    wire = PooledWire(pooled_service(tmp_path, metrics), with_install=False)
    assert not wire.locking.bootstrap.guards
    wire.read("accounts", 1, 3)
    sql = wire.query("UPDATE accounts SET balance = 5 WHERE id = 1")
    # passed as written, nothing created for it first
    assert sql == "UPDATE accounts SET balance = 5 WHERE id = 1"
    assert metrics.of("unverified", "public.accounts", "guards_unavailable") == 1
    wire.server(complete(b"UPDATE 1"), ready())
    sql = wire.query("UPDATE accounts SET balance = 6 WHERE id = 1")
    assert "CREATE" not in sql and "optimist_" not in sql


def test_extended_checked_writes_are_prepared_at_each_bind_behind_a_pooler(tmp_path):
    metrics = RecordingMetrics()
    wire = PooledWire(pooled_service(tmp_path, metrics), with_install=True)
    wire.read("accounts", 1, 3)
    for _ in range(2):
        sent = wire.client(
            m.Parse(b"", b"UPDATE accounts SET balance = $1 WHERE id = $2", ()).encode(),
            m.Bind(b"", b"", [0, 0], [b"5", b"1"], []).encode(),
            m.encode_execute(b"", 0),
            m.SYNC,
        )
        kinds = [t for t, _ in sent]
        # the client's Parse, then Close + Parse of the checked form before its Bind, every time
        assert kinds == [b"P", b"C", b"P", b"B", b"E", b"S"], kinds
        checked = m.decode_parse(sent[2][1])
        assert checked.name == b"optimist_tx" and b"optimist.optimist_modified(" in checked.query
        close_complete = frame(b"3", b"")
        answer = PARSE_COMPLETE + close_complete + PARSE_COMPLETE + BIND_COMPLETE
        wire.server(answer + complete(b"UPDATE 1"), ready())


def test_rows_of_the_installed_query_do_not_reach_the_catalog():
    mixed = [["fp"], ["optimist guard function", "optimist_text", "c"], *catalog_rows()]
    assert installed.function_rows(mixed) == [["optimist guard function", "optimist_text", "c"]]


def test_behind_a_transaction_pooler_a_session_set_makes_the_setting_unknown():
    """A session-level SET lands on one server connection; the next transaction may run on
    another, still printing under the old value: reads after it are not compared by guess
    (settings_unknown) rather than falsely refused."""
    from proxy.locking.settings import SessionSettings
    from proxy.session.info import SessionInfo

    for pooled, after_set in ((False, "3"), (True, None)):
        settings = SessionSettings(SessionInfo("alice", "shop"), pooled=pooled)
        settings.learned_initial(["1", "hex", "C"])
        settings.statement("SET extra_float_digits = 3", in_transaction=False)
        settings.ready(failed=False)
        assert settings.tracked["extra_float_digits"] == after_set
        assert ("extra_float_digits" in settings.current().unknown) is (after_set is None)
        settings.statement("RESET extra_float_digits", in_transaction=False)
        assert settings.tracked["extra_float_digits"] == "1"


def test_behind_a_transaction_pooler_an_sql_execute_runs_as_written_counted(tmp_path):
    """The hidden statement a checked SQL EXECUTE needs would be prepared on one pooled
    server connection and run on another: behind a pooler it runs as written, counted."""
    metrics = RecordingMetrics()
    wire = PooledWire(pooled_service(tmp_path, metrics), with_install=True)
    wire.read("accounts", 1, 3)
    prepare = "PREPARE p AS UPDATE accounts SET balance = $1 WHERE id = $2"
    assert wire.query(prepare) == prepare
    wire.server(complete(b"PREPARE"), ready())
    assert wire.query("EXECUTE p(5, 1)") == "EXECUTE p(5, 1)"
    assert metrics.of("unverified", "public.accounts", "sql_prepare") == 1
    assert metrics.of("checked", "public.accounts") == 0
