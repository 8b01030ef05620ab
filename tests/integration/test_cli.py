"""`optimist` run as a user runs it (a subprocess): errors are one line saying what to do,
addresses mean what they say, and the README's commands work as written."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest

from proxy.embedded import free_port
from tests.support.pgutil import wait_until
from tests.support.promtext import scrape
from tests.support.proxyproc import wait_for_port

REPO = Path(__file__).resolve().parents[2]


def optimist(
    *args: str, env: dict | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [
        line
        for line in result.stderr.splitlines()
        if "ERROR" in line or line.startswith("optimist:")
    ]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# ---------------------------------------------------------------- addresses and bind errors


def test_listen_port_in_use_is_one_line(pg, taken_port):
    result = optimist(
        "serve", "--listen", f"127.0.0.1:{taken_port}", "--upstream", f"{pg.host}:{pg.port}"
    )
    assert_one_line_error(
        result,
        f"cannot listen on 127.0.0.1:{taken_port}: address already "
        "in use (is another optimist running? use --listen)",
    )


def test_metrics_port_in_use_is_one_line(pg, taken_port):
    result = optimist(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port('127.0.0.1')}",
        "--upstream",
        f"{pg.host}:{pg.port}",
        "--metrics",
        f"127.0.0.1:{taken_port}",
    )
    assert_one_line_error(
        result,
        f"cannot listen on 127.0.0.1:{taken_port}: address already "
        "in use (is another optimist running? use --metrics)",
    )


def test_workers_stop_when_the_port_is_taken(pg, taken_port):
    """Restarting workers that cannot bind would loop forever: the supervisor gives up."""
    result = optimist(
        "serve",
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{taken_port}",
        "--upstream",
        f"{pg.host}:{pg.port}",
        timeout=30,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"cannot listen on 127.0.0.1:{taken_port}: address already in use" in result.stderr


def test_a_bare_listen_port_means_localhost(pg):
    port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--listen",
            str(port),
            "--upstream",
            f"{pg.host}:{pg.port}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_port("127.0.0.1", port, 15, proc), (
            proc.stderr.read() if proc.poll() is not None else ""
        )
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        proc.terminate()
        proc.wait(15)


def test_an_upstream_of_another_scheme_says_which_schemes_work():
    result = optimist("serve", "--upstream", "mysql://x")
    assert_one_line_error(
        result, "the URL scheme must be postgresql:// or postgres://, not mysql://"
    )
    assert "port" not in result.stderr


def test_without_rules_the_proxy_says_it_is_a_plain_relay(proxy_factory):
    proxy = proxy_factory(metrics=True)
    base = proxy.metrics_url.rsplit("/", 1)[0]
    assert scrape(base + "/readyz").strip() == "ready (no rules loaded: plain relay)"
    warning = [line for line in proxy.stderr_text().splitlines() if "no rules loaded" in line]
    assert (
        warning
        and "WARNING" in warning[0]
        and "--rules" in warning[0]
        and "optimist demo" in warning[0]
    ), proxy.stderr_text()


# ---------------------------------------------------------------- check


@pytest.fixture(scope="module")
def table(upstream_dsn):
    name = f"cli_t_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(upstream_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, version integer NOT NULL)")
    yield name
    with psycopg.connect(upstream_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_check_accepts_host_port_as_serve_does(pg, table, tmp_path):
    rules = write_rules(
        tmp_path, f"version: 1\ntables:\n  - table: {table}\n    version_column: version\n"
    )
    result = optimist("check", "--rules", str(rules), "--upstream", f"{pg.host}:{pg.port}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("rules fit the database: 1 protected table")


def test_check_without_upstream_says_how_to_add_one():
    result = optimist("check", "--rules", "rules/example.yaml")
    assert result.returncode == 0
    assert result.stdout.strip().endswith(
        "not checked against a database (pass --upstream URL to check tables, keys and columns too)"
    )


def test_check_suggests_the_names_the_database_has(pg, table, tmp_path):
    rules = write_rules(
        tmp_path,
        f"""
        version: 1
        tables:
          - table: {table}x
            version_column: version
          - table: {table}
            version_column: versoin
        """,
    )
    result = optimist("check", "--rules", str(rules), "--upstream", f"{pg.host}:{pg.port}")
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert any(
        f"table {table}x does not exist" in line and line.endswith(f"(did you mean {table!r}?)")
        for line in lines
    ), lines
    assert any(
        "version column 'versoin' is not a column" in line
        and line.endswith("(did you mean 'version'?)")
        for line in lines
    ), lines


def test_a_url_without_user_says_which_user_was_tried(pg):
    env = {"PGUSER": "", "USER": "optimist_nobody", "LOGNAME": "optimist_nobody"}
    result = optimist(
        "check",
        "--rules",
        "rules/example.yaml",
        "--upstream",
        f"postgresql://{pg.host}:{pg.port}/postgres",
        env=env,
    )
    assert result.returncode == 2
    (line,) = result.stdout.splitlines()
    assert "optimist_nobody" in line and "user 'optimist_nobody'" in line, line
    assert "postgresql://postgres@host:5432/postgres" in line, line


# ---------------------------------------------------------------- explain


def readme_command(pattern: str) -> list[str]:
    import shlex

    text = (REPO / "README.md").read_text()
    match = re.search(r"`(optimist " + pattern + r"[^`]*)`", text)
    assert match, f"no `optimist {pattern}` example in the README"
    return shlex.split(match.group(1))[1:]


def test_the_readme_explain_example_works_as_written():
    args = readme_command("explain")
    result = optimist(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "action: checked update of 1 pinned row(s): id=1" in out, out
    assert (
        "planned from the rule files and rules/example-schema.sql, without the live database" in out
    ), out
    assert max(map(len, out.splitlines())) < 200, "the rewritten SQL is not laid out"
    assert "\n    AND " in out


def test_explain_from_the_rule_alone_says_what_it_assumes(tmp_path):
    (tmp_path / "example.yaml").write_text((REPO / "rules" / "example.yaml").read_text())
    result = optimist(
        "explain", "--rules", str(tmp_path), "UPDATE accounts SET balance = 50 WHERE id = 1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "planned from the rule file alone, without the live schema" in result.stdout
    assert "assumes key (id)" in result.stdout
    assert "checked columns: version" in result.stdout


@pytest.mark.parametrize(
    "sql, action, rewritten",
    [
        (
            "MERGE INTO accounts a USING (SELECT 1) s ON a.id = 1 "
            "WHEN MATCHED THEN UPDATE SET balance = 5",
            "action: checked merge of 1 pinned row(s): id=1",
            "THEN DO NOTHING WHEN MATCHED THEN UPDATE",
        ),
        (
            "MERGE INTO accounts a USING src s ON a.id = s.id "
            "WHEN MATCHED THEN UPDATE SET balance = 5",
            "action: passes unverified, reason merge",
            "version = a.version + 1",
        ),
        (
            "WITH w AS (UPDATE accounts SET balance = 5 WHERE id = 1 RETURNING id) SELECT * FROM w",
            "action: checked update of 1 pinned row(s): id=1",
            "optimist_modified",
        ),
        (
            "UPDATE accounts SET balance = 0 WHERE balance < 0",
            "action: passes unverified, reason no_key_pin",
            "version = accounts.version + 1",
        ),
    ],
)
def test_explain_shows_merges_with_statements_and_bulk_bumps_as_the_proxy_plans_them(
    sql, action, rewritten
):
    """explain plans each shape with the proxy's own planner: a checked MERGE, a WITH
    statement's checked write, and the version bump of writes that stay unverified."""
    result = optimist("explain", "--rules", "rules/example.yaml", sql)
    assert result.returncode == 0, result.stdout + result.stderr
    assert action in result.stdout, result.stdout
    assert rewritten in result.stdout, result.stdout


@pytest.fixture(scope="module")
def example_db(upstream_dsn):
    name = f"optimist_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(upstream_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = upstream_dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((REPO / "rules" / "example-schema.sql").read_text())
    yield dsn
    with psycopg.connect(upstream_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_explain_against_a_database_does_not_list_never_columns_as_checked(example_db):
    result = optimist(
        "explain",
        "--rules",
        "rules/",
        "--upstream",
        example_db,
        "UPDATE customers SET notes = 'x', credit_score = 700 WHERE id = 1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checked = next(
        line for line in result.stdout.splitlines() if line.startswith("checked columns:")
    )
    assert checked == "checked columns: credit_score", result.stdout
    assert "planned from" not in result.stdout  # the live table was used


# ---------------------------------------------------------------- demo


def test_the_demo_scenario_is_a_real_lost_update(tmp_path, taken_port):
    """The printed steps, run straight against PostgreSQL, lose A's deposit; through the
    demo's proxy B gets the conflict. A second demo on the same port says so in one line."""
    port = free_port("127.0.0.1")
    data = tmp_path / "demo-data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", "--listen", str(port), "--data-dir", str(data)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_port("127.0.0.1", port, 120, proc), (
            proc.stderr.read() if proc.poll() is not None else ""
        )
        dsn = f"postgresql://postgres@127.0.0.1:{port}/optimist_demo"
        out = wait_until(lambda: proc.stdout.readline(), timeout=5, what="demo output")
        text = out
        while "Stop with Ctrl-C" not in text:
            text += proc.stdout.readline()
        steps = re.findall(r"^  ([AB]): (.+?;)", text, re.MULTILINE)
        assert [who for who, _ in steps] == ["A", "B", "A", "B", "B"], text
        assert "balance - " not in text and "balance + " not in text  # absolute writes
        with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
            session = {"A": a, "B": b}
            for who, sql in steps[:3]:
                session[who].execute(sql)
            with pytest.raises(psycopg.errors.SerializationFailure):
                session[steps[3][0]].execute(steps[3][1])
            assert a.execute("SELECT balance FROM accounts WHERE id = 1").fetchone()[0] == 110

        second = optimist("demo", "--listen", str(port), "--data-dir", str(data), timeout=120)
        assert_one_line_error(second, f"cannot listen on 127.0.0.1:{port}: address already in use")
    finally:
        proc.terminate()
        proc.wait(60)
