"""proxy.rewrite.planner: key pinning, guard semantics per policy, and splicing into the client's
own text. What the SQL *does* is proven against PostgreSQL in
tests/integration/test_guards_sql.py; these tests pin down what is generated and refused."""

from __future__ import annotations

import re

import pytest

from proxy.rewrite.lexer import normalize
from proxy.rewrite.planner import (
    REASONS,
    InsertPlan,
    KeyRef,
    Unverified,
    WritePlan,
    plan_insert,
    plan_write,
    written_tables,
)
from proxy.rules.protected import ProtectedTable

TYPES = {
    "id": "integer",
    "region": "text",
    "owner": "text",
    "balance": "numeric(10,2)",
    "note": "text",
    "version": "integer",
    "updated": "timestamp with time zone",
}


def table(**kw) -> ProtectedTable:
    spec = dict(
        schema="public",
        name="accounts",
        oid=1,
        columns=("id", "owner", "balance", "note", "version"),
        column_types=TYPES,
        column_type_oids={},
        key=("id",),
        strategy="version",
        version_column="version",
    )
    spec.update(kw)
    return ProtectedTable(**spec)


VERSIONED = table()


def columns_table(**kw) -> ProtectedTable:
    spec = dict(
        strategy="columns",
        version_column=None,
        policies={"owner": "changed", "balance": "changed", "note": "never", "version": "never"},
    )
    spec.update(kw)
    return table(**spec)


def plan(sql: str, t: ProtectedTable = VERSIONED, n_params: int = 0):
    template, literals = normalize(sql)
    return plan_write(template, t, n_params), literals


def simple(sql: str, t: ProtectedTable = VERSIONED, reads=None) -> str:
    p, literals = plan(sql, t)
    assert isinstance(p, WritePlan), p
    if reads is None:
        reads = [{c: "7" for c in p.checked_columns} for _ in p.pinned_rows]
    return p.render_simple(literals, reads, True)


INFO = (
    "'{\"table\":\"public.accounts\",\"schema\":\"public\",\"name\":\"accounts\","
    "\"key\":[\"id\"],\"op\":\"update\"}'"
)

# ---------------------------------------------------------------------------- shape


def test_version_guard_has_the_documented_shape():
    sql = simple("UPDATE public.accounts SET balance = 5 WHERE id = 42", reads=[{"version": "3"}])
    assert sql == (
        "UPDATE public.accounts SET balance = 5, version = accounts.version + 1 WHERE id = 42"
        " AND ((accounts.version IS NOT DISTINCT FROM CAST('3' AS integer))"
        " OR pg_temp.optimist_modified(" + INFO + ", jsonb_build_object('key',"
        " jsonb_build_object('id', accounts.id), 'columns', jsonb_build_object('version',"
        " jsonb_build_array(to_jsonb(CAST('3' AS integer)), to_jsonb(accounts.version), NULL,"
        " to_jsonb(accounts.version IS NOT DISTINCT FROM CAST('3' AS integer)))),"
        " 'own', NULL::text, 'xmin', accounts.xmin::text)))"
        " AND pg_temp.optimist_present(ARRAY(SELECT jsonb_build_object('id', id)"
        " FROM public.accounts WHERE id = 42 FOR NO KEY UPDATE),"
        " ARRAY[jsonb_build_object('id', CAST((42) AS integer))], " + INFO + ")"
        " RETURNING accounts.id, accounts.version"
    )


def test_client_text_runs_byte_for_byte():
    client = (
        "update  ONLY accounts a  set balance=a.balance+1 /* why */, owner = 'x' "
        "where a.id=$1 and note is null -- trailing\n returning a.owner  ; -- end"
    )
    p, literals = plan(client, n_params=1)
    sql = p.render_extended(literals, 1).sql
    # everything the client wrote is there, in order, with our additions between
    pos = 0
    for piece in (
        "update  ONLY accounts a  set balance=a.balance+1 /* why */, owner = 'x'",
        " where a.id=$1 and note is null",
        " -- trailing\n returning a.owner",
        "  ; -- end",
    ):
        found = sql.find(piece, pos)
        assert found >= 0, piece
        pos = found + len(piece)
    # additions go before trailing comments, never into them
    assert ", version = a.version + 1 where" in sql
    assert "note is null AND ((a.version" in sql
    assert "returning a.owner, a.id, a.version  ; -- end" in sql
    assert "FROM ONLY public.accounts WHERE id = $1 FOR NO KEY UPDATE" in sql


def test_extended_params_are_numbered_after_the_clients():
    p, literals = plan("UPDATE accounts SET owner = $1,note = $3 WHERE id = $2")
    assert p.pinned_rows == ((KeyRef("id", param=2),),)
    r = p.render_extended(literals, 3)
    assert r.extra_params == ((0, "version", "value"),)
    assert "accounts.version IS NOT DISTINCT FROM CAST($4 AS integer)" in r.sql
    # the statement itself says how many params it uses, even if n_params is too small
    assert p.render_extended(literals, 0).extra_params == ((0, "version", "value"),)
    assert "CAST($4 AS integer)" in p.render_extended(literals, 0).sql
    # one signature the enforcer uses, one the brief describes
    assert p.render_extended(3).sql == r.sql


def test_same_sql_for_every_execution_in_extended_mode():
    p, literals = plan("UPDATE accounts SET owner = $1 WHERE id = $2")
    assert p.render_extended(literals, 2) == p.render_extended(literals, 2)


def test_literals_are_put_back_and_reads_quoted():
    sql = simple("UPDATE accounts SET owner = 'it''s' WHERE id = -5", reads=[{"version": "a'b\\c"}])
    assert "SET owner = 'it''s'" in sql
    assert "WHERE id = -5 AND" in sql
    assert "CAST('a''b\\c' AS integer)" in sql
    p, literals = plan("UPDATE accounts SET owner = 'x' WHERE id = 1")
    off = p.render_simple(literals, [{"version": "a\\b"}], False)
    assert "CAST(E'a\\\\b' AS integer)" in off


def test_null_read_value():
    sql = simple("UPDATE accounts SET owner = 'x' WHERE id = 1", reads=[{"version": None}])
    assert "accounts.version IS NOT DISTINCT FROM CAST(NULL AS integer)" in sql


def test_unread_row_is_left_unchecked_but_still_bumped():
    # bumped so that other sessions' checks see the change; no RETURNING: a write of a row
    # the session never read teaches it nothing, so there is nothing to return
    p, literals = plan("UPDATE accounts SET owner = 'x' WHERE id = 1")
    for reads in ([], [None], [{}], [{"owner": "y"}]):
        sql = p.render_simple(literals, reads, True)
        assert sql == "UPDATE accounts SET owner = 'x', version = accounts.version + 1 WHERE id = 1"


# ---------------------------------------------------------------------------- key pinning


@pytest.mark.parametrize(
    "where, ref",
    [
        ("id = 42", KeyRef("id", literal_slot=1)),
        ("42 = id", KeyRef("id", literal_slot=1)),
        ("accounts.id = 42", KeyRef("id", literal_slot=1)),
        ("public.accounts.id = 42", KeyRef("id", literal_slot=1)),
        ('"id" = 42', KeyRef("id", literal_slot=1)),
        ("id = $1", KeyRef("id", param=1)),
        ("id = $1::int", KeyRef("id", param=1)),
        ("id = CAST($1 AS bigint)", KeyRef("id", param=1)),
        ("id = '42'::integer", KeyRef("id", literal_slot=1)),
        ("(id = 42)", KeyRef("id", literal_slot=1)),
        ("note IS NULL AND (owner = 'x' AND id = 42)", KeyRef("id", literal_slot=2)),
        ("balance BETWEEN 1 AND 2 AND id = 42", KeyRef("id", literal_slot=3)),
    ],
)
def test_key_pins(where, ref):
    p, _ = plan("UPDATE accounts SET note = 'n' WHERE " + where)
    assert isinstance(p, WritePlan), p
    assert p.pinned_rows == ((ref,),)


def test_inline_literal_pin_when_not_normalized():
    p = plan_write("UPDATE accounts SET note = 'n' WHERE id = 42", VERSIONED, 0)
    assert p.pinned_rows == ((KeyRef("id", literal="42"),),)
    assert p.key_texts() == [("42",)]


def test_key_texts_from_literals_and_params():
    p, literals = plan("DELETE FROM accounts WHERE id IN ('7', $1, 8)")
    assert p.key_texts(literals, ["5"]) == [("7",), ("5",), ("8",)]
    assert p.key_texts(literals, []) == [("7",), (None,), ("8",)]


@pytest.mark.parametrize(
    "sql, reason",
    [
        ("UPDATE accounts SET note = 'x'", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE owner = 'bob'", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE id = 1 OR id = 2", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE id > 1", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE id = balance", "no_key_pin"),
        (
            "UPDATE accounts SET note = 'x' WHERE id = ANY(string_to_array(note, ',')::int[])",
            "no_key_pin",
        ),
        ("UPDATE accounts SET note = 'x' WHERE id IN (SELECT 1)", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE NOT id = 1", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE id = NULL", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE id = -$1", "no_key_pin"),
        ("UPDATE accounts a SET note = 'x' WHERE b.id = 1", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' FROM other o WHERE o.id = 1", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE other.accounts.id = 1", "no_key_pin"),
        ("DELETE FROM accounts WHERE id::text = '1'", "no_key_pin"),
        ("UPDATE accounts SET note = 'x' WHERE CURRENT OF cur", "where_current_of"),
        ("delete from accounts where current  of cur", "where_current_of"),
        ("UPDATE accounts SET note = WHERE id = 1", "parse_error"),
        ("UPDATE accounts SET note = 'x' WHERE id = 1 AND", "parse_error"),
        ("UPDATE other SET note = 'x' WHERE id = 1", "not_target_table"),
        ("UPDATE private.accounts SET note = 'x' WHERE id = 1", "not_target_table"),
        ("SELECT * FROM accounts WHERE id = 1", "not_target_table"),
        ("INSERT INTO accounts VALUES (1)", "not_target_table"),
        (
            "WITH d AS (DELETE FROM accounts WHERE id = 2 RETURNING *) "
            "UPDATE accounts SET note = 'x' WHERE id = 1",
            "unsupported",
        ),
        (
            "WITH u AS (UPDATE accounts SET note = 'x' WHERE id = 1 RETURNING *) SELECT * FROM u",
            "unsupported",
        ),
        (
            "MERGE INTO accounts a USING other o ON a.id = o.id WHEN MATCHED THEN DELETE",
            "unsupported",
        ),
    ],
)
def test_unverified_reasons(sql, reason):
    p, _ = plan(sql)
    if isinstance(p, WritePlan):  # an unpinned UPDATE of a version table: bumped only
        assert p.unpinned == reason and p.kind == "update" and not p.pinned_rows
        assert re.search(r"version = \w+\.version \+ 1", p.render_simple(("'x'",) * 4, [], True))
    else:
        assert isinstance(p, Unverified)
        assert p.reason == reason
    assert reason in REASONS


def test_with_clause_reading_elsewhere_is_planned():
    sql = simple("WITH x AS (SELECT 1 AS n) UPDATE accounts SET note = 'x' WHERE id = 1")
    assert sql.startswith("WITH x AS (SELECT $90001") is False
    assert sql.startswith("WITH x AS (SELECT 1 AS n) UPDATE accounts SET note = 'x'")
    assert "WHERE id = 1 AND ((accounts.version" in sql


def test_alias_qualifies_our_additions():
    sql = simple("UPDATE accounts AS a SET note = 'x' FROM other o WHERE a.id = 3 AND o.k = a.note")
    assert ", version = a.version + 1 FROM other o WHERE" in sql
    assert "a.version IS NOT DISTINCT FROM" in sql
    assert "jsonb_build_object('id', a.id)" in sql
    assert "RETURNING a.id, a.version" in sql
    assert "accounts.version" not in sql


def test_quoted_names_are_quoted_in_additions():
    t = table(
        name="Acc Ount",
        columns=("id", "user", "version"),
        column_types={"id": "integer", "user": "text", "version": "integer"},
        version_column="version",
    )
    p, literals = plan('UPDATE "Acc Ount" SET "user" = \'x\' WHERE id = 1', t)
    sql = p.render_simple(literals, [{"version": "1"}], True)
    assert '"Acc Ount".version IS NOT DISTINCT FROM' in sql
    assert 'FROM public."Acc Ount" WHERE id = 1' in sql


def test_in_list_checks_each_row_against_its_own_reads():
    p, literals = plan("UPDATE accounts SET note = 'x' WHERE id IN (1, $1,3)")
    assert p.pinned_rows == (
        (KeyRef("id", literal_slot=1),),
        (KeyRef("id", param=1),),
        (KeyRef("id", literal_slot=2),),
    )
    sql = p.render_simple(literals, [{"version": "10"}, {"version": "20"}, {"version": "30"}], True)
    assert re.search(
        r"AND CASE WHEN accounts\.id = 1 THEN \(\(accounts\.version IS NOT DISTINCT FROM "
        r"CAST\('10' AS integer\)\) OR .*'10'.* WHEN accounts\.id = \$1 THEN .*'20'.*"
        r" WHEN accounts\.id = 3 THEN .*'30'.* ELSE true END AND pg_temp\.optimist_present\(",
        sql,
    )
    assert "WHERE id IN (1, $1, 3) FOR NO KEY UPDATE" in sql
    assert (
        "ARRAY[jsonb_build_object('id', CAST((1) AS integer)), jsonb_build_object('id', "
        "CAST(($1) AS integer)), jsonb_build_object('id', CAST((3) AS integer))]"
    ) in sql
    # a row the session did not read is neither checked nor required to exist
    partial = p.render_simple(literals, [{"version": "10"}, None, {"version": "30"}], True)
    assert "WHEN accounts.id = $1" not in partial
    assert "CAST(($1) AS integer)" not in partial
    r = p.render_extended(literals, 1)
    assert r.extra_params == (
        (0, "version", "value"),
        (1, "version", "value"),
        (2, "version", "value"),
    )
    assert "CAST($2 AS integer)" in r.sql and "CAST($4 AS integer)" in r.sql


def test_single_element_in_list_is_a_single_row():
    sql = simple("DELETE FROM accounts WHERE id IN (5)")
    assert "CASE" not in sql
    assert "WHERE id IN (5) FOR UPDATE" in sql


def test_equality_pin_preferred_over_in_list():
    p, _ = plan("UPDATE accounts SET note = 'x' WHERE id IN (1, 2) AND id = 2")
    assert p.pinned_rows == ((KeyRef("id", literal_slot=3),),)


COMPOSITE = table(columns=("region", "id", "owner", "version"), key=("region", "id"))


def test_composite_key_pinned_by_equality():
    p, literals = plan("UPDATE accounts SET owner = 'x' WHERE id = 1 AND region = 'eu'", COMPOSITE)
    assert p.pinned_rows == ((KeyRef("region", literal_slot=2), KeyRef("id", literal_slot=1)),)
    sql = p.render_simple(literals, [{"version": "1"}], True)
    assert "WHERE region = 'eu' AND id = 1 FOR NO KEY UPDATE" in sql
    assert "jsonb_build_object('region', CAST(('eu') AS text), 'id', CAST((1) AS integer))" in sql
    assert "RETURNING accounts.region, accounts.id, accounts.version" in sql


@pytest.mark.parametrize(
    "where", ["id = 1", "region = 'eu' AND id IN (1, 2)", "region IN ('eu') AND id = 1"]
)
def test_composite_key_refused_unless_every_column_is_equal(where):
    p, _ = plan("UPDATE accounts SET owner = 'x' WHERE " + where, COMPOSITE)
    # unchecked; an UPDATE of a version table is still planned, to bump the version
    assert isinstance(p, WritePlan) and p.unpinned == "no_key_pin" and not p.pinned_rows


# ---------------------------------------------------------------------------- version strategy


def test_bump_variants():
    assert ", version = accounts.version + 1 WHERE" in simple(
        "UPDATE accounts SET owner = 'x' WHERE id = 1"
    )
    ts = table(columns=("id", "owner", "updated"), version_column="updated", bump="timestamp")
    assert ", updated = clock_timestamp() WHERE" in simple(
        "UPDATE accounts SET owner = 'x' WHERE id = 1", ts
    )
    none = table(bump="none")
    sql = simple("UPDATE accounts SET owner = 'x' WHERE id = 1", none)
    assert "SET owner = 'x' WHERE" in sql and "version IS NOT DISTINCT FROM" in sql


def test_client_writing_the_version_still_gets_the_bump():
    # a form writing back every field sends the version it read: the proxy owns the column,
    # so the version always moves on (an ORM that increments it itself gets the same value)
    p, literals = plan("UPDATE accounts SET owner = 'x', version = 9 WHERE id = 1")
    sql = p.render_simple(literals, [{"version": "8"}], True)
    assert "SET owner = 'x', version = GREATEST((9), accounts.version + 1) WHERE" in sql
    assert "version IS NOT DISTINCT FROM CAST('8' AS integer)" in sql
    # the attempted version is reported
    assert "to_jsonb(CAST((9) AS integer))" in sql


def test_delete_checks_the_version_and_locks_for_update():
    p, literals = plan("DELETE FROM accounts WHERE id = 1")
    assert p.kind == "delete" and p.checked_columns == ("version",)
    assert p.written_columns == frozenset() and p.set_items == {}
    sql = p.render_simple(literals, [{"version": "2"}], True)
    assert "FOR UPDATE)" in sql and "NO KEY" not in sql
    assert '"op":"delete"' in sql
    assert "RETURNING accounts.id, accounts.version" in sql


def test_writing_the_key_locks_for_update():
    assert "FOR UPDATE)" in simple("UPDATE accounts SET id = 2 WHERE id = 1")


# ---------------------------------------------------------------------------- columns strategy


def test_changed_policy_checks_written_columns_only():
    t = columns_table()
    p, _ = plan("UPDATE accounts SET owner = 'x', note = 'n' WHERE id = 1", t)
    assert p.checked_columns == ("owner",)
    assert p.written_columns == frozenset({"owner", "note"})
    p, _ = plan("UPDATE accounts SET note = 'n' WHERE id = 1", t)
    assert p.checked_columns == ()
    sql = simple("UPDATE accounts SET note = 'n' WHERE id = 1", t)
    assert "optimist_modified" not in sql and "optimist_present" in sql


def test_any_policy_is_always_checked():
    t = columns_table(policies={"owner": "changed", "balance": "any", "note": "never"})
    p, _ = plan("UPDATE accounts SET note = 'n' WHERE id = 1", t)
    assert p.checked_columns == ("balance",)


def test_differing_policy_accepts_the_same_new_value():
    t = columns_table(policies={"owner": "differing"})
    p, literals = plan("UPDATE accounts SET owner = 'x' WHERE id = 1", t)
    assert p.checked_columns == ("owner",)
    sql = p.render_simple(literals, [{"owner": "old"}], True)
    assert (
        "(accounts.owner IS NOT DISTINCT FROM CAST('old' AS text) OR accounts.owner "
        "IS NOT DISTINCT FROM CAST(('x') AS text))"
    ) in sql


def test_differing_with_an_unnameable_new_value_is_a_plain_check():
    t = columns_table(policies={"owner": "differing", "note": "differing"})
    p, literals = plan("UPDATE accounts SET owner = DEFAULT, note = (SELECT 'n') WHERE id = 1", t)
    assert p.set_items == {"owner": ("expr", None), "note": ("expr", None)}
    sql = p.render_simple(literals, [{"owner": "o", "note": "m"}], True)
    assert "accounts.owner IS NOT DISTINCT FROM CAST('o' AS text) AND" in sql
    assert "DEFAULT) AS" not in sql and "SELECT 'n') AS" not in sql


def test_never_policy_is_not_checked():
    t = columns_table(policies={"owner": "never"})
    p, _ = plan("UPDATE accounts SET owner = 'x' WHERE id = 1", t)
    assert p.checked_columns == ()


def test_groups_are_checked_together():
    t = columns_table(
        policies={"owner": "changed", "balance": "changed", "note": "never"},
        groups=(frozenset({"balance", "note"}),),
    )
    p, _ = plan("UPDATE accounts SET balance = 1 WHERE id = 1", t)
    assert p.checked_columns == ("balance", "note")
    p, _ = plan("UPDATE accounts SET note = 'n' WHERE id = 1", t)  # a written 'never' member
    assert p.checked_columns == ("balance", "note")
    p, _ = plan("UPDATE accounts SET owner = 'x' WHERE id = 1", t)
    assert p.checked_columns == ("owner",)


def test_groups_chain_through_shared_members():
    t = columns_table(
        policies={"owner": "changed", "balance": "never", "note": "never"},
        groups=(frozenset({"owner", "balance"}), frozenset({"balance", "note"})),
    )
    p, _ = plan("UPDATE accounts SET owner = 'x' WHERE id = 1", t)
    assert p.checked_columns == ("owner", "balance", "note")


def test_delete_checks_every_tracked_column_but_never():
    t = columns_table(policies={"owner": "changed", "balance": "differing", "note": "never"})
    p, _ = plan("DELETE FROM accounts WHERE id = 1", t)
    assert p.checked_columns == ("owner", "balance")


def test_sparse_update_wraps_literal_param_and_null_values():
    t = columns_table(sparse_update=True)
    p, literals = plan(
        "UPDATE accounts SET owner = $1, balance = 5, note = NULL, "
        "version = version + 1 WHERE id = 1",
        t,
        n_params=1,
    )
    assert p.checked_columns == ("owner", "balance", "note")  # note: read back for sparse only
    assert p.set_items == {
        "owner": ("param", 1),
        "balance": ("literal", 0),
        "note": ("null", None),
        "version": ("expr", None),
    }
    sql = p.render_simple(literals, [{"owner": "o", "balance": "5.00", "note": None}], True)
    assert (
        "SET owner = CASE WHEN CAST(($1) AS text) IS NOT DISTINCT FROM CAST('o' AS text) "
        "THEN accounts.owner ELSE $1 END, "
    ) in sql
    assert (
        "balance = CASE WHEN CAST((5) AS numeric(10,2)) IS NOT DISTINCT FROM "
        "CAST('5.00' AS numeric(10,2)) THEN accounts.balance ELSE 5 END"
    ) in sql
    assert (
        "note = CASE WHEN CAST((NULL) AS text) IS NOT DISTINCT FROM CAST(NULL AS text) "
        "THEN accounts.note ELSE NULL END, version = version + 1 WHERE"
    ) in sql
    # the check is relaxed: writing back what was read is not a write
    assert (
        "(CAST(($1) AS text) IS NOT DISTINCT FROM CAST('o' AS text) OR "
        "accounts.owner IS NOT DISTINCT FROM CAST('o' AS text))"
    ) in sql
    # 'never' columns are not checked even when sparse
    assert "accounts.note IS NOT DISTINCT FROM" not in sql


def test_sparse_update_with_several_rows_dispatches_on_the_key():
    t = columns_table(sparse_update=True)
    p, literals = plan("UPDATE accounts SET owner = 'x' WHERE id IN (1, 2)", t)
    sql = p.render_simple(literals, [{"owner": "a"}, {"owner": "b"}], True)
    assert (
        "owner = CASE WHEN accounts.id = 1 AND CAST(('x') AS text) IS NOT DISTINCT FROM "
        "CAST('a' AS text) THEN accounts.owner WHEN accounts.id = 2 AND CAST(('x') AS text) "
        "IS NOT DISTINCT FROM CAST('b' AS text) THEN accounts.owner ELSE 'x' END"
    ) in sql


def test_sparse_update_does_not_touch_expressions_or_unread_rows():
    t = columns_table(sparse_update=True)
    p, literals = plan("UPDATE accounts SET balance = balance + 1 WHERE id = 1", t)
    assert "balance = balance + 1 WHERE" in p.render_simple(literals, [{"balance": "1"}], True)
    p, literals = plan("UPDATE accounts SET owner = 'x' WHERE id = 1", t)
    # an unread row: written as the client wrote it (and nothing returned to learn from)
    assert p.render_simple(literals, [None], True) == "UPDATE accounts SET owner = 'x' WHERE id = 1"


def test_tuple_assignment():
    t = columns_table(policies={"owner": "differing", "balance": "changed"})
    p, _ = plan("UPDATE accounts SET (owner, balance) = ('x', 2) WHERE id = 1", t)
    assert p.set_items == {"owner": ("literal", 0), "balance": ("literal", 1)}
    p, literals = plan("UPDATE accounts SET (owner, balance) = (SELECT 'x', 2) WHERE id = 1", t)
    assert p.written_columns == frozenset({"owner", "balance"})
    assert p.checked_columns == ("owner", "balance")
    assert p.render_simple(literals, [{"owner": "a", "balance": "1"}], True)


def test_partial_writes_count_as_writes():
    t = columns_table(policies={"owner": "changed", "note": "changed"})
    p, _ = plan("UPDATE accounts SET owner[1] = 'x', note.f = 2 WHERE id = 1", t)
    assert p.written_columns == frozenset({"owner", "note"})
    assert p.set_items == {"owner": ("expr", None), "note": ("expr", None)}


# ---------------------------------------------------------------------------- modes, RETURNING


def test_audit_mode_calls_the_audit_functions():
    sql = simple("UPDATE accounts SET owner = 'x' WHERE id = 1", table(mode="audit"))
    assert "pg_temp.optimist_modified_audit(" in sql
    assert "pg_temp.optimist_present_audit(" in sql


def test_mode_off_only_returns():
    sql = simple("UPDATE accounts SET owner = 'x' WHERE id = 1", table(mode="off"))
    assert (
        sql
        == "UPDATE accounts SET owner = 'x' WHERE id = 1 RETURNING accounts.id, accounts.version"
    )


def test_client_returning_is_extended():
    p, literals = plan("UPDATE accounts SET owner = 'x' WHERE id = 1 RETURNING owner, *")
    assert p.client_returning
    assert p.extra_returning == ("id", "version")
    assert p.render_simple(literals, [{"version": "1"}], True).endswith(
        "RETURNING owner, *, accounts.id, accounts.version"
    )
    p, _ = plan("UPDATE accounts SET owner = 'x' WHERE id = 1")
    assert not p.client_returning


def test_notify_is_one_more_returning_item_after_the_captured_columns():
    sql = simple("DELETE FROM accounts a WHERE a.id = 1", table(notify="changes"))
    assert sql.endswith(
        "RETURNING a.id, a.version, pg_notify('changes', json_build_object('table', "
        "'public.accounts', 'op', 'delete', 'key', json_build_object('id', a.id), "
        "'version', a.version)::text)"
    )
    p = plan_insert("INSERT INTO accounts (owner) VALUES ('x')", table(notify="changes"))
    assert "'op', 'insert'" in p.render_simple(())


def test_extra_returning_are_the_captured_columns():
    t = columns_table(policies={"balance": "changed", "owner": "never"})
    p, _ = plan("UPDATE accounts SET owner = 'x' WHERE id = 1", t)
    assert p.extra_returning == ("id", "balance")


def test_where_with_top_level_or_is_wrapped():
    # never pinned (so never guarded), but the wrapping must hold if that ever changes
    p, _ = plan("UPDATE accounts SET owner = 'x' WHERE id = 1 AND (a OR b)")
    assert isinstance(p, WritePlan)
    assert p._builder.wrap_where is False


# ---------------------------------------------------------------------------- INSERT


def test_insert_learns_the_new_row():
    template, literals = normalize("INSERT INTO accounts (owner) VALUES ('x')")
    p = plan_insert(template, VERSIONED, 0)
    assert isinstance(p, InsertPlan)
    assert not p.client_returning and p.on_conflict is None
    assert p.render_simple(literals, True) == (
        "INSERT INTO accounts (owner) VALUES ('x') RETURNING accounts.id, accounts.version"
    )
    assert p.render_extended(literals, 0).sql == p.render_simple(literals)
    assert p.render_extended(literals, 0).extra_params == ()


def test_insert_with_alias_returning_and_upsert():
    template, literals = normalize(
        "INSERT INTO public.accounts AS a VALUES ($1, 'x') ON CONFLICT (id) DO UPDATE "
        "SET owner = excluded.owner RETURNING *"
    )
    p = plan_insert(template, VERSIONED, 1)
    assert isinstance(p, WritePlan) and p.upsert and p.client_returning
    assert p.pinned_rows == ((KeyRef("id", param=1),),)
    # the row the session read is checked in the DO UPDATE's WHERE, its version bumped
    sql = p.render_simple(literals, [{"version": "4"}])
    assert "SET owner = excluded.owner, version = a.version + 1 WHERE ((a.version IS NOT" in sql
    assert "optimist_present" not in sql  # a row absent is simply inserted
    assert sql.endswith("RETURNING *, a.id, a.version")
    unread = p.render_simple(literals, [None])
    assert "WHERE" not in unread and "version = a.version + 1" in unread
    template, literals = normalize(
        "INSERT INTO accounts VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET owner = 'y' "
        "WHERE accounts.owner = 'x' OR accounts.owner = 'z'"
    )
    p = plan_insert(template, VERSIONED)
    assert isinstance(p, WritePlan)
    sql = p.render_simple(literals, [{"version": "4"}])
    assert "WHERE ( accounts.owner = 'x' OR accounts.owner = 'z') AND ((accounts.version" in sql
    for sql in (
        "INSERT INTO accounts VALUES (1, 'x'), (2, 'y') ON CONFLICT (id) DO UPDATE SET owner = 'y'",
        "INSERT INTO accounts SELECT 1, 'x' ON CONFLICT (id) DO UPDATE SET owner = 'y'",
        "INSERT INTO accounts VALUES (1, 'x') ON CONFLICT (owner) DO UPDATE SET owner = 'y'",
        "INSERT INTO accounts VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET id = 2",
        "INSERT INTO accounts VALUES (1 + 1, 'x') ON CONFLICT (id) DO UPDATE SET owner = 'y'",
    ):
        p = plan_insert(normalize(sql)[0], VERSIONED)
        assert isinstance(p, InsertPlan) and p.on_conflict == "update", sql
    p = plan_insert("INSERT INTO accounts VALUES (1) ON CONFLICT DO NOTHING", VERSIONED)
    assert p.on_conflict == "nothing"


@pytest.mark.parametrize(
    "sql, reason",
    [
        ("INSERT INTO other VALUES (1)", "not_target_table"),
        ("UPDATE accounts SET a = 1 WHERE id = 1", "not_target_table"),
        ("INSERT INTO accounts VALUES (", "parse_error"),
    ],
)
def test_insert_unverified(sql, reason):
    p = plan_insert(sql, VERSIONED)
    assert isinstance(p, Unverified) and p.reason == reason


def test_written_tables():
    assert written_tables(
        "WITH d AS (DELETE FROM s.t WHERE id = 2 RETURNING *) UPDATE u SET a = 1 WHERE id = 1"
    ) == [(None, "u"), ("s", "t")]
    assert written_tables("WITH x AS (SELECT 1) SELECT * FROM x") == []
    assert written_tables("WITH (") is None


def test_key_array_pins_rows_known_at_execution():
    p, literals = plan("UPDATE accounts a SET note = 'x' WHERE a.id = ANY($1::int[])", n_params=1)
    assert isinstance(p, WritePlan)
    assert p.array_key == KeyRef("id", param=1) and p.pinned_rows == ()
    r = p.render_extended(literals, 1, True, (True, False, True))
    # the read rows' keys and versions as extra parameters, dispatched by key
    assert tuple(e[:2] for e in r.extra_params) == (
        (0, "id"),
        (0, "version"),
        (2, "id"),
        (2, "version"),
    )
    assert "WHEN a.id = CAST($2 AS integer) THEN" in r.sql
    assert "WHERE id = ANY($1::int[]) FOR NO KEY UPDATE" in r.sql
    sql = p.render_simple(literals, [{"id": "4", "version": "7"}])
    assert "WHEN a.id = CAST('4' AS integer) THEN" in sql


def test_key_array_of_a_composite_key_is_unverified():
    t = table(key=("region", "id"), columns=("region", "id", "owner", "version"))
    p, _ = plan("UPDATE accounts SET owner = 'x' WHERE region = 'eu' AND id = ANY('{1,2}')", t)
    assert isinstance(p, WritePlan) and p.unpinned == "key_array" and not p.pinned_rows


def test_an_unverified_upsert_still_bumps_the_version():
    """Several rows, ON CONSTRAINT, a SELECT source: no row can be checked, but the DO UPDATE
    bumps the version so another session's checked write sees the change."""
    for sql, bumped in (
        (
            "INSERT INTO accounts VALUES (1, 'x'), (2, 'y') ON CONFLICT (id) "
            "DO UPDATE SET owner = 'y'",
            "SET owner = 'y', version = accounts.version + 1 RETURNING accounts.id,",
        ),
        (
            "INSERT INTO accounts AS a SELECT 1, 'x' ON CONFLICT ON CONSTRAINT accounts_pkey "
            "DO UPDATE SET owner = 'y', version = excluded.version WHERE a.owner <> 'q' "
            "RETURNING *",
            "version = GREATEST((excluded.version), a.version + 1) WHERE a.owner <> 'q' "
            "RETURNING *, a.id, a.version",
        ),
    ):
        template, literals = normalize(sql)
        p = plan_insert(template, VERSIONED)
        assert isinstance(p, InsertPlan) and p.on_conflict == "update"
        assert bumped in p.render_simple(literals), sql
    template, literals = normalize(
        "INSERT INTO accounts VALUES (1, 'x'), (2, 'y') ON CONFLICT (id) DO UPDATE SET owner = 'y'"
    )
    p = plan_insert(template, columns_table())  # no version: nothing to bump
    assert isinstance(p, InsertPlan) and "owner = 'y' RETURNING" in p.render_simple(literals)


def test_merge_pinning_the_key_is_checked_and_others_only_bump():
    from proxy.rewrite.merge import plan_merge

    template, literals = normalize(
        "MERGE INTO accounts a USING (SELECT 1) s ON a.id = $1 "
        "WHEN MATCHED AND a.owner = 'x' THEN DELETE WHEN MATCHED THEN UPDATE SET owner = 'y' "
        "WHEN NOT MATCHED THEN INSERT (id, owner) VALUES ($1, 'y')"
    )
    p = plan_merge(template, VERSIONED, 1)
    assert isinstance(p, WritePlan) and p.forget_pinned and not p.unpinned
    assert p.pinned_rows == ((KeyRef("id", param=1),),) and p.returned_columns(True) == ()
    sql = p.render_simple(literals, [{"version": "4"}])
    # the guard is a first clause of its own; the client's clauses follow as written
    assert sql.startswith(
        "MERGE INTO accounts a USING (SELECT 1) s ON a.id = $1 WHEN MATCHED AND NOT ((a.version"
    )
    assert ") THEN DO NOTHING WHEN MATCHED AND a.owner = 'x' THEN DELETE WHEN MATCHED THEN " in sql
    assert "UPDATE SET owner = 'y', version = a.version + 1 WHEN NOT MATCHED THEN" in sql
    unread = p.render_simple(literals, [None])
    assert "DO NOTHING" not in unread and "version = a.version + 1" in unread
    for sql in (
        "MERGE INTO accounts a USING (VALUES (1)) v(id) ON a.id = v.id "
        "WHEN MATCHED THEN UPDATE SET owner = 'm'",
        "MERGE INTO accounts a USING (SELECT 1) s ON a.id IN (1, 2) "
        "WHEN MATCHED THEN UPDATE SET owner = 'm'",
        "MERGE INTO accounts a USING other s ON a.id = 1 "
        "WHEN MATCHED THEN UPDATE SET owner = 'm' WHEN NOT MATCHED BY SOURCE THEN DELETE",
    ):
        p = plan_merge(normalize(sql)[0], VERSIONED)
        assert isinstance(p, WritePlan) and p.unpinned == "merge" and not p.pinned_rows, sql
        assert "version = a.version + 1" in p.render_simple(normalize(sql)[1], [])
    p = plan_merge(normalize(sql)[0], columns_table())  # nothing to bump, nothing to check
    assert isinstance(p, Unverified) and p.reason == "merge"
