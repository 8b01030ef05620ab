"""The locking logic end to end without a socket: a real Session and its SessionLocking, built
from a rule file, fed the bytes a client and PostgreSQL would send, message by message.

Each test runs in milliseconds; the race itself (a concurrent writer, the server raising the
conflict) is proven against a real PostgreSQL in tests/integration/. Here the question is
what the proxy does with each message: what it captures, how it rewrites, what it learns,
undoes, reshapes and counts."""

from __future__ import annotations

import pytest

from proxy.wire import messages as m
from tests.support.sansio import (
    BIND_COMPLETE,
    PARSE_COMPLETE,
    RULES,
    RecordingMetrics,
    Wire,
    bootstrap_response,
    complete,
    conflict_fields,
    data_row,
    error,
    error_fields,
    int4,
    make_service,
    notice,
    ready,
    row_description,
    write_rules,
)

ACCOUNTS = "public.accounts"
UPDATE_1 = "UPDATE accounts SET balance = 5 WHERE id = 1"


@pytest.fixture
def metrics():
    return RecordingMetrics()


@pytest.fixture
def rules_path(tmp_path):
    return write_rules(tmp_path)


@pytest.fixture
def wire(rules_path, metrics):
    return Wire(make_service(rules_path, metrics))


def kinds(messages) -> list[bytes]:
    return [t for t, _ in messages]


def checks_version(sql: str, version: int) -> bool:
    """The rewritten statement applies only if the row still holds `version`."""
    return f"accounts.version IS NOT DISTINCT FROM CAST('{version}' AS integer)" in sql


def answer_checked_update(wire: Wire, key: int, new_version: int, status=b"I"):
    """The server's answer to a checked simple UPDATE without client RETURNING: the proxy's
    own RETURNING columns and row, then the client's tag."""
    return wire.server(
        row_description("accounts", ["id", "version"]),
        data_row(str(key).encode(), str(new_version).encode()),
        complete(b"UPDATE 1"),
        ready(status),
    )


# ---------------------------------------------------------------- reads and checked writes


def test_bootstrap_learns_the_catalog_and_creates_guards(wire):
    (sent,) = wire.bootstrap_query
    assert sent[0] == b"Q" and b"optimist_modified" in sent[1]
    assert wire.locking.bootstrap.guards
    assert {t.name for t in wire.locking.tables.by_oid.values()} == {
        "accounts",
        "audited",
        "strict",
    }


def test_text_read_then_simple_update_inlines_the_read_version(wire, metrics):
    wire.read("accounts", 1, 3)
    assert wire.version_read("accounts", 1) == "3"

    sql = wire.query(UPDATE_1)
    assert checks_version(sql, 3)
    assert "pg_temp.optimist_present(" in sql
    assert sql.endswith("RETURNING accounts.id, accounts.version")
    assert metrics.of("checked", ACCOUNTS) == 1
    assert metrics.of("unverified", ACCOUNTS, "not_read") == 0

    # the proxy's RETURNING columns and row are ours: the client expects none
    got = answer_checked_update(wire, 1, 4)
    assert kinds(got) == [b"C", b"Z"]
    assert wire.version_read("accounts", 1) == "4"


def test_binary_read_is_captured_and_checked_in_both_protocols(wire, metrics):
    sent = wire.client(
        m.Parse(b"", b"SELECT id, version FROM accounts WHERE id = $1", ()).encode(),
        m.Bind(b"", b"", [1], [int4(1)], [1]).encode(),
        m.encode_describe(b"P", b""),
        m.encode_execute(b""),
        m.SYNC,
    )
    assert kinds(sent) == [b"P", b"B", b"D", b"E", b"S"]
    got = wire.server(
        PARSE_COMPLETE,
        BIND_COMPLETE,
        row_description("accounts", ["id", "version"], fmt=1),
        data_row(int4(1), int4(3)),
        complete(b"SELECT 1"),
        ready(),
    )
    assert kinds(got) == [b"1", b"2", b"T", b"D", b"C", b"Z"]
    store = wire.locking.knowledge.store
    (row,) = store.rows.values()
    assert (row["version"].format, row["version"].data) == (1, int4(3))

    # simple protocol: the binary value is inlined as its text form
    assert checks_version(wire.query(UPDATE_1), 3)
    wire.server(complete(b"UPDATE 0"), ready())  # (no row came back: nothing learned)

    # extended protocol: the read value is bound as it was read, in binary
    sent = wire.client(
        m.Parse(b"u", b"UPDATE accounts SET balance = $1 WHERE id = $2", ()).encode(),
        m.Bind(b"", b"u", [0], [b"5", b"1"], []).encode(),
        m.encode_execute(b""),
        m.SYNC,
    )
    bind = m.decode_bind(sent[2][1])
    assert bind.params == [b"5", b"1", int4(3)]
    assert [bind.param_format(i) for i in range(3)] == [0, 0, 1]
    assert metrics.of("checked", ACCOUNTS) == 2


def test_extended_update_binds_the_read_version_to_a_hidden_statement(wire, metrics):
    wire.read("accounts", 1, 3)
    client_parse = m.Parse(b"u", b"UPDATE accounts SET balance = $1 WHERE id = $2", ()).encode()
    sent = wire.client(
        client_parse,
        m.Bind(b"", b"u", [], [b"5", b"1"], []).encode(),
        m.encode_execute(b""),
        m.SYNC,
    )
    # the client's statement is prepared as written; its checked form under a hidden name
    assert kinds(sent) == [b"P", b"P", b"B", b"E", b"S"]
    assert sent[0] == (b"P", client_parse[5:])
    hidden = m.decode_parse(sent[1][1])
    assert hidden.name.startswith(b"optimist_") and b"$3" in hidden.query
    assert b"optimist_modified" in hidden.query
    bind = m.decode_bind(sent[2][1])
    assert bind.statement == hidden.name
    assert bind.params == [b"5", b"1", b"3"]
    assert metrics.of("checked", ACCOUNTS) == 1

    got = wire.server(
        PARSE_COMPLETE,
        PARSE_COMPLETE,  # the hidden statement's: not the client's to see
        BIND_COMPLETE,
        data_row(b"1", b"4"),  # the proxy's RETURNING row
        complete(b"UPDATE 1"),
        ready(),
    )
    assert kinds(got) == [b"1", b"2", b"C", b"Z"]
    assert not wire.session.in_flight
    assert wire.version_read("accounts", 1) == "4"

    # executed again: the hidden statement is reused, bound with what the write left
    sent = wire.client(
        m.Bind(b"", b"u", [], [b"6", b"1"], []).encode(), m.encode_execute(b""), m.SYNC
    )
    assert kinds(sent) == [b"B", b"E", b"S"]
    bind = m.decode_bind(sent[0][1])
    assert bind.statement == hidden.name and bind.params == [b"6", b"1", b"4"]
    assert metrics.of("checked", ACCOUNTS) == 2


def test_write_of_a_row_never_read_is_counted_unverified(wire, metrics):
    wire.read("accounts", 1, 3)
    sql = wire.query("UPDATE accounts SET balance = 5 WHERE id = 2")
    assert "IS NOT DISTINCT FROM" not in sql
    assert metrics.of("unverified", ACCOUNTS, "not_read") == 1
    wire.server(complete(b"UPDATE 1"), ready())

    wire.client(
        m.Parse(b"", b"DELETE FROM accounts WHERE id = $1", ()).encode(),
        m.Bind(b"", b"", [], [b"2"], []).encode(),
        m.encode_execute(b""),
        m.SYNC,
    )
    assert metrics.of("unverified", ACCOUNTS, "not_read") == 2
    assert metrics.of("checked", ACCOUNTS) == 0


# ---------------------------------------------------------------- conflicts and audits


def test_conflict_error_is_reshaped_and_counted(wire, metrics):
    wire.read("accounts", 1, 3)
    wire.query(UPDATE_1)
    got = wire.server(error(conflict_fields(read=3, current=4)), ready())
    assert kinds(got) == [b"E", b"Z"]
    fields = m.decode_fields(got[0][1])
    assert fields["C"] == "40001"
    assert fields["M"].startswith("optimistic lock conflict: row (id)=(1) of public.accounts")
    assert '"current": 4' in fields["D"] and fields["H"]
    assert "W" not in fields  # our pg_temp function is plumbing, not the client's context
    assert metrics.of("conflict", ACCOUNTS, "modified", False) == 1
    # the row stays as read: writing it again without a re-read is the lost update
    assert wire.version_read("accounts", 1) == "3"


def test_other_errors_and_notices_are_relayed_unchanged(wire, metrics):
    wire.query("SELECT 1/0")
    division = error(error_fields(C="22012", M="division by zero", W="SQL function f"))
    assert wire.server(division, ready()) == [(b"E", division[5:]), (b"Z", b"I")]
    wire.query("SELECT 1")
    plain = notice(error_fields("NOTICE", C="00000", M="optimistic lock conflict: hello"))
    assert wire.server(plain, complete(b"SELECT 1"), ready())[0] == (b"N", plain[5:])
    assert not any(k[0] == "conflict" for k in metrics.counts)


def test_audit_notice_is_swallowed_and_counted(wire, metrics):
    wire.read("audited", 1, 3)
    sql = wire.query("UPDATE audited SET note = 'x' WHERE id = 1")
    assert "pg_temp.optimist_modified_audit(" in sql
    got = wire.server(
        notice(conflict_fields("public.audited", read=3, current=4, audit=True)),
        row_description("audited", ["id", "version"]),
        data_row(b"1", b"5"),
        complete(b"UPDATE 1"),
        ready(),
    )
    assert kinds(got) == [b"C", b"Z"]  # an audit finding is for the operators
    assert metrics.of("conflict", "public.audited", "modified", True) == 1
    assert metrics.of("conflict", "public.audited", "modified", False) == 0


def test_unknown_original_reject_refuses_in_both_protocols(wire, metrics):
    refusal = error_fields(
        C="55000",
        M="optimist: write to public.strict refused: the session has not read the row it "
        "writes (unknown_original: reject)",
        H="SELECT the row (with the checked columns) in this session before changing it.",
        W="PL/pgSQL function inline_code_block line 1 at RAISE",
    )
    sql = wire.query("UPDATE strict SET note = 'x' WHERE id = 1")
    assert sql.startswith("DO $optimist$") and "refused" in sql and "UPDATE" not in sql
    got = wire.server(error(refusal), ready())
    assert kinds(got) == [b"E", b"Z"]
    fields = m.decode_fields(got[0][1])
    assert fields["C"] == "55000" and "W" not in fields

    sent = wire.client(
        m.Parse(b"", b"UPDATE strict SET note = $1 WHERE id = $2", ()).encode(),
        m.Bind(b"", b"", [], [b"x", b"1"], []).encode(),
        m.encode_execute(b""),
        m.SYNC,
    )
    assert kinds(sent) == [b"P", b"P", b"B", b"E", b"S"]
    assert m.decode_parse(sent[1][1]).query.startswith(b"DO $optimist$")
    assert m.decode_bind(sent[2][1]).params == []  # the client's values go nowhere
    got = wire.server(PARSE_COMPLETE, PARSE_COMPLETE, BIND_COMPLETE, error(refusal), ready())
    assert kinds(got) == [b"1", b"2", b"E", b"Z"]
    assert "W" not in m.decode_fields(got[2][1])
    assert metrics.of("unverified", "public.strict", "not_read") == 2

    # once read, the same write is checked
    wire.read("strict", 1, 2)
    assert "UPDATE strict" in wire.query("UPDATE strict SET note = 'x' WHERE id = 1")


# ---------------------------------------------------------------- learning and undoing


def test_own_checked_write_refreshes_the_snapshot_and_returning_is_stripped(wire):
    wire.read("accounts", 1, 3)
    sql = wire.query(UPDATE_1 + " RETURNING balance")
    assert sql.endswith("RETURNING balance, accounts.id, accounts.version")
    got = wire.server(
        row_description("accounts", ["balance", "id", "version"]),
        data_row(b"5.00", b"1", b"4"),
        complete(b"UPDATE 1"),
        ready(),
    )
    assert kinds(got) == [b"T", b"D", b"C", b"Z"]
    assert [f.name for f in m.decode_row_description(got[0][1])] == [b"balance"]
    assert m.decode_data_row(got[1][1]) == [b"5.00"]
    assert wire.version_read("accounts", 1) == "4"
    # the next write checks against what this one left, not against the stale read
    assert checks_version(wire.query(UPDATE_1), 4)


def test_rollback_undoes_what_the_transaction_learned_from_its_own_writes(wire):
    wire.read("accounts", 1, 3)
    wire.query("BEGIN")
    wire.server(complete(b"BEGIN"), ready(b"T"))
    assert checks_version(wire.query(UPDATE_1), 3)
    answer_checked_update(wire, 1, 4, b"T")
    assert wire.version_read("accounts", 1) == "4"
    wire.query("ROLLBACK")
    wire.server(complete(b"ROLLBACK"), ready(b"I"))
    # the row holds version 3 again: checking against 4 would be a false conflict
    assert wire.version_read("accounts", 1) == "3"
    assert checks_version(wire.query(UPDATE_1), 3)


def test_failed_implicit_transaction_undoes_its_learning(wire):
    """A multi-statement Query is one implicit transaction: when a later statement fails, the
    checked write before it never happened."""
    wire.read("accounts", 1, 3)
    wire.query(UPDATE_1 + "; SELECT 1/0")
    got = wire.server(
        row_description("accounts", ["id", "version"]),
        data_row(b"1", b"4"),
        complete(b"UPDATE 1"),
        error(error_fields(C="22012", M="division by zero")),
        ready(b"I"),
    )
    assert kinds(got) == [b"C", b"E", b"Z"]
    assert wire.version_read("accounts", 1) == "3"


def test_rollback_to_savepoint_undoes_only_what_came_after_it(wire):
    wire.read("accounts", 1, 3)
    wire.query("BEGIN")
    wire.server(complete(b"BEGIN"), ready(b"T"))
    wire.query(UPDATE_1)
    answer_checked_update(wire, 1, 4, b"T")
    wire.query("SAVEPOINT s1")
    wire.server(complete(b"SAVEPOINT"), ready(b"T"))
    assert checks_version(wire.query(UPDATE_1), 4)
    answer_checked_update(wire, 1, 5, b"T")
    assert wire.version_read("accounts", 1) == "5"

    wire.query("ROLLBACK TO SAVEPOINT s1")
    wire.server(complete(b"ROLLBACK"), ready(b"T"))
    assert wire.version_read("accounts", 1) == "4"
    wire.query("COMMIT")
    wire.server(complete(b"COMMIT"), ready(b"I"))
    assert wire.version_read("accounts", 1) == "4"


# ---------------------------------------------------------------- pipelines


def test_pipeline_error_skips_the_rest_to_sync(wire, metrics):
    wire.read("accounts", 1, 3)
    wire.read("accounts", 2, 7)
    sent = wire.client(
        m.Parse(b"", b"UPDATE accounts SET balance = $1 WHERE id = $2", ()).encode(),
        m.Bind(b"", b"", [], [b"5", b"1"], []).encode(),
        m.encode_execute(b""),
        m.Parse(b"", b"DELETE FROM accounts WHERE id = $1", ()).encode(),
        m.Bind(b"", b"", [], [b"2"], []).encode(),
        m.encode_execute(b""),
        m.SYNC,
    )
    assert kinds(sent) == [b"P", b"P", b"B", b"E", b"P", b"P", b"B", b"E", b"S"]
    assert metrics.of("checked", ACCOUNTS) == 2

    # the first Execute raises the conflict; the server skips the rest up to the Sync
    got = wire.server(
        PARSE_COMPLETE,
        PARSE_COMPLETE,
        BIND_COMPLETE,
        error(conflict_fields(key=1, read=3, current=4)),
        ready(),
    )
    assert kinds(got) == [b"1", b"2", b"E", b"Z"]
    assert "W" not in m.decode_fields(got[2][1])
    assert not wire.session.in_flight  # every entry consumed up to the Sync
    assert metrics.of("conflict", ACCOUNTS, "modified", False) == 1
    # the skipped DELETE taught nothing: row 2 is still known as read
    assert wire.version_read("accounts", 2) == "7"

    # the queue is in step with the server: the next response is the next request's
    wire.query("SELECT 1")
    assert kinds(wire.server(complete(b"SELECT 1"), ready())) == [b"C", b"Z"]


# ---------------------------------------------------------------- the proxy's own queries


def test_discard_all_makes_the_guard_functions_be_created_again(wire, metrics):
    wire.read("accounts", 1, 3)
    wire.query("DISCARD ALL")
    wire.server(complete(b"DISCARD ALL"), ready())
    assert not wire.locking.bootstrap.guards

    # the write waits for the guard functions: without them it could not be checked
    sent = wire.client(m.encode_query(UPDATE_1.encode()))
    assert kinds(sent) == [b"Q"]
    guard_sql = m.decode_query(sent[0][1])
    assert b"CREATE OR REPLACE FUNCTION pg_temp.optimist_modified" in guard_sql
    assert b"pg_catalog" not in guard_sql  # the catalog is still known
    assert wire.session.in_flight[0].hidden

    got = wire.server(bootstrap_response(catalog=False))
    assert got == []  # the proxy's own answers are not the client's
    assert wire.locking.bootstrap.guards
    (released,) = wire.pending_to_server
    assert checks_version(m.decode_query(released[1]).decode(), 3)
    assert metrics.of("unverified", ACCOUNTS, "guards_unavailable") == 0


def test_reload_makes_the_next_query_wait_for_the_catalog(wire, rules_path, metrics):
    wire.read("audited", 1, 3)
    update = "UPDATE audited SET note = 'x' WHERE id = 1"
    assert "optimist_modified_audit(" in wire.query(update)
    wire.server(complete(b"UPDATE 0"), ready())

    service = wire.service
    old = service.generation
    rules_path.write_text(RULES.replace("mode: audit", "mode: enforce"))
    assert service.reload("test")
    assert service.generation is not old

    sent = wire.client(m.encode_query(update.encode()))
    assert kinds(sent) == [b"Q"]
    # the catalog query (after the fingerprint of the catalog it is about to learn)
    assert m.decode_query(sent[0][1]).decode().endswith(service.generation.setup_sql())
    assert wire.session.in_flight[0].hidden

    assert wire.server(bootstrap_response(guards=False)) == []
    assert wire.locking.bootstrap.generation is service.generation
    (released,) = wire.pending_to_server
    # planned under the new rules: enforced now, against what was read before the reload
    sql = m.decode_query(released[1]).decode()
    assert "pg_temp.optimist_modified(" in sql and "_audit(" not in sql
    assert "IS NOT DISTINCT FROM CAST('3' AS integer)" in sql
    assert metrics.of("checked", "public.audited") == 2


# ---------------------------------------------------------------- what may import what

CORE = (
    "wire",
    "session",
    "locking",
    "rewrite",
    "rules",
    "sqlnames",
    "values",
    "catalog",
    "catalog_views",
    "arrays",
    "conflicts",
)
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "asyncpg", "uvloop", "prometheus_client"}
SESSION_TYPES = {"proxy.session.actions", "proxy.session.inflight", "proxy.session.info"}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_sans_io_core_imports_no_io_and_keeps_its_layers():
    """docs/ARCHITECTURE.md, "What may import what": the core (the locking logic these tests
    drive) imports no asyncio, sockets or drivers; the session knows no locking; the locking
    logic knows the session by its type modules only. (Imports under TYPE_CHECKING excepted.)"""
    from tests.unit.test_imports import modules

    core = tuple("proxy." + c for c in CORE)
    graph = {}
    for name, path in modules().items():
        if _in(name, *core):
            graph[name] = _runtime_imports(path)
    assert "proxy.locking.session_locking" in graph and "proxy.session.machine" in graph
    problems = []
    for name, imported in sorted(graph.items()):
        for target in sorted(imported):
            top = target.split(".")[0]
            if top in IO_MODULES:
                problems.append(f"{name} imports {target} (I/O)")
            elif top == "proxy" and target not in ("proxy", "proxy.config"):
                if not _in(target, *core):
                    problems.append(f"{name} imports {target} (outside the core)")
                elif _in(name, "proxy.session") and _in(target, "proxy.locking"):
                    problems.append(f"{name} imports {target} (the session knows no locking)")
                elif (
                    _in(name, "proxy.locking")
                    and _in(target, "proxy.session")
                    and target not in SESSION_TYPES
                ):
                    problems.append(f"{name} imports {target} (not a session type module)")
    assert not problems, "\n".join(problems)


def _runtime_imports(path) -> set[str]:
    import ast

    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "proxy":  # from proxy import conflicts
                found.update(f"proxy.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found
