"""The embedded PostgreSQL the CLI, the demo and the tests run on."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psycopg
import pytest

from proxy.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    default_data_dir,
    free_port,
    pg_tool,
)
from proxy.embedded.privileges import untraversable_ancestors
from tests.support import connect, query_direct, run_psql, wait_until


@pytest.fixture
def scratch():
    d = tempfile.mkdtemp(prefix="optimist-test-emb-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_session_server_settings(pg):
    if getattr(pg, "external", False):
        pytest.skip("OPTIMIST_TEST_DSN server")
    got = dict(
        query_direct(
            pg.dsn,
            "select name, setting from pg_settings where name = any(%s)",
            [
                [
                    "fsync",
                    "synchronous_commit",
                    "full_page_writes",
                    "max_connections",
                    "listen_addresses",
                    "unix_socket_directories",
                    "server_encoding",
                ]
            ],
        )
    )
    assert got == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(pg.data_dir),
        "server_encoding": "UTF8",
    }
    assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    assert (pg.data_dir / f".s.PGSQL.{pg.port}").is_socket()
    # the Unix socket works too
    with psycopg.connect(
        host=str(pg.data_dir), port=pg.port, user="postgres", dbname="postgres"
    ) as c:
        assert c.execute("select 1").fetchone() == (1,)
    if os.geteuid() == 0:
        assert query_direct(pg.dsn, "select current_setting('data_directory')")[0][0] == str(
            pg.data_dir
        )
        import pwd

        assert pwd.getpwuid(pg.data_dir.stat().st_uid).pw_name == "optimist-pg"


def test_life_cycle_kill_restart_and_config(scratch):
    port = free_port()
    pg = EmbeddedPostgres(
        scratch / "data",
        port,
        fast=True,
        config={"work_mem": "7MB", "application_name": "it's"},
        die_with_parent=True,
    )
    try:
        pg.start()
        assert pg.running and pg.port == port
        assert query_direct(pg.dsn, "show work_mem") == [("7MB",)]
        assert query_direct(pg.dsn, "show application_name") == [("it's",)]
        query_direct(pg.dsn, "create table survives (x int); insert into survives values (1)")
        pg.restart()
        assert pg.port == port
        assert query_direct(pg.dsn, "select x from survives") == [(1,)]
        conn = connect(pg.dsn)
        pid = pg.pid
        pg.kill()
        assert not pg.running
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        conn.close()
        # no process of the old cluster is left
        wait_until(
            lambda: subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 1,
            5,
            what="the killed cluster's processes to disappear",
        )
        pg.start()  # crash recovery
        assert query_direct(pg.dsn, "select x from survives") == [(1,)]
        pg.stop()
        assert not pg.running
        assert not socket.socket().connect_ex(("127.0.0.1", port)) == 0
        pg.stop()  # idempotent
    finally:
        pg.stop()


def test_start_failure_reports_the_log(scratch):
    pg = EmbeddedPostgres(scratch / "data", fast=True, config=["shared_buffers = 'not a size'"])
    with pytest.raises(EmbeddedPostgresError) as ei:
        pg.start()
    assert "shared_buffers" in str(ei.value)
    assert not pg.running


def test_port_in_use_is_reported(scratch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        pg = EmbeddedPostgres(scratch / "data", s.getsockname()[1], fast=True, startup_timeout=20)
        with pytest.raises(EmbeddedPostgresError) as ei:
            pg.start()
        assert "could not" in str(ei.value).lower() or "in use" in str(ei.value).lower()


def test_second_instance_on_same_data_dir(scratch):
    a = EmbeddedPostgres(scratch / "data", fast=True)
    a.start()
    try:
        with pytest.raises(EmbeddedPostgresError, match="already running"):
            EmbeddedPostgres(scratch / "data", fast=True).start()
        b = EmbeddedPostgres(scratch / "data", fast=True, reuse_running=True).start()
        assert b.port == a.port and b.pid == a.pid
        assert query_direct(b.dsn, "select 1") == [(1,)]
    finally:
        a.stop()


def test_server_dies_with_the_process_that_started_it(scratch):
    data = scratch / "data"
    code = textwrap.dedent(f"""
        import os, sys, time
        from proxy.embedded import EmbeddedPostgres
        pg = EmbeddedPostgres({str(data)!r}, fast=True, die_with_parent=True).start()
        print(pg.pid, pg.port, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        pid, port = map(int, proc.stdout.readline().split())
        assert query_direct(f"postgresql://postgres@127.0.0.1:{port}/postgres", "select 1") == [
            (1,)
        ]
        proc.kill()
        proc.wait(10)
        wait_until(
            lambda: (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
            ),
            15,
            what="the orphaned postmaster to shut down",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        EmbeddedPostgres(data).stop()


def test_default_data_dir_and_tools():
    assert default_data_dir().parts[-2:] == ("optimist", "pgdata")
    for tool in ("psql", "pgbench", "pg_isready"):
        assert os.access(pg_tool(tool), os.X_OK)


def test_psql_against_the_embedded_server(pg):
    res = run_psql(pg.dsn, "-Atc", "select current_user, current_database()")
    assert res.check().stdout.strip() == "postgres|postgres"


root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="the system user and mode changes happen only as root"
)


@root_only
def test_root_default_data_dir_changes_no_directory_mode(caplog):
    data = default_data_dir()
    assert untraversable_ancestors(data) == [], (
        "the system user could not reach the default data dir"
    )
    assert not data.is_relative_to(Path.home())
    watched = [Path.home(), *(p for p in data.parents if p.exists())]
    before = {p: p.stat().st_mode for p in watched}
    created = [p for p in (data, data.parent) if not p.exists()]
    caplog.set_level("WARNING", logger="optimist.embedded")
    pg = EmbeddedPostgres(reuse_running=True)  # shares it with any optimist already using it
    try:
        pg.start()
        assert pg.data_dir == data
        assert query_direct(pg.dsn, "select 1") == [(1,)]
    finally:
        pg.stop()
    assert {p: p.stat().st_mode for p in watched} == before
    assert [r.getMessage() for r in caplog.records if "g+x,o+x" in r.getMessage()] == []
    if created and not (data / "postmaster.pid").exists():
        shutil.rmtree(created[-1], ignore_errors=True)


@root_only
def test_an_explicit_data_dir_gets_traversable_parents_and_says_so(scratch, caplog):
    scratch.chmod(0o700)
    caplog.set_level("WARNING", logger="optimist.embedded")
    pg = EmbeddedPostgres(scratch / "data", fast=True)
    try:
        pg.start()
        assert query_direct(pg.dsn, "select 1") == [(1,)]
    finally:
        pg.stop()
    assert scratch.stat().st_mode & 0o777 == 0o711
    assert f"added g+x,o+x to {scratch} (mode 0700 -> 0711)" in caplog.text


def test_shared_instances_in_one_process_hold_their_own_lease(scratch):
    first = EmbeddedPostgres(scratch / "data", fast=True, reuse_running=True).start()
    second = EmbeddedPostgres(scratch / "data", fast=True, reuse_running=True).start()
    try:
        assert second.pid == first.pid
        pid = first.pid
        second.stop()
        second.stop()  # a second stop has no lease to give back: it must not stop the server
        assert query_direct(first.dsn, "select 1") == [(1,)]
        first.stop()
        assert not (scratch / "data" / "postmaster.pid").exists()
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
        )
    finally:
        EmbeddedPostgres(scratch / "data").stop()
