"""psql through the proxy behaves exactly as psql against PostgreSQL directly (simple
protocol, multi-statement strings, errors, COPY both ways)."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.support import run_psql


def both(proxy, upstream_dsn, *args, **kwargs):
    via = run_psql(proxy.dsn, *args, **kwargs)
    direct = run_psql(upstream_dsn, *args, **kwargs)
    return via, direct


def _normalised(result):
    # temporary schemas are numbered after the backend slot, which differs between runs
    return tuple(
        re.sub(r"pg_temp_\d+", "pg_temp_N", x) if isinstance(x, str) else x for x in result.outcome
    )


def assert_identical(via, direct):
    assert _normalised(via) == _normalised(direct), (
        f"through the proxy:\n rc={via.returncode}\n out={via.stdout!r}\n err={via.stderr!r}\n"
        f"directly:\n rc={direct.returncode}\n out={direct.stdout!r}\n err={direct.stderr!r}"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "select 1 as a, 'x'::text as b, null::int as c",
        "select g, md5(g::text) from generate_series(1, 500) g",
        "select 1; select 2",
        "select 'a' as x; select 'b' as y, 2 as z; values (1), (2)",
        "begin; select 1; commit",
        "",
        ";;",
        "select E'\\u00e9t\\u00e9 \\U0001F600', repeat('x', 70000) is not null",
        "show server_version_num",
    ],
)
def test_simple_queries_identical(proxy, upstream_dsn, sql):
    via, direct = both(proxy, upstream_dsn, "-c", sql)
    assert via.returncode == 0, via.stderr
    assert_identical(via, direct)


@pytest.mark.parametrize(
    "sql",
    [
        "select 1/0",
        "select * from no_such_table_xyz",
        "selec 1",
        "select 1; select 1/0; select 3",
        "create temp table t(a int primary key); insert into t values (1); insert into t values (1)",
        "begin; select 1/0; select 1; rollback",
        "do $$ begin raise exception using errcode = 'P0001', message = 'custom', detail = 'd', hint = 'h'; end $$",
    ],
)
def test_errors_identical(proxy, upstream_dsn, sql):
    via, direct = both(proxy, upstream_dsn, "-v", "VERBOSITY=verbose", "-c", sql)
    assert via.returncode != 0
    assert "ERROR:" in via.stderr
    assert_identical(via, direct)


def test_script_continues_after_errors_identical(proxy, upstream_dsn):
    script = """
\\set VERBOSITY verbose
create temp table t(a int primary key, b text);
insert into t values (1, 'one');
insert into t values (1, 'dup');
select * from t;
begin;
insert into t values (2, 'two');
select 1/0;
select 'skipped';
rollback;
select count(*) from t;
do $$ begin raise notice 'note %', 7; raise warning 'careful'; end $$;
select 'end';
"""
    via, direct = both(proxy, upstream_dsn, "-f", "-", input=script, on_error_stop=False)
    assert via.returncode == 0
    assert "current transaction is aborted" in via.stderr
    assert "NOTICE:  00000: note 7" in via.stderr
    assert_identical(via, direct)


def test_copy_from_stdin_inline_identical(proxy, upstream_dsn):
    null = "\\N"
    rows = "".join(f"{i}\tname {i}\t{null if i % 7 == 0 else i * 1.5}\n" for i in range(1, 2001))
    script = (
        "create temp table t(id int primary key, name text, v numeric);\n"
        "copy t from stdin;\n" + rows + "\\.\n"
        "select count(*), sum(id), count(v), sum(v) from t;\n"
        "copy t (id, name) from stdin with (format csv);\n9001,\"quoted, name\"\n9002,\"x\"\"y\"\n\\.\n"
        "select * from t where id > 9000 order by id;\n"
    )
    via, direct = both(proxy, upstream_dsn, "-f", "-", input=script)
    assert via.returncode == 0, via.stderr
    assert "2000 | 2001000 |  1715" in via.stdout
    assert_identical(via, direct)


def test_backslash_copy_from_file_and_to_stdout_identical(proxy, upstream_dsn, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("".join(f"{i},\"v{i}\"\n" for i in range(1000)))
    script = (
        "create temp table t(id int, v text);\n"
        f"\\copy t from '{src}' with (format csv)\n"
        "select count(*) from t;\n"
        "\\copy (select * from t where id % 100 = 0 order by id) to stdout with (format csv)\n"
        "\\copy t to stdout\n"
    )
    via, direct = both(proxy, upstream_dsn, "-f", "-", input=script)
    assert via.returncode == 0, via.stderr
    assert "900,v900" in via.stdout
    assert_identical(via, direct)


def test_copy_to_stdout_large_identical(proxy, upstream_dsn):
    sql = "copy (select g, md5(g::text), repeat('z', g % 300) from generate_series(1, 20000) g) to stdout"
    via, direct = both(proxy, upstream_dsn, "-c", sql)
    assert via.returncode == 0, via.stderr
    assert len(via.stdout.splitlines()) == 20000
    assert_identical(via, direct)


def test_copy_binary_to_stdout_identical(proxy, upstream_dsn):
    sql = "copy (select g, g::numeric / 7, now()::date - g from generate_series(1, 100) g) to stdout (format binary)"
    via, direct = both(proxy, upstream_dsn, "-c", sql, binary=True)
    assert via.returncode == 0, via.stderr
    assert via.stdout.startswith(b"PGCOPY\n\xff\r\n\0")
    assert via.outcome == direct.outcome


def test_failing_copy_identical(proxy, upstream_dsn):
    script = (
        "\\set VERBOSITY verbose\n"
        "create temp table t(id int primary key, v text);\n"
        "copy t from stdin;\n1\ta\n2\tb\nnot-a-number\tc\n4\td\n\\.\n"
        "select count(*) from t;\n"
        "copy t from stdin;\n5\te\n5\tdup\n\\.\n"
        "copy no_such_table from stdin;\n1\n\\.\n"
        "copy t from stdin with (format csv);\n6,\"unterminated\n\\.\n"
        "select count(*) from t;\n"
        "copy t from stdin;\n7\tg\n\\.\n"
        "select * from t;\n"
    )
    via, direct = both(proxy, upstream_dsn, "-f", "-", input=script, on_error_stop=False)
    assert "invalid input syntax for type integer" in via.stderr
    assert "duplicate key value" in via.stderr
    assert " 7 | g" in via.stdout
    assert_identical(via, direct)


def test_failing_copy_stops_script(proxy, upstream_dsn):
    script = "create temp table t(id int);\ncopy t from stdin;\n1\nx\n\\.\nselect 'not reached';\n"
    via, direct = both(proxy, upstream_dsn, "-f", "-", input=script)
    assert via.returncode == 3
    assert "not reached" not in via.stdout
    assert_identical(via, direct)


def test_transaction_state_across_statements_identical(proxy, upstream_dsn):
    table = f"relay_psql_{uuid.uuid4().hex[:8]}"
    script = (
        f"create table {table}(id int primary key, v int);\n"
        f"begin;\ninsert into {table} values (1, 1);\nsavepoint s;\ninsert into {table} values (1, 2);\n"
        f"rollback to savepoint s;\ninsert into {table} values (2, 2);\ncommit;\n"
        f"select * from {table} order by id;\n"
        f"drop table {table};\n"
    )
    via, direct = both(proxy, upstream_dsn, "-f", "-", input=script, on_error_stop=False)
    assert "  1 | 1\n  2 | 2\n(2 rows)" in via.stdout
    assert_identical(via, direct)
