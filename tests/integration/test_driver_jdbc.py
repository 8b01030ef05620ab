"""pgjdbc (the PostgreSQL JDBC driver) through the proxy.

tests/drivers/jdbc/DriverScenarios.java is compiled here with javac and run with
``java -cp postgresql.jar:...`` against the proxy and, for the scenarios without conflicts,
directly against PostgreSQL on a twin database: both outputs (JSON lines) must be equal once the
version values -- which only the proxy bumps -- are set aside.

The jar is Debian's libpostgresql-jdbc-java (/usr/share/java/postgresql.jar, or
``OPTIMIST_PGJDBC_JAR``); .ci/run installs it with a JDK when missing. Without any Java on the
machine the tests skip; with Java but no jar they fail (the install step is what is broken).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.support.locking import VERSION_RULES, make_database, write_rules
from tests.support.pgutil import connect

SOURCE = Path(__file__).resolve().parents[1] / "drivers" / "jdbc" / "DriverScenarios.java"
JAR = Path(os.environ.get("OPTIMIST_PGJDBC_JAR", "/usr/share/java/postgresql.jar"))
RUN_TIMEOUT = 90

# pgjdbc's execution modes: prepareThreshold=5 (default: named server statements from the 5th
# execution on), 1 (from the first), 0 (never: unnamed statements), -1 (named and binary from the
# first), and the simple query protocol with parameters inlined by the driver.
VARIANTS = {
    "default": "",
    "threshold1": "prepareThreshold=1",
    "threshold0": "prepareThreshold=0",
    "forcebinary": "prepareThreshold=-1",
    "simple": "preferQueryMode=simple",
    "extendedForPrepared": "preferQueryMode=extendedForPrepared",
}


@pytest.fixture(scope="module")
def jdbc(tmp_path_factory) -> tuple[str, str]:
    java, javac = shutil.which("java"), shutil.which("javac")
    if java is None and javac is None:
        pytest.skip("no Java on this machine (.ci/run installs default-jdk-headless and "
                    "libpostgresql-jdbc-java with apt-get)")
    assert java and javac, f"java={java} javac={javac}: a JRE without a JDK? install default-jdk-headless"
    assert JAR.is_file(), (f"pgjdbc jar {JAR} missing: apt-get install libpostgresql-jdbc-java "
                           f"(or set OPTIMIST_PGJDBC_JAR)")
    out = tmp_path_factory.mktemp("jdbc-classes")
    res = subprocess.run([javac, "-encoding", "UTF-8", "-cp", str(JAR), "-d", str(out), str(SOURCE)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"javac failed:\n{res.stdout}\n{res.stderr}"
    return java, f"{JAR}{os.pathsep}{out}"


class Databases:
    """A database behind a proxy with the version rules, and a twin reached directly."""

    def __init__(self, pg, proxy_factory, tmp_path):
        self.pg = pg
        self.db = make_database(pg.dsn)
        self.twin = make_database(pg.dsn)
        self.proxy = proxy_factory(rules=write_rules(tmp_path, VERSION_RULES))
        dsn = urlsplit(pg.dsn)
        self.user = dsn.username or "postgres"
        self.password = dsn.password

    def url(self, target: str, params: str = "") -> str:
        if target == "proxy":
            host, port, db = self.proxy.host, self.proxy.port, self.db
        else:
            host, port, db = self.pg.host, self.pg.port, self.twin
        q = [f"user={quote(self.user)}", "sslmode=disable", "connectTimeout=10", "socketTimeout=60",
             "loginTimeout=20"]
        if self.password:
            q.append(f"password={quote(self.password)}")
        if params:
            q.append(params)
        return f"jdbc:postgresql://{host}:{port}/{db}?" + "&".join(q)

    def rows(self, sql: str, target: str = "proxy") -> list[tuple]:
        dsn = self.pg.dsn.rsplit("/", 1)[0] + "/" + (self.db if target == "proxy" else self.twin)
        with connect(dsn) as c:
            return c.execute(sql).fetchall()


@pytest.fixture
def dbs(pg, proxy_factory, tmp_path):
    return Databases(pg, proxy_factory, tmp_path)


def run_scenario(jdbc, dbs: Databases, scenario: str, target: str, params: str = "") -> dict[str, dict]:
    java, cp = jdbc
    cmd = [java, "-Xss4m", "-cp", cp, "DriverScenarios", scenario, dbs.url(target, params), target]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{scenario} ({target}, {params!r}) did not finish in {RUN_TIMEOUT}s\n"
                    f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}\n"
                    + (dbs.proxy.describe() if target == "proxy" else ""))
    steps: dict[str, dict] = {}
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            steps[obj.pop("step")] = obj
    if res.returncode != 0 or "done" not in steps:
        pytest.fail(f"{scenario} ({target}, {params!r}) exited {res.returncode}\n"
                    f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}\n"
                    + (dbs.proxy.describe() if target == "proxy" else ""), pytrace=False)
    return steps


def without_versions(value):
    """The outputs with the version values removed (the proxy bumps them, PostgreSQL alone does
    not); everything else must be identical."""
    if isinstance(value, dict):
        return {k: without_versions(v) for k, v in value.items() if k != "version"}
    if isinstance(value, list):
        return [without_versions(v) for v in value]
    return value


def assert_same_as_direct(via: dict, direct: dict):
    via_n, direct_n = without_versions(via), without_versions(direct)
    assert via_n.keys() == direct_n.keys()
    differ = [f"step {step}:\n  proxy  {via[step]}\n  direct {direct[step]}"
              for step in direct_n if via_n[step] != direct_n[step]]
    assert not differ, f"{len(differ)} steps differ from a direct run:\n" + "\n".join(differ)


def conflict_error(step: dict, kind: str = "modified") -> dict:
    assert step["ok"] is False, f"expected a conflict, got {step}"
    err = step["error"]
    assert err["sqlstate"] == "40001", err
    assert f"{kind} by another session" in err["message"], err
    detail = json.loads(err["detail"])
    assert detail["kind"] == kind and detail["table"] == "public.accounts", detail
    return err


def versions(rows: list[dict]) -> dict[str, str]:
    return {r["id"]: r["version"] for r in rows}


# --------------------------------------------------------------------------- statements


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_statements_and_prepared_statements_same_as_direct(jdbc, dbs, variant):
    """Plain statements and PreparedStatements executed past prepareThreshold: the same update
    counts, rows and RETURNING results as PostgreSQL alone, and no false conflicts."""
    via = run_scenario(jdbc, dbs, "sequence", "proxy", VARIANTS[variant])
    direct = run_scenario(jdbc, dbs, "sequence", "direct", VARIANTS[variant])
    assert_same_as_direct(via, direct)
    assert all(via[f"loop_read_write_{i}"]["count"] == 1 for i in range(1, 9))
    assert via["delete"]["count"] == 1 and via["delete_again"]["count"] == 0
    assert all(via[f"loop_returning_{i}"]["columns"] == 2 for i in range(1, 7))
    # every write went through the proxy and bumped the version once
    assert versions(via["final"]["rows"]) == {"1": "16", "2": "21", "4": "7"}
    assert versions(direct["final"]["rows"]) == {"1": "1", "2": "1", "4": "1"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_conflict_on_a_server_prepared_statement(jdbc, dbs, variant):
    out = run_scenario(jdbc, dbs, "prepared_conflict", "proxy", VARIANTS[variant])
    assert all(out[f"warm_{i}"]["count"] == 1 for i in range(1, 8))
    conflict_error(out["a_conflict"])
    assert out["a_after_reread"] == {"ok": True, "result": 1}
    conflict_error(out["b_conflict"])
    conflict_error(out["a_deleted"], "deleted")
    final = {r["id"]: r for r in out["final"]["rows"]}
    assert final["1"]["balance"] == "100.00" and final["1"]["owner"] == "b"
    assert "2" not in final


def test_conflict_raises_40001_and_aborts_the_transaction(jdbc, dbs):
    out = run_scenario(jdbc, dbs, "conflict", "proxy")
    err = conflict_error(out["b_statement_conflict"])
    assert err["class"] == "PSQLException"
    assert json.loads(err["detail"])["key"] == {"id": 1}
    conflict_error(out["b_prepared_conflict"])
    conflict_error(out["b_prepared_delete_conflict"])
    conflict_error(out["b_tx_conflict"])
    for step in ("b_tx_after_conflict", "b_tx_after_conflict_again"):
        assert out[step]["ok"] is False and out[step]["error"]["sqlstate"] == "25P02", out[step]
    assert out["b_after_rollback"] == {"ok": True, "result": [{"one": "1"}]}
    assert out["b_tx_retry"] == {"ok": True, "result": 1}
    final = {r["id"]: (r["owner"], r["balance"]) for r in out["final"]["rows"]}
    # b's write to row 1 inside the aborted transaction was rolled back with it
    assert final == {"1": ("Sue", "150.00"), "2": ("Lou", "250.00"), "3": ("Ann", "31.00")}


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("rewrite", [False, True], ids=["plain", "reWriteBatchedInserts"])
def test_batches_without_conflict_same_as_direct(jdbc, dbs, rewrite):
    params = f"reWriteBatchedInserts={str(rewrite).lower()}"
    via = run_scenario(jdbc, dbs, "batch_ok", "proxy", params)
    direct = run_scenario(jdbc, dbs, "batch_ok", "direct", params)
    assert_same_as_direct(via, direct)
    assert via["update_batch"]["counts"] == [1, 1, 1, 1, 1, 0]
    assert via["update_batch_again"]["counts"] == [1, 1, 1, 1, 1]
    assert via["statement_batch"]["counts"] == [1, 1, 1, 1, 0]
    assert via["update_batch_tx"]["counts"] == [1, 1, 1]
    if not rewrite:
        assert via["insert_batch"]["counts"] == [1] * 5
        assert via["insert_batch_big"]["counts"] == [1] * 300
    assert dbs.rows("SELECT count(*) FROM accounts") == dbs.rows("SELECT count(*) FROM accounts", "direct")


@pytest.mark.parametrize("rewrite", [False, True], ids=["plain", "reWriteBatchedInserts"])
def test_batch_with_a_conflicting_row(jdbc, dbs, rewrite):
    out = run_scenario(jdbc, dbs, "batch_conflict", "proxy", f"reWriteBatchedInserts={str(rewrite).lower()}")
    initial = {"1": ("Sue", "100.00"), "2": ("a", "200.00"), "3": ("Ann", "300.00")}

    def table(step):
        return {r["id"]: (r["owner"], r["balance"]) for r in out[step]["rows"]}

    assert out["tx_insert_batch"]["ok"] is True
    err = out["tx_update_batch"]
    assert err["ok"] is False and err["error"]["class"] == "BatchUpdateException", err
    assert err["error"]["sqlstate"] == "40001", err
    conflict_error({"ok": False, "error": err["error"]["next"]})
    assert out["tx_after_conflict"]["error"]["sqlstate"] == "25P02"
    # rolled back: nothing of either batch applied
    assert table("after_rollback") == initial
    assert out["tx_retry_update_batch"] == {"ok": True, "result": [1, 1, 1]}
    after_retry = {"1": ("Sue", "5.00"), "2": ("a", "5.00"), "3": ("Ann", "5.00")}
    assert table("after_retry") == after_retry

    err = out["tx_statement_batch"]
    assert err["ok"] is False and err["error"]["sqlstate"] == "40001", err
    assert table("after_statement_batch_rollback") == {**after_retry, "3": ("a3", "5.00")}

    # autocommit: a conflict in a batch leaves applied exactly what an ordinary error in the
    # same position does (pgjdbc sends the batch with one Sync: all of it or none)
    conflict = out["autocommit_update_batch"]
    assert conflict["ok"] is False and conflict["error"]["sqlstate"] == "40001", conflict
    overflow = out["autocommit_update_batch_overflow"]
    assert overflow["ok"] is False and overflow["error"]["sqlstate"] == "22003", overflow
    before = {**after_retry, "3": ("a33", "5.00")}
    assert table("after_autocommit_conflict") == before
    assert table("after_autocommit_overflow") == before
    assert conflict["error"]["update_counts"] == overflow["error"]["update_counts"]


# --------------------------------------------------------------------------- keys, metadata


def test_generated_keys_show_only_what_the_client_asked_for(jdbc, dbs):
    via = run_scenario(jdbc, dbs, "generated_keys", "proxy")
    direct = run_scenario(jdbc, dbs, "generated_keys", "direct")
    conflict = via.pop("conflict_21")
    via.pop("other_update_21")
    assert_same_as_direct(via, direct)
    for i in range(7):
        keys = via[f"insert_all_{i}"]["keys"]
        assert keys["labels"] == ["id", "owner", "balance", "version"]
        assert keys["rows"] == [{"id": str(10 + i), "owner": f"k{i}", "balance": "1.00", "version": "1"}]
        keys = via[f"insert_id_{i}"]["keys"]
        assert keys["columns"] == 1 and keys["rows"] == [{"id": str(20 + i)}]
        keys = via[f"update_all_{i}"]["keys"]
        assert keys["columns"] == 4 and keys["rows"][0]["version"] == str(2 + i)
    assert via["insert_owner_balance"]["keys"]["labels"] == ["owner", "balance"]
    assert via["statement_update_owner"]["keys"] == {"columns": 1, "labels": ["owner"], "rows": [{"owner": "g2"}]}
    assert [r["id"] for r in via["insert_batch"]["keys"]["rows"]] == ["40", "41", "42"]
    conflict_error(conflict)


def test_result_and_parameter_metadata_of_update_returning(jdbc, dbs):
    via = run_scenario(jdbc, dbs, "metadata", "proxy")
    direct = run_scenario(jdbc, dbs, "metadata", "direct")
    assert_same_as_direct(via, direct)
    before = via["prepared_metadata_before"]
    assert before["meta"]["labels"] == ["id", "balance"] and before["params"] == 2
    for i in range(1, 7):
        assert via[f"returning_{i}"]["meta"]["labels"] == ["id", "balance"]
    assert via["statement_returning_star"]["meta"]["labels"] == ["id", "owner", "balance", "version"]
    assert via["statement_returning_balance"]["meta"]["columns"] == 1
    assert via["statement_returning_expr"]["meta"]["labels"] == ["who", "twice"]
    assert via["statement_delete_returning"]["meta"]["columns"] == 1
    assert via["prepared_plain_metadata"]["params"] == 2
    assert via["database_metadata"]["primary_key"] == ["id"]
