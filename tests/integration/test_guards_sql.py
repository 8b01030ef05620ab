"""The rewritten SQL against a real PostgreSQL: no lost update gets through, conflicts come out
as 40001 errors with a precise DETAIL, and nothing else changes.

Each test plays the proxy by hand: session A reads rows (text form, as the proxy captures them),
the planner renders A's write with those reads, and the write runs on A's own connection where
the guard functions were created -- in the simple protocol (asyncpg execute without arguments)
and in the extended protocol (asyncpg with the extra arguments appended). Session B is another
connection changing rows in between.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.conflicts import (
    AUDIT_MARKER,
    Conflict,
    guard_functions_sql,
    parse_conflict,
    reject_sql,
    strip_internal_context,
)
from proxy.rewrite.lexer import normalize
from proxy.rewrite.planner import WritePlan, plan_write
from proxy.rules.protected import ProtectedTable

COLUMNS = ("id", "owner", "balance", "note", "version", "updated")
TYPES = {
    "id": "integer",
    "owner": "text",
    "balance": "numeric(10,2)",
    "note": "text",
    "version": "integer",
    "updated": "timestamp with time zone",
}
OIDS = {"id": 23, "owner": 25, "balance": 1700, "note": 25, "version": 23, "updated": 1184}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def error_fields(exc: asyncpg.PostgresError | asyncpg.PostgresLogMessage) -> dict[str, str]:
    """The wire fields (one-letter codes) of an asyncpg error or notice."""
    names = {
        "S": "severity",
        "C": "sqlstate",
        "M": "message",
        "D": "detail",
        "H": "hint",
        "W": "context",
        "s": "schema_name",
        "t": "table_name",
    }
    fields = {}
    for code, attr in names.items():
        value = getattr(exc, attr, None)
        if value is not None:
            fields[code] = value
    return fields


def to_python(sql_type: str, text: str | None) -> Any:
    """A read value (text) as asyncpg wants it for a parameter of that type."""
    if text is None:
        return None
    if sql_type in ("integer", "bigint"):
        return int(text)
    if sql_type.startswith("numeric"):
        return Decimal(text)
    if sql_type.startswith("timestamp"):
        return dt.datetime.fromisoformat(text)
    return text


@dataclass
class Env:
    a: asyncpg.Connection  # the session whose writes are guarded
    b: asyncpg.Connection  # another session
    table: ProtectedTable

    @property
    def name(self) -> str:
        return self.table.name

    def protect(self, **kw) -> ProtectedTable:
        spec = dict(
            schema="public",
            name=self.table.name if self.table else "",
            oid=0,
            columns=COLUMNS,
            column_types=TYPES,
            column_type_oids=OIDS,
            key=("id",),
            strategy="version",
            version_column="version",
        )
        spec.update(kw)
        self.table = ProtectedTable(**spec)
        return self.table

    async def read(self, key: int, conn: asyncpg.Connection | None = None) -> dict:
        cols = ", ".join(f"{c}::text AS {c}" for c in COLUMNS)
        row = await (conn or self.a).fetchrow(f"SELECT {cols} FROM {self.name} WHERE id = $1", key)
        return dict(row)

    async def row(self, key: int) -> dict | None:
        row = await self.b.fetchrow(f"SELECT * FROM {self.name} WHERE id = $1", key)
        return dict(row) if row is not None else None

    def plan(self, sql: str, n_params: int = 0) -> tuple[WritePlan, tuple[str, ...]]:
        template, literals = normalize(sql.replace("{t}", self.name))
        plan = plan_write(template, self.table, n_params)
        assert isinstance(plan, WritePlan), plan
        return plan, literals

    def render(self, sql: str, reads: list[dict]) -> str:
        plan, literals = self.plan(sql)
        return plan.render_simple(literals, reads, True)

    async def simple(self, sql: str, reads: list[dict]) -> str:
        """Run A's write through the simple protocol; the command tag."""
        return await self.a.execute(self.render(sql, reads))

    async def extended(self, sql: str, args: tuple, reads: list[dict]) -> list:
        """Run A's write through the extended protocol; the rows (extra columns included)."""
        plan, literals = self.plan(sql, len(args))
        rendered = plan.render_extended(literals, len(args))
        extra = [to_python(TYPES[col], reads[row][col]) for row, col, _ in rendered.extra_params]
        return await self.a.fetch(rendered.sql, *args, *extra)


def scenario(dsn: str, body, rows: int = 3, **protect):
    async def main():
        a = await asyncpg.connect(dsn, timeout=10)
        b = await asyncpg.connect(dsn, timeout=10)
        name = "optimist_guard_" + uuid.uuid4().hex[:10]
        try:
            await a.execute(
                f"CREATE TABLE {name} (id integer PRIMARY KEY, owner text, "
                f"balance numeric(10,2), note text, version integer NOT NULL DEFAULT 1, "
                f"updated timestamptz NOT NULL DEFAULT clock_timestamp());"
                f"INSERT INTO {name} (id, owner, balance, note) "
                f"SELECT g, 'o' || g, 10 * g, 'n' || g FROM generate_series(1, {rows}) g"
            )
            await a.execute(guard_functions_sql())
            env = Env(a, b, None)  # type: ignore[arg-type]
            env.protect(name=name, **protect)
            return await body(env)
        finally:
            await a.close()
            await b.execute(f"DROP TABLE IF EXISTS {name}")
            await b.close()

    return run(main())


def conflict_of(excinfo) -> Conflict:
    exc = excinfo.value
    assert exc.sqlstate == "40001"
    conflict = parse_conflict(error_fields(exc))
    assert conflict is not None, exc
    return conflict


# ============================================================================ planner-level facts


def test_presence_check_is_a_one_time_filter(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1), await env.read(2)]
        one = env.render("UPDATE {t} SET owner = 'x' WHERE id = 1", reads[:1])
        many = env.render("UPDATE {t} SET owner = 'x' WHERE id IN (1, 2)", reads)
        plans = []
        for sql in (one, many):
            rows = await env.a.fetch("EXPLAIN (COSTS OFF) " + sql)
            plans.append("\n".join(r[0] for r in rows))
        # the generic plan of the extended form, too
        plan, literals = env.plan("UPDATE {t} SET owner = $1 WHERE id = $2", 2)
        rendered = plan.render_extended(literals, 2)
        await env.a.execute("SET plan_cache_mode = force_generic_plan")
        await env.a.execute(f"PREPARE guarded (text, integer, integer) AS {rendered.sql}")
        rows = await env.a.fetch("EXPLAIN (COSTS OFF) EXECUTE guarded('x', 1, 1)")
        plans.append("\n".join(r[0] for r in rows))
        functions = await env.a.fetch(
            "SELECT proname, provolatile::text, procost FROM pg_proc "
            "WHERE pronamespace = pg_my_temp_schema() ORDER BY proname"
        )
        return plans, [tuple(f) for f in functions]

    plans, functions = scenario(upstream_dsn, body)
    for plan in plans:
        assert "One-Time Filter: pg_temp.optimist_present(" in plan, plan
        assert "LockRows" in plan  # the InitPlan locks the pinned rows
        assert "Filter: ((NOT" in plan or "optimist_modified" in plan
    assert functions == [
        ("optimist_lock_verified", "v", 100.0),
        ("optimist_modified", "v", 100.0),
        ("optimist_modified_audit", "v", 100.0),
        ("optimist_present", "s", 100.0),
        ("optimist_present_audit", "s", 100.0),
        ("optimist_text", "v", 100.0),
        ("optimist_value", "v", 100.0),
    ]


def test_guard_functions_sql_is_rerunnable_and_checks_its_sqlstate(upstream_dsn):
    async def body(env: Env):
        await env.a.execute(guard_functions_sql("P0001"))
        reads = [await env.read(1)]
        await env.b.execute(f"UPDATE {env.name} SET version = 5 WHERE id = 1")
        with pytest.raises(asyncpg.PostgresError) as excinfo:
            await env.simple("UPDATE {t} SET owner = 'x' WHERE id = 1", reads)
        return excinfo.value.sqlstate

    assert scenario(upstream_dsn, body) == "P0001"
    with pytest.raises(ValueError):
        guard_functions_sql("40001'; DROP")


# ============================================================================ version strategy


def test_matching_read_updates_and_bumps(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        tag = await env.simple("UPDATE {t} SET balance = 5 WHERE id = 1", reads)
        after = await env.row(1)
        reads = [await env.read(2)]
        returned = await env.extended(
            "UPDATE {t} SET balance = $1 WHERE id = $2 RETURNING owner", (Decimal("7.5"), 2), reads
        )
        return tag, after, [tuple(r) for r in returned]

    tag, after, returned = scenario(upstream_dsn, body)
    assert tag == "UPDATE 1"
    assert after["balance"] == Decimal("5.00") and after["version"] == 2
    # client's RETURNING first, then what the proxy learns (key, version): stripped by the proxy
    assert returned == [("o2", 2, 2)]


def test_concurrent_modification_is_a_conflict(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute(
            f"UPDATE {env.name} SET owner = 'b', version = version + 1 WHERE id = 1"
        )
        with pytest.raises(asyncpg.SerializationError) as simple_exc:
            await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads)
        with pytest.raises(asyncpg.SerializationError) as ext_exc:
            await env.extended("UPDATE {t} SET owner = $1 WHERE id = $2", ("a", 1), reads)
        return simple_exc, ext_exc, await env.row(1)

    simple_exc, ext_exc, row = scenario(upstream_dsn, body)
    for excinfo in (simple_exc, ext_exc):
        exc = excinfo.value
        table = exc.table_name
        assert exc.message == (
            f"optimistic lock conflict: row (id)=(1) of public.{table} "
            f"was modified by another session"
        )
        assert exc.hint == "Re-read the row and retry the transaction."
        assert exc.schema_name == "public" and table.startswith("optimist_guard_")
        assert json.loads(exc.detail) == {
            "table": f"public.{table}",
            "key": {"id": 1},
            "kind": "modified",
            "columns": {"version": {"read": 1, "current": 2, "attempted": None}},
        }
        conflict = conflict_of(excinfo)
        assert (conflict.kind, conflict.key, conflict.audit) == ("modified", {"id": 1}, False)
    assert row["owner"] == "b" and row["version"] == 2  # B's write survived


def test_deleted_row_is_a_conflict(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute(f"DELETE FROM {env.name} WHERE id = 1")
        with pytest.raises(asyncpg.SerializationError) as simple_exc:
            await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads)
        with pytest.raises(asyncpg.SerializationError) as ext_exc:
            await env.extended("DELETE FROM {t} WHERE id = $1", (1,), reads)
        return simple_exc, ext_exc

    for excinfo in scenario(upstream_dsn, body):
        exc = excinfo.value
        assert exc.message.endswith(
            "of public." + exc.table_name + " was deleted by another session"
        )
        assert json.loads(exc.detail) == {
            "table": "public." + exc.table_name,
            "key": {"id": 1},
            "kind": "deleted",
            "columns": {},
        }
        assert conflict_of(excinfo).kind == "deleted"


def test_conflict_aborts_the_clients_own_transaction(upstream_dsn):
    async def body(env: Env):
        await env.a.execute("BEGIN")
        await env.a.execute(f"UPDATE {env.name} SET note = 'mine' WHERE id = 2")
        reads = [await env.read(1)]
        await env.b.execute(f"UPDATE {env.name} SET version = 9 WHERE id = 1")
        with pytest.raises(asyncpg.SerializationError):
            await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads)
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await env.a.execute("SELECT 1")
        await env.a.execute("ROLLBACK")
        return await env.row(2)

    assert scenario(upstream_dsn, body)["note"] == "n2"  # A's earlier write rolled back


def test_writer_committing_while_we_wait_is_a_conflict(upstream_dsn):
    """Real interleaving: A's guarded write blocks on B's row lock; B commits; A must not
    overwrite B's row (EvalPlanQual re-checks the guard on B's version)."""

    async def body(env: Env):
        await env.a.execute("BEGIN")
        reads = [await env.read(1)]
        await env.b.execute("BEGIN")
        await env.b.execute(
            f"UPDATE {env.name} SET balance = 99, version = version + 1 WHERE id = 1"
        )
        pid = env.a.get_server_pid()
        write = asyncio.ensure_future(env.simple("UPDATE {t} SET balance = 1 WHERE id = 1", reads))
        for _ in range(100):  # until A waits on B's lock
            waiting = await env.b.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
            )
            if waiting == "Lock":
                break
            await asyncio.sleep(0.05)
        assert waiting == "Lock" and not write.done()
        await env.b.execute("COMMIT")
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await write
        await env.a.execute("ROLLBACK")
        return excinfo, await env.row(1)

    excinfo, row = scenario(upstream_dsn, body)
    conflict = conflict_of(excinfo)
    assert conflict.kind == "modified"
    assert conflict.columns == {"version": {"read": 1, "current": 2, "attempted": None}}
    assert row["balance"] == Decimal("99.00")


def test_row_deleted_while_we_wait_is_a_deleted_conflict(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute("BEGIN")
        await env.b.execute(f"DELETE FROM {env.name} WHERE id = 1")
        write = asyncio.ensure_future(env.simple("UPDATE {t} SET balance = 1 WHERE id = 1", reads))
        await asyncio.sleep(0.3)
        assert not write.done()
        await env.b.execute("COMMIT")
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await write
        return excinfo

    assert conflict_of(scenario(upstream_dsn, body)).kind == "deleted"


def test_sequential_sessions_without_interleaving_do_not_conflict(upstream_dsn):
    async def body(env: Env):
        tags = []
        for i in range(3):  # read, write, read again, write again: each read is fresh
            reads = [await env.read(1)]
            tags.append(await env.simple(f"UPDATE {{t}} SET balance = {i} WHERE id = 1", reads))
        return tags, await env.row(1)

    tags, row = scenario(upstream_dsn, body)
    assert tags == ["UPDATE 1"] * 3 and row["version"] == 4


def test_client_writing_the_version_itself(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        tag = await env.simple("UPDATE {t} SET version = 42 WHERE id = 1", reads)
        stale = reads
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.simple("UPDATE {t} SET version = 43 WHERE id = 1", stale)
        return tag, await env.row(1), excinfo

    tag, row, excinfo = scenario(upstream_dsn, body)
    assert tag == "UPDATE 1" and row["version"] == 42  # no bump on top of the client's value
    assert conflict_of(excinfo).columns == {"version": {"read": 1, "current": 42, "attempted": 43}}


def test_timestamp_bump(upstream_dsn):
    async def body(env: Env):
        env.protect(version_column="updated", bump="timestamp")
        reads = [await env.read(1)]
        before = await env.row(1)
        await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads)
        after = await env.row(1)
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.simple("UPDATE {t} SET owner = 'again' WHERE id = 1", reads)
        return before, after, excinfo

    before, after, excinfo = scenario(upstream_dsn, body)
    assert after["updated"] > before["updated"]
    assert list(conflict_of(excinfo).columns) == ["updated"]


def test_version_none_bump_checks_without_writing(upstream_dsn):
    async def body(env: Env):
        env.protect(bump="none")
        reads = [await env.read(1)]
        await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads)
        return await env.row(1)

    assert scenario(upstream_dsn, body)["version"] == 1


# ============================================================================ several rows


def test_in_list_checks_each_row_against_its_own_read(upstream_dsn):
    async def body(env: Env):
        await env.b.execute(f"UPDATE {env.name} SET version = 5 WHERE id = 2")
        reads = [await env.read(1), await env.read(2), await env.read(3)]  # versions 1, 5, 1
        ok = await env.simple("UPDATE {t} SET note = 'all' WHERE id IN (1, 2, 3)", reads)
        reads = [await env.read(1), await env.read(2), await env.read(3)]
        await env.b.execute(
            f"UPDATE {env.name} SET owner = 'b', version = version + 1 WHERE id = 3"
        )
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.extended(
                "UPDATE {t} SET note = $1 WHERE id IN ($2,$3,$4)", ("again", 1, 2, 3), reads
            )
        return ok, excinfo, [await env.row(i) for i in (1, 2, 3)]

    ok, excinfo, rows = scenario(upstream_dsn, body)
    assert ok == "UPDATE 3"
    conflict = conflict_of(excinfo)
    assert conflict.key == {"id": 3}
    assert conflict.columns == {"version": {"read": 2, "current": 3, "attempted": None}}
    assert [r["note"] for r in rows] == ["all", "all", "all"]  # the statement failed whole


def test_in_list_with_one_row_deleted(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1), await env.read(2)]
        await env.b.execute(f"DELETE FROM {env.name} WHERE id = 2")
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.simple("DELETE FROM {t} WHERE id IN (1, 2)", reads)
        return excinfo

    conflict = conflict_of(scenario(upstream_dsn, body))
    assert (conflict.kind, conflict.key) == ("deleted", {"id": 2})


def test_blind_write_of_unread_row_is_not_checked(upstream_dsn):
    async def body(env: Env):
        await env.b.execute(f"UPDATE {env.name} SET version = 7 WHERE id = 1")
        tag = await env.simple("UPDATE {t} SET owner = 'blind' WHERE id = 1", [None])
        gone = await env.simple("UPDATE {t} SET owner = 'blind' WHERE id = 99", [None])
        return tag, gone, await env.row(1)

    tag, gone, row = scenario(upstream_dsn, body)
    assert (tag, gone) == ("UPDATE 1", "UPDATE 0")
    assert row["version"] == 8  # still bumped: other sessions must see the write


def test_composite_key(upstream_dsn):
    async def body(env: Env):
        await env.a.execute(
            f"ALTER TABLE {env.name} DROP CONSTRAINT {env.name}_pkey, ADD PRIMARY KEY (owner, id)"
        )
        env.protect(key=("owner", "id"))
        reads = [await env.read(1)]
        ok = await env.simple("UPDATE {t} SET note = 'x' WHERE owner = 'o1' AND id = 1", reads)
        await env.b.execute(f"UPDATE {env.name} SET version = 9 WHERE id = 1")
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.extended(
                "UPDATE {t} SET note = $1 WHERE id = $2 AND owner = $3",
                ("y", 1, "o1"),
                [{"version": "2"}],
            )  # learned by RETURNING
        return ok, excinfo

    ok, excinfo = scenario(upstream_dsn, body)
    assert ok == "UPDATE 1"
    exc = excinfo.value
    assert exc.message.startswith("optimistic lock conflict: row (owner, id)=(o1, 1) of ")
    assert conflict_of(excinfo).key == {"owner": "o1", "id": 1}


# ============================================================================ columns strategy

POLICIES = {
    "owner": "changed",
    "balance": "changed",
    "note": "never",
    "version": "never",
    "updated": "never",
}


def columns(**policies) -> dict:
    return dict(strategy="columns", version_column=None, policies={**POLICIES, **policies})


def test_changed_policy(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute(f"UPDATE {env.name} SET owner = 'b' WHERE id = 1")
        other = await env.simple("UPDATE {t} SET balance = 1 WHERE id = 1", reads)
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads)
        return other, excinfo, await env.row(1)

    other, excinfo, row = scenario(upstream_dsn, body, **columns())
    assert other == "UPDATE 1"  # another column: no conflict, B's change kept
    assert row["owner"] == "b" and row["balance"] == Decimal("1.00")
    assert conflict_of(excinfo).columns == {
        "owner": {"read": "o1", "current": "b", "attempted": "a"}
    }


def test_any_policy(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute(f"UPDATE {env.name} SET balance = 55 WHERE id = 1")
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.simple("UPDATE {t} SET note = 'x' WHERE id = 1", reads)
        untouched = [await env.read(2)]
        ok = await env.simple("UPDATE {t} SET note = 'x' WHERE id = 2", untouched)
        return excinfo, ok

    excinfo, ok = scenario(upstream_dsn, body, **columns(balance="any"))
    # only what B changed is listed, with numbers as numbers
    assert conflict_of(excinfo).columns == {
        "balance": {"read": 10.0, "current": 55.0, "attempted": None}
    }
    assert ok == "UPDATE 1"


def test_differing_policy(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute(f"UPDATE {env.name} SET owner = 'same' WHERE id = 1")
        ok = await env.simple("UPDATE {t} SET owner = 'same' WHERE id = 1", reads)
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.extended("UPDATE {t} SET owner = $1 WHERE id = 1", ("other",), reads)
        return ok, excinfo

    ok, excinfo = scenario(upstream_dsn, body, **columns(owner="differing"))
    assert ok == "UPDATE 1"  # B already wrote what A writes: nothing is lost
    assert conflict_of(excinfo).columns == {
        "owner": {"read": "o1", "current": "same", "attempted": "other"}
    }


def test_never_policy(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute(f"UPDATE {env.name} SET note = 'b' WHERE id = 1")
        return await env.simple("UPDATE {t} SET note = 'a' WHERE id = 1", reads), await env.row(1)

    tag, row = scenario(upstream_dsn, body, **columns())
    assert tag == "UPDATE 1" and row["note"] == "a"


def test_groups(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute(f"UPDATE {env.name} SET note = 'b' WHERE id = 1")
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.simple("UPDATE {t} SET balance = 1 WHERE id = 1", reads)
        ok = await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads)
        return excinfo, ok

    excinfo, ok = scenario(
        upstream_dsn, body, groups=(frozenset({"balance", "note"}),), **columns()
    )
    assert conflict_of(excinfo).columns == {
        "note": {"read": "n1", "current": "b", "attempted": None}
    }
    assert ok == "UPDATE 1"


def test_sparse_update_keeps_another_sessions_change(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]  # owner o1, balance 10.00
        await env.b.execute(f"UPDATE {env.name} SET balance = 20 WHERE id = 1")
        # an ORM writing back every column it loaded: balance is what A read, not a change
        ok = await env.simple("UPDATE {t} SET owner = 'a', balance = 10.00 WHERE id = 1", reads)
        after = await env.row(1)
        reads = [await env.read(2)]
        await env.b.execute(f"UPDATE {env.name} SET balance = 21 WHERE id = 2")
        ext = await env.extended(
            "UPDATE {t} SET owner = $1, balance = $2 WHERE id = $3", ("a2", Decimal("20"), 2), reads
        )
        after2 = await env.row(2)
        stale = [{**(await env.read(1)), "balance": "10.00"}]  # a real change from 10
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.simple("UPDATE {t} SET balance = 15 WHERE id = 1", stale)
        return ok, after, after2, [tuple(r)[:3] for r in ext], excinfo

    ok, after, after2, ext, excinfo = scenario(upstream_dsn, body, sparse_update=True, **columns())
    assert ok == "UPDATE 1"
    assert after["owner"] == "a" and after["balance"] == Decimal("20.00")
    # row 2: B's 21 kept, A's owner written; what A knows is the balance it read, not B's 21
    assert (after2["owner"], after2["balance"]) == ("a2", Decimal("21.00"))
    assert ext == [(2, "a2", Decimal("20.00"))]
    assert conflict_of(excinfo).columns == {
        "balance": {"read": 10.0, "current": 20.0, "attempted": 15.0}
    }


def test_delete_checks_tracked_columns(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1), await env.read(2)]
        await env.b.execute(f"UPDATE {env.name} SET note = 'b' WHERE id = 1")
        ok = await env.simple("DELETE FROM {t} WHERE id = 1", reads[:1])
        await env.b.execute(f"UPDATE {env.name} SET owner = 'b' WHERE id = 2")
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.extended("DELETE FROM {t} WHERE id = $1", (2,), reads[1:])
        return ok, excinfo, await env.row(2)

    ok, excinfo, row = scenario(upstream_dsn, body, **columns())
    assert ok == "DELETE 1"  # 'never' columns do not stop a delete
    assert conflict_of(excinfo).columns == {
        "owner": {"read": "o2", "current": "b", "attempted": None}
    }
    assert row is not None


# ============================================================================ audit mode


def test_audit_mode_lets_the_write_through_and_reports(upstream_dsn):
    async def body(env: Env):
        env.protect(mode="audit")
        notices = []
        env.a.add_log_listener(lambda conn, msg: notices.append(msg))
        await env.a.execute("SET client_min_messages = error")  # the client wants no notices
        reads = [await env.read(1), await env.read(2)]
        await env.b.execute(f"UPDATE {env.name} SET version = 3 WHERE id = 1")
        await env.b.execute(f"DELETE FROM {env.name} WHERE id = 2")
        modified = await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads[:1])
        deleted = await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 2", reads[1:])
        await asyncio.sleep(0.05)
        return modified, deleted, notices, await env.row(1)

    modified, deleted, notices, row = scenario(upstream_dsn, body)
    assert (modified, deleted) == ("UPDATE 1", "UPDATE 0")
    assert row["owner"] == "a" and row["version"] == 4
    conflicts = [parse_conflict(error_fields(n)) for n in notices]
    assert [(c.kind, c.key, c.audit) for c in conflicts] == [
        ("modified", {"id": 1}, True),
        ("deleted", {"id": 2}, True),
    ]
    assert all(n.message.startswith(AUDIT_MARKER) for n in notices)
    assert conflicts[0].columns == {"version": {"read": 1, "current": 3, "attempted": None}}


# ============================================================================ text parameters


def test_extended_protocol_with_text_parameters(upstream_dsn):
    """The proxy binds read values as it captured them (text): psycopg sends str parameters
    as text of unknown type, which the CASTs must type."""

    async def setup(env: Env):
        return env.name, await env.read(1)

    def check(name: str, reads: dict):
        env = Env(None, None, None)  # type: ignore[arg-type]
        env.protect(name=name, **columns(owner="differing"), sparse_update=True)
        plan, literals = env.plan("UPDATE {t} SET owner = $1, balance = $2 WHERE id = $3", 3)
        rendered = plan.render_extended(literals, 3)
        extra = [reads[col] for _, col, _ in rendered.extra_params]
        with psycopg.connect(
            upstream_dsn, autocommit=True, cursor_factory=psycopg.RawCursor
        ) as conn:
            conn.execute(guard_functions_sql())
            conn.execute(f"UPDATE {name} SET balance = 30 WHERE id = 1")
            cur = conn.execute(rendered.sql, ["a", "10.00", "1", *extra], prepare=True)
            first = cur.fetchall()
            row = conn.execute(f"SELECT id, owner, balance FROM {name} WHERE id = 1").fetchone()
            conn.execute(f"UPDATE {name} SET owner = 'z' WHERE id = 1")
            with pytest.raises(psycopg.errors.SerializationFailure) as excinfo:
                conn.execute(rendered.sql, ["b", "10.00", "1", *extra], prepare=True)
        return first, row, excinfo.value.diag

    async def body(env: Env):
        name, reads = await setup(env)
        return await asyncio.get_running_loop().run_in_executor(None, check, name, reads)

    first, row, diag = scenario(upstream_dsn, body)
    assert row == (1, "a", Decimal("30.00"))  # balance written back: B's 30 kept
    # what the session knows now: the balance it read (and wrote back), not B's 30 it never saw
    assert first[0][:3] == (1, "a", Decimal("10.00"))
    assert json.loads(diag.message_detail)["columns"] == {
        "owner": {"read": "o1", "current": "z", "attempted": "b"}
    }


# ============================================================================ error plumbing


def test_internal_context_is_stripped(upstream_dsn):
    async def body(env: Env):
        reads = [await env.read(1)]
        await env.b.execute(f"UPDATE {env.name} SET version = 2 WHERE id = 1")
        with pytest.raises(asyncpg.SerializationError) as excinfo:
            await env.simple("UPDATE {t} SET owner = 'a' WHERE id = 1", reads)
        return excinfo.value

    exc = scenario(upstream_dsn, body)
    fields = error_fields(exc)
    assert "optimist_modified" in fields["W"]
    stripped = strip_internal_context(fields)
    assert "W" not in stripped
    assert {k: v for k, v in stripped.items()} == {k: v for k, v in fields.items() if k != "W"}
    kept = strip_internal_context({**fields, "W": "SQL function \"f\" statement 1\n" + fields["W"]})
    assert kept["W"] == 'SQL function "f" statement 1'


def test_other_errors_are_not_conflicts(upstream_dsn):
    async def body(env: Env):
        with pytest.raises(asyncpg.UniqueViolationError) as unique:
            await env.a.execute(f"INSERT INTO {env.name} (id) VALUES (1)")
        with pytest.raises(asyncpg.RaiseError) as own:
            await env.a.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'optimistic lock conflict: mine' "
                "USING DETAIL = 'not json'; END $$"
            )
        return unique.value, own.value

    for exc in scenario(upstream_dsn, body):
        assert parse_conflict(error_fields(exc)) is None


def test_reject_sql_raises_in_the_clients_transaction(upstream_dsn):
    async def body(env: Env):
        with pytest.raises(asyncpg.PostgresError) as excinfo:
            await env.a.execute(reject_sql(env.table, "not_read"))
        return excinfo.value

    exc = scenario(upstream_dsn, body)
    assert exc.sqlstate == "55000"
    assert "refused: the session has not read the row it writes" in exc.message
    assert parse_conflict(error_fields(exc)) is None


# ============================================================================ random shapes

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_targets = st.sampled_from(["{t}", "{t} AS q", "ONLY {t}", "public.{t}", "{t} q"])
_set_items = st.lists(
    st.sampled_from(
        [
            "owner = 'a'",
            "owner = NULL",
            "balance = balance + 1",
            "balance = 5.5",
            "note = DEFAULT",
            "note = (SELECT 'x')",
            "version = 7",
            "(owner, note) = ('p', 'q')",
            "updated = now()",
            "balance = '12'::numeric",
        ]
    ),
    min_size=1,
    max_size=3,
).filter(lambda items: _distinct_targets(items))


def _distinct_targets(items: list[str]) -> bool:
    written = [c.strip() for item in items for c in item.split("=")[0].strip("( )").split(",")]
    return len(written) == len(set(written))


_pins = st.sampled_from(
    ["id = 1", "{q}.id = 2", "1 = id", "id IN (1, 2)", "id = '3'::int", "id IN (3,2,1)", "(id = 1)"]
)
_others = st.lists(
    st.sampled_from(
        [
            "note IS NULL",
            "balance BETWEEN 1 AND 100",
            "(owner = 'x' OR owner = 'y')",
            "owner LIKE 'o%'",
            "NOT (balance < 0)",
            "version > 0",
        ]
    ),
    max_size=2,
)
_tails = st.sampled_from(
    ["", " RETURNING *", " RETURNING owner", " -- done", " ;", " RETURNING id /* c */"]
)
_tables = st.sampled_from(
    [
        dict(),
        dict(bump="timestamp", version_column="updated"),
        dict(mode="audit"),
        dict(notify="optimist_shapes"),
        dict(
            strategy="columns",
            version_column=None,
            policies={"owner": "differing", "balance": "any", "note": "never"},
        ),
        dict(
            strategy="columns",
            version_column=None,
            sparse_update=True,
            policies={"owner": "changed", "balance": "differing", "note": "changed"},
            groups=(frozenset({"owner", "note"}),),
        ),
    ]
)


@pytest.fixture(scope="module")
def shape_db(upstream_dsn):
    name = "optimist_shapes_" + uuid.uuid4().hex[:8]
    with psycopg.connect(upstream_dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {name} (id integer PRIMARY KEY, owner text, "
            f"balance numeric(10,2), note text, version integer NOT NULL DEFAULT 1, "
            f"updated timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(guard_functions_sql())
        try:
            yield conn, name
        finally:
            conn.execute(f"DROP TABLE {name}")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["update", "delete"]),
    target=_targets,
    items=_set_items,
    pin=_pins,
    others=_others,
    tail=_tails,
    spec=_tables,
    data=st.data(),
)
def test_random_statement_shapes_render_to_valid_sql(
    shape_db, kind, target, items, pin, others, tail, spec, data
):
    conn, name = shape_db
    alias = "q" if target.endswith(" q") else name
    where = " AND ".join(data.draw(st.permutations([pin.replace("{q}", alias), *others])))
    head = (
        f"UPDATE {target} SET {', '.join(items)}" if kind == "update" else f"DELETE FROM {target}"
    )
    client = f"{head} WHERE {where}{tail}".replace("{t}", name)
    env = Env(None, None, None)  # type: ignore[arg-type]
    table = env.protect(name=name, **spec)
    template, literals = normalize(client)
    plan = plan_write(template, table, 0)
    assert isinstance(plan, WritePlan), (client, plan)
    reads = [
        {
            c: {
                "integer": "1",
                "text": "x",
                "numeric(10,2)": "1.50",
                "timestamp with time zone": "2024-01-01 00:00:00+00",
            }[TYPES[c]]
            for c in plan.checked_columns
        }
        for _ in plan.pinned_rows
    ]
    for sql in (
        plan.render_simple(literals, reads, True),
        plan.render_simple(literals, reads[:1] + [None] * (len(reads) - 1), True),
    ):
        explained = conn.execute("EXPLAIN " + sql.rstrip(" ;")).fetchall()
        assert explained
        if table.mode != "off" and reads:
            assert any("One-Time Filter: pg_temp.optimist_present" in r[0] for r in explained)
    rendered = plan.render_extended(literals, 0)
    with conn.transaction():
        conn.execute("PREPARE shape AS " + rendered.sql.rstrip(" ;"))
        conn.execute("DEALLOCATE shape")
