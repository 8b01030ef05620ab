"""psycopg 3 through the proxy: client- and server-side binding, prepared statements,
pipeline mode, COPY, notices, ParameterStatus, cancel."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import pq, sql

from tests.support import connect


def _table(prefix: str = "relay_pg3") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    "cursor_class", [psycopg.Cursor, psycopg.ClientCursor], ids=["server-binding", "client-binding"]
)
def test_parameter_binding(proxy, upstream_dsn, cursor_class):
    def scenario(dsn):
        with connect(dsn, cursor_factory=cursor_class) as conn:
            cur = conn.cursor()
            out = []
            cur.execute(
                "select %s::int + %s, %s || 'x', %s, %s, %s",
                (1, 2, "a'b", None, decimal.Decimal("1.50"), dt.date(2020, 1, 2)),
            )
            out.append(cur.fetchall())
            cur.execute("select %(a)s::text, %(a)s::text = %(b)s", {"a": "same", "b": "same"})
            out.append(cur.fetchall())
            cur.execute("select * from unnest(%s::int[]) x", ([3, 1, 2],))
            out.append(cur.fetchall())
            cur.execute(
                "select %s::bytea, %s::jsonb",
                (b"\x00\x01\xff", psycopg.types.json.Jsonb({"k": [1]})),
            )
            out.append(cur.fetchall())
            cur.execute("create temp table t (id int, v text)")
            cur.executemany("insert into t values (%s, %s)", [(i, f"v{i}") for i in range(200)])
            cur.execute("select count(*), max(v) from t")
            out.append(cur.fetchall())
            cur.execute(
                "select 1 as a; select 2 as b"
            )  # no parameters: simple protocol, two results
            sets = [cur.fetchall()]
            while cur.nextset():
                sets.append(cur.fetchall())
            out.append(sets)
            with pytest.raises(psycopg.errors.UndefinedColumn) as ei:
                cur.execute("select nope from t where id = %s", (1,))
            out.append((ei.value.sqlstate, str(ei.value)))
            cur.execute("select 'after error'")
            out.append(cur.fetchall())
            # binary results
            bcur = psycopg.Cursor(conn)
            bcur.execute(
                "select %s::numeric, %s::timestamptz, %s::float8[]",
                (
                    decimal.Decimal("3.14159"),
                    dt.datetime(2021, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
                    [1.5, 2.0],
                ),
                binary=True,
            )
            out.append(bcur.fetchall())
            return out

    via = scenario(proxy.dsn)
    assert via == scenario(upstream_dsn)
    assert via[0] == [(3, "a'bx", None, decimal.Decimal("1.50"), dt.date(2020, 1, 2))]


def test_prepare_true(proxy):
    with connect(proxy.dsn) as conn:
        results = [
            conn.execute("select %s::int * 2", (i,), prepare=True).fetchone()[0] for i in range(10)
        ]
        names = [r[0] for r in conn.execute("select name from pg_prepared_statements").fetchall()]
        assert results == [i * 2 for i in range(10)]
        assert len(names) == 1 and names[0].startswith("_pg3_")
        # prepare everything from the first execution
        conn.prepare_threshold = 0
        for i in range(3):
            assert conn.execute("select %s::text || 'p'", (str(i),)).fetchone() == (f"{i}p",)
        assert conn.execute("select count(*) from pg_prepared_statements").fetchone()[0] >= 2
        # a prepared statement failing at execution leaves the statement and the session usable
        for _ in range(2):
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("select 1 / %s::int", (0,), prepare=True)
        assert conn.execute("select 1 / %s::int", (1,), prepare=True).fetchone() == (1,)
        # DEALLOCATE ALL behind psycopg's back is handled by psycopg (it re-prepares)
        conn.execute("deallocate all")
        conn.prepare_threshold = None
        assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
        conn.prepare_threshold = 0
        assert conn.execute("select %s::text || 'p'", ("again",)).fetchone() == ("againp",)


def _pipeline_scenario(dsn: str, table: str, autocommit: bool):
    events = []
    with connect(dsn, autocommit=autocommit) as conn:
        conn.execute(f"create table {table} (id int primary key)")
        if not autocommit:
            conn.commit()
        try:
            with conn.pipeline() as p:
                conn.execute(f"insert into {table} values (1)")
                cur = conn.execute(f"select count(*) from {table}")
                p.sync()
                events.append(("count", cur.fetchone()))
                conn.execute(f"insert into {table} values (2)")
                conn.execute("select 1 / 0")
                conn.execute(f"insert into {table} values (3)")
        except psycopg.Error as e:
            events.append(("error", type(e).__name__, e.sqlstate))
        if not autocommit:
            events.append(("status", conn.info.transaction_status.name))
            conn.rollback()
        with conn.pipeline():
            cur = conn.execute(f"select array_agg(id order by id) from {table}")
        events.append(("final", cur.fetchone()))
        conn.execute(f"drop table {table}")
        if not autocommit:
            conn.commit()
    return events


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_pipeline_error_in_the_middle(proxy, upstream_dsn, autocommit):
    via = _pipeline_scenario(proxy.dsn, _table(), autocommit)
    direct = _pipeline_scenario(upstream_dsn, _table(), autocommit)
    assert via == direct
    assert ("error", "DivisionByZero", "22012") in via


def _raw_pipeline(dsn: str, table: str):
    """libpq pipeline: three statements, an error in the middle, Sync; then another batch."""
    with connect(dsn) as conn:
        conn.execute(f"create table {table} (id int)")
        pgconn = conn.pgconn
        pgconn.enter_pipeline_mode()
        pgconn.send_query_params(f"insert into {table} values (1)".encode(), None)
        pgconn.send_query_params(b"select 1/0", None)
        pgconn.send_query_params(f"insert into {table} values (2)".encode(), None)
        pgconn.send_prepare(b"stmt_x", b"select $1::int + 1")
        pgconn.pipeline_sync()
        pgconn.send_query_params(f"select count(*) from {table}".encode(), None)
        pgconn.send_prepare(b"stmt_x", b"select $1::int + 1")
        pgconn.send_query_prepared(b"stmt_x", [b"41"])
        pgconn.pipeline_sync()
        out = []
        syncs = 0
        deadline = time.monotonic() + 20
        while syncs < 2 and time.monotonic() < deadline:
            res = pgconn.get_result()
            if res is None:
                continue
            status = pq.ExecStatus(res.status).name
            if status == "PIPELINE_SYNC":
                syncs += 1
                out.append(status)
                continue
            err = res.error_field(pq.DiagnosticField.SQLSTATE)
            value = res.get_value(0, 0) if res.ntuples else None
            out.append((status, err, value))
        pgconn.exit_pipeline_mode()
        conn.execute(f"drop table {table}")
    return out


def test_pipeline_libpq_aborted_until_sync(proxy, upstream_dsn):
    via = _raw_pipeline(proxy.dsn, _table())
    assert via == _raw_pipeline(upstream_dsn, _table())
    assert via == [
        ("COMMAND_OK", None, None),
        ("FATAL_ERROR", b"22012", None),
        ("PIPELINE_ABORTED", None, None),
        ("PIPELINE_ABORTED", None, None),
        "PIPELINE_SYNC",
        ("TUPLES_OK", None, b"0"),
        ("COMMAND_OK", None, None),
        ("TUPLES_OK", None, b"42"),
        "PIPELINE_SYNC",
    ]


def test_copy_both_ways(proxy, upstream_dsn):
    def scenario(dsn):
        with connect(dsn) as conn:
            cur = conn.cursor()
            cur.execute("create temp table t (id int, name text, ts timestamptz, n numeric)")
            rows = [
                (
                    i,
                    f"name\t{i}\n" if i % 3 else None,
                    dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
                    decimal.Decimal(i) / 8,
                )
                for i in range(3000)
            ]
            with cur.copy("copy t from stdin") as copy:
                for r in rows[:1000]:
                    copy.write_row(r)
            with cur.copy("copy t from stdin (format binary)") as copy:
                copy.set_types(["int4", "text", "timestamptz", "numeric"])
                for r in rows[1000:2000]:
                    copy.write_row(r)
            with cur.copy("copy t (id, name) from stdin (format csv)") as copy:
                copy.write("".join(f"{i},\"csv {i}\"\n" for i in range(2000, 3000)).encode())
            out = [cur.execute("select count(*), count(name), sum(n) from t").fetchone()]
            with cur.copy("copy (select * from t where id < 2000 order by id) to stdout") as copy:
                copy.set_types(["int4", "text", "timestamptz", "numeric"])
                back = list(copy.rows())
            out.append(back == rows[:2000])
            with cur.copy("copy (select * from t order by id) to stdout (format binary)") as copy:
                copy.set_types(["int4", "text", "timestamptz", "numeric"])
                out.append(len(list(copy.rows())))
            with cur.copy("copy (select id from t order by id limit 5) to stdout") as copy:
                out.append(b"".join(bytes(b) for b in copy))
            return out

    via = scenario(proxy.dsn)
    assert via == scenario(upstream_dsn)
    assert via[0][0] == 3000 and via[1] is True and via[2] == 3000 and via[3] == b"0\n1\n2\n3\n4\n"


def test_copy_failures(proxy):
    with connect(proxy.dsn) as conn:
        cur = conn.cursor()
        cur.execute("create temp table t (id int primary key)")
        # client-side failure: psycopg sends CopyFail
        with pytest.raises(ZeroDivisionError):
            with cur.copy("copy t from stdin") as copy:
                copy.write_row((1,))
                raise ZeroDivisionError  # the client fails mid-COPY
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        # server-side failures
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with cur.copy("copy t from stdin") as copy:
                copy.write(b"1\nnope\n")
        with pytest.raises(psycopg.errors.UniqueViolation):
            with cur.copy("copy t from stdin") as copy:
                copy.write(b"1\n1\n")
        with pytest.raises(psycopg.errors.UndefinedTable):
            with cur.copy("copy no_such_table from stdin") as copy:
                copy.write(b"1\n")
        # inside a transaction, a failed COPY aborts it
        conn.autocommit = False
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with cur.copy("copy t from stdin") as copy:
                copy.write(b"x\n")
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        conn.rollback()
        with cur.copy("copy t from stdin") as copy:
            copy.write(b"7\n")
        conn.commit()
        assert cur.execute("select array_agg(id) from t").fetchone() == ([7],)


def test_notices(proxy, upstream_dsn):
    def scenario(dsn):
        got = []
        with connect(dsn) as conn:
            conn.add_notice_handler(
                lambda d: got.append(
                    (
                        d.severity_nonlocalized,
                        d.sqlstate,
                        d.message_primary,
                        d.message_detail,
                        d.message_hint,
                    )
                )
            )
            conn.execute("set client_min_messages = debug1")
            conn.execute(
                "do $$ begin raise notice 'hello %', 42; raise warning 'careful' using detail = 'd', hint = 'h'; end $$"
            )
            conn.execute("drop table if exists surely_not_there_xyz")
            conn.execute("set client_min_messages = warning")
            conn.execute("do $$ begin raise notice 'filtered'; raise warning 'kept'; end $$")
            with conn.pipeline():
                conn.execute("do $$ begin raise notice 'in pipeline'; end $$")
                conn.execute("select %s::int", (1,))
            conn.execute("set client_min_messages = notice")
            with conn.pipeline():
                conn.execute("do $$ begin raise notice 'in pipeline'; end $$")
                conn.execute("select %s::int", (1,))
        return [g for g in got if g[0] != "DEBUG"]

    via = scenario(proxy.dsn)
    assert via == scenario(upstream_dsn)
    assert ("NOTICE", "00000", "hello 42", None, None) in via
    assert ("WARNING", "01000", "careful", "d", "h") in via
    assert any(g[2] == "table \"surely_not_there_xyz\" does not exist, skipping" for g in via)
    assert ("WARNING", "01000", "kept", None, None) in via
    assert not any(g[2] == "filtered" for g in via)
    assert [g[2] for g in via].count("in pipeline") == 1


def test_parameter_status(proxy, upstream_dsn):
    names = [
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "integer_datetimes",
        "TimeZone",
        "standard_conforming_strings",
        "is_superuser",
        "session_authorization",
        "application_name",
    ]
    with (
        connect(proxy.dsn, application_name="relay-ps") as via,
        connect(upstream_dsn, application_name="relay-ps") as direct,
    ):
        assert {n: via.info.parameter_status(n) for n in names} == {
            n: direct.info.parameter_status(n) for n in names
        }
        assert via.info.parameter_status("application_name") == "relay-ps"
        via.execute("set application_name = 'changed by set'")
        assert via.info.parameter_status("application_name") == "changed by set"
        via.execute("set timezone = 'Asia/Kolkata'")
        assert via.info.parameter_status("TimeZone") == "Asia/Kolkata"
        via.execute("set datestyle = 'German'")
        assert via.info.parameter_status("DateStyle").startswith("German")
        # a transaction rolled back restores the reported value
        via.autocommit = False
        via.execute("set application_name = 'in tx'")
        assert via.info.parameter_status("application_name") == "in tx"
        via.rollback()
        assert via.info.parameter_status("application_name") == "changed by set"
        via.autocommit = True
        via.execute("reset all")
        assert via.info.parameter_status("application_name") == "relay-ps"
        assert via.info.server_version == direct.info.server_version
        assert via.info.encoding == "utf-8"


@pytest.mark.parametrize("how", ["cancel_safe", "cancel"])
def test_cancel_from_another_thread(proxy, how):
    with connect(proxy.dsn) as conn:
        timer = threading.Timer(0.5, getattr(conn, how))
        timer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(10)")
        finally:
            timer.cancel()
        assert time.monotonic() - t0 < 4
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def test_server_side_cursor(proxy):
    with connect(proxy.dsn, autocommit=False) as conn:
        with conn.cursor(name="relay_ssc") as cur:
            cur.itersize = 100
            cur.execute("select g, repeat('x', g % 50) from generate_series(1, 5000) g")
            total = sum(1 for _ in cur)
        assert total == 5000
        conn.commit()


def test_identifiers_and_composed_sql(proxy):
    with connect(proxy.dsn) as conn:
        name = _table('Relay "Mixed" Case')
        q = sql.SQL("create temp table {} ({} int)").format(
            sql.Identifier(name), sql.Identifier("Col é")
        )
        conn.execute(q)
        conn.execute(sql.SQL("insert into {} values (%s)").format(sql.Identifier(name)), (5,))
        got = conn.execute(
            sql.SQL("select {} from {}").format(sql.Identifier("Col é"), sql.Identifier(name))
        ).fetchall()
        assert got == [(5,)]
