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
from tests.support.softchecks import SoftChecks

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
        pytest.skip(
            "no Java on this machine (.ci/run installs default-jdk-headless and "
            "libpostgresql-jdbc-java with apt-get)"
        )
    assert java and javac, (
        f"java={java} javac={javac}: a JRE without a JDK? install default-jdk-headless"
    )
    assert JAR.is_file(), (
        f"pgjdbc jar {JAR} missing: apt-get install libpostgresql-jdbc-java "
        f"(or set OPTIMIST_PGJDBC_JAR)"
    )
    out = tmp_path_factory.mktemp("jdbc-classes")
    res = subprocess.run(
        [javac, "-encoding", "UTF-8", "-cp", str(JAR), "-d", str(out), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
        q = [
            f"user={quote(self.user)}",
            "sslmode=disable",
            "connectTimeout=10",
            "socketTimeout=60",
            "loginTimeout=20",
        ]
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


def run_scenario(
    jdbc, dbs: Databases, scenario: str, target: str, params: str = ""
) -> dict[str, dict]:
    java, cp = jdbc
    cmd = [java, "-Xss4m", "-cp", cp, "DriverScenarios", scenario, dbs.url(target, params), target]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{scenario} ({target}, {params!r}) did not finish in {RUN_TIMEOUT}s\n"
            f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}\n"
            + (dbs.proxy.describe() if target == "proxy" else "")
        )
    steps: dict[str, dict] = {}
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            steps[obj.pop("step")] = obj
    if res.returncode != 0 or "done" not in steps:
        pytest.fail(
            f"{scenario} ({target}, {params!r}) exited {res.returncode}\n"
            f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}\n"
            + (dbs.proxy.describe() if target == "proxy" else ""),
            pytrace=False,
        )
    return steps


def without_versions(value):
    """The outputs with the version values removed (the proxy bumps them, PostgreSQL alone does
    not); everything else must be identical."""
    if isinstance(value, dict):
        return {k: without_versions(v) for k, v in value.items() if k != "version"}
    if isinstance(value, list):
        return [without_versions(v) for v in value]
    return value


class Checks(SoftChecks):
    """The driver's scenario outputs, checked softly."""

    def step(self, name: str) -> dict:
        return self.out.get(name, {})

    def ok(self, name: str, result=None) -> bool:
        step = self.step(name)
        if not self.true(step.get("ok") is True, f"{name}: expected success, got {step}"):
            return False
        return result is None or self.equal(step["result"], result, name)

    def error(self, name: str, sqlstate: str) -> dict:
        step = self.step(name)
        if not self.true(
            step.get("ok") is False,
            f"{name}: expected SQLSTATE {sqlstate}, but it succeeded: {step}",
        ):
            return {}
        err = step["error"]
        self.equal(err["sqlstate"], sqlstate, f"{name}: SQLSTATE ({err['message']!r})")
        return err

    def conflict(self, name: str, kind: str = "modified", err: dict | None = None) -> dict:
        err = err if err is not None else self.error(name, "40001")
        if not err or err.get("sqlstate") != "40001":
            return {}
        self.true(
            f"{kind} by another session" in err["message"], f"{name}: message {err['message']!r}"
        )
        try:
            detail = json.loads(err.get("detail") or "")
        except ValueError:
            self.failed.append(f"{name}: DETAIL is not JSON: {err.get('detail')!r}")
            return err
        self.equal(
            (detail.get("kind"), detail.get("table")), (kind, "public.accounts"), f"{name}: detail"
        )
        return err

    def same_as_direct(self, direct: dict[str, dict], ignore=()) -> None:
        via_n, direct_n = without_versions(self.out), without_versions(direct)
        for step in direct_n.keys() | via_n.keys():
            if step in ignore:
                continue
            if via_n.get(step) != direct_n.get(step):
                self.failed.append(
                    f"{step} differs from a direct run:\n    proxy  {self.out.get(step)}"
                    f"\n    direct {direct.get(step)}"
                )


def table(rows: list[dict]) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["owner"], r["balance"]) for r in rows}


def versions(rows: list[dict]) -> dict[str, str]:
    return {r["id"]: r["version"] for r in rows}


# --------------------------------------------------------------------------- statements


def test_update_count_and_lost_update_minimal(jdbc, dbs):
    """The smallest reproduction: Statement.executeQuery reads, Statement.executeUpdate writes
    (pgjdbc's default: unnamed statements, Describe of the portal, Execute with a row limit of 1
    for executeUpdate)."""
    out = run_scenario(jdbc, dbs, "minimal", "proxy")
    with Checks(out) as check:
        check.ok("checked_write_count", 1)
        check.ok("unread_write_count", 1)
        check.ok("bulk_write_count", 0)
        check.ok("a_write", 1)
        check.conflict("b_lost_update")
        check.equal(
            table(out["final"]["rows"])["2"],
            ("Lou", "1.00"),
            "row 2 keeps the first writer's value",
        )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_statements_and_prepared_statements_same_as_direct(jdbc, dbs, variant):
    """Plain statements and PreparedStatements executed past prepareThreshold: the same update
    counts, rows and RETURNING results as PostgreSQL alone, and no false conflicts."""
    via = run_scenario(jdbc, dbs, "sequence", "proxy", VARIANTS[variant])
    direct = run_scenario(jdbc, dbs, "sequence", "direct", VARIANTS[variant])
    with Checks(via) as check:
        check.same_as_direct(direct)
        check.equal(
            [via[f"loop_read_write_{i}"]["count"] for i in range(1, 9)],
            [1] * 8,
            "read+write counts",
        )
        check.equal((via["delete"]["count"], via["delete_again"]["count"]), (1, 0), "delete counts")
        check.equal(
            [via[f"loop_returning_{i}"]["columns"] for i in range(1, 7)],
            [2] * 6,
            "RETURNING columns",
        )
        # every write went through the proxy and bumped the version once
        check.equal(versions(via["final"]["rows"]), {"1": "16", "2": "21", "4": "7"}, "versions")
        check.equal(
            versions(direct["final"]["rows"]), {"1": "1", "2": "1", "4": "1"}, "versions (direct)"
        )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_conflict_on_a_server_prepared_statement(jdbc, dbs, variant):
    """The same PreparedStatement objects across pgjdbc's switch to named server statements:
    after it, Bind/Execute carry no RowDescription, the proxy must still know what was read."""
    out = run_scenario(jdbc, dbs, "prepared_conflict", "proxy", VARIANTS[variant])
    with Checks(out) as check:
        check.conflict("a_conflict")
        check.ok("a_after_reread", 1)
        check.conflict("b_conflict")
        check.conflict("a_deleted", "deleted")
        final = table(out["final"]["rows"])
        check.equal(final.get("1"), ("b", "100.00"), "row 1")
        check.true("2" not in final, "row 2 was deleted")
        check.equal([out[f"warm_{i}"]["count"] for i in range(1, 8)], [1] * 7, "update counts")


def test_conflict_raises_40001_and_aborts_the_transaction(jdbc, dbs):
    out = run_scenario(jdbc, dbs, "conflict", "proxy")
    with Checks(out) as check:
        err = check.conflict("b_statement_conflict")
        if err:
            check.equal(err["class"], "PSQLException", "exception class")
            check.equal(json.loads(err["detail"])["key"], {"id": 1}, "detail key")
            check.true("re-read" in (err.get("hint") or "").lower(), f"hint {err.get('hint')!r}")
        check.conflict("b_prepared_conflict")
        check.conflict("b_prepared_delete_conflict")
        check.conflict("b_tx_conflict")
        check.error("b_tx_after_conflict", "25P02")
        check.error("b_tx_after_conflict_again", "25P02")
        check.ok("b_after_rollback", [{"one": "1"}])
        check.ok("b_tx_retry", 1)
        # b's write to row 1 inside the aborted transaction was rolled back with it
        check.equal(
            table(out["final"]["rows"]),
            {"1": ("Sue", "150.00"), "2": ("Lou", "250.00"), "3": ("Ann", "31.00")},
            "final rows",
        )
        check.equal(
            [
                out[s]["count"]
                for s in ("a_update_1", "a_update_2", "b_tx_other_write", "a_update_3")
            ],
            [1, 1, 1, 1],
            "update counts",
        )


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("rewrite", [False, True], ids=["plain", "reWriteBatchedInserts"])
def test_batches_without_conflict_same_as_direct(jdbc, dbs, rewrite):
    """Update counts of batches are PostgreSQL's (reWriteBatchedInserts legitimately reports
    SUCCESS_NO_INFO, -2, for rewritten INSERTs: directly too)."""
    params = f"reWriteBatchedInserts={str(rewrite).lower()}"
    via = run_scenario(jdbc, dbs, "batch_ok", "proxy", params)
    direct = run_scenario(jdbc, dbs, "batch_ok", "direct", params)
    with Checks(via) as check:
        check.same_as_direct(direct)
        check.equal(via["update_batch"]["counts"], [1, 1, 1, 1, 1, 0], "update batch")
        check.equal(via["update_batch_again"]["counts"], [1, 1, 1, 1, 1], "update batch again")
        check.equal(via["statement_batch"]["counts"], [1, 1, 1, 1, 0], "statement batch")
        check.equal(via["update_batch_tx"]["counts"], [1, 1, 1], "update batch in a transaction")
        if not rewrite:
            check.equal(via["insert_batch"]["counts"], [1] * 5, "insert batch")
            check.equal(via["insert_batch_big"]["counts"], [1] * 300, "big insert batch")
        check.equal(
            dbs.rows("SELECT count(*) FROM accounts"),
            dbs.rows("SELECT count(*) FROM accounts", "direct"),
            "row count",
        )


@pytest.mark.parametrize("rewrite", [False, True], ids=["plain", "reWriteBatchedInserts"])
def test_batch_with_a_conflicting_row(jdbc, dbs, rewrite):
    out = run_scenario(
        jdbc, dbs, "batch_conflict", "proxy", f"reWriteBatchedInserts={str(rewrite).lower()}"
    )
    initial = {"1": ("Sue", "100.00"), "2": ("a", "200.00"), "3": ("Ann", "300.00")}
    with Checks(out) as check:
        check.ok("tx_insert_batch")
        err = check.error("tx_update_batch", "40001")
        if err:
            check.equal(err["class"], "BatchUpdateException", "exception class")
            check.conflict("tx_update_batch (next exception)", err=err.get("next", {}))
        check.error("tx_after_conflict", "25P02")
        # rolled back: nothing of either batch applied
        check.equal(table(out["after_rollback"]["rows"]), initial, "after rollback")
        check.ok("tx_retry_update_batch", [1, 1, 1])
        after_retry = {"1": ("Sue", "5.00"), "2": ("a", "5.00"), "3": ("Ann", "5.00")}
        check.equal(table(out["after_retry"]["rows"]), after_retry, "after the retried batch")

        check.error("tx_statement_batch", "40001")
        check.equal(
            table(out["after_statement_batch_rollback"]["rows"]),
            {**after_retry, "3": ("a3", "5.00")},
            "after the Statement batch, rolled back",
        )

        # autocommit: a conflict in a batch leaves applied exactly what an ordinary error in
        # the same position does (extended protocol: one Sync for the batch, all or nothing)
        conflict = check.error("autocommit_update_batch", "40001")
        overflow = check.error("autocommit_update_batch_overflow", "22003")
        before = {**after_retry, "3": ("a33", "5.00")}
        after_conflict = table(out["after_autocommit_conflict"]["rows"])
        after_overflow = table(out["after_autocommit_overflow"]["rows"])
        check.equal(after_conflict["3"], ("a33", "5.00"), "the other session's write is kept")
        check.equal(
            sorted(k for k in before if before[k] != after_conflict[k]),
            sorted(k for k in before if after_conflict[k] != after_overflow[k]),
            "rows applied by a batch with a conflict / with an ordinary error",
        )
        if conflict and overflow:
            check.equal(
                conflict["update_counts"], overflow["update_counts"], "BatchUpdateException counts"
            )


# --------------------------------------------------------------------------- keys, metadata


def test_generated_keys_show_only_what_the_client_asked_for(jdbc, dbs):
    """getGeneratedKeys makes pgjdbc append RETURNING * (or the named columns): exactly those
    come back, none of the proxy's own RETURNING additions."""
    via = run_scenario(jdbc, dbs, "generated_keys", "proxy")
    direct = run_scenario(jdbc, dbs, "generated_keys", "direct")
    # row 21 is changed by another session, only in the proxy's run
    for out in (via, direct):
        out["final"]["rows"] = [r for r in out["final"]["rows"] if r["id"] != "21"]
    with Checks(via) as check:
        check.same_as_direct(direct, ignore={"conflict_21", "other_update_21"})
        for i in range(7):
            keys = via[f"insert_all_{i}"]["keys"]
            check.equal(
                keys["labels"], ["id", "owner", "balance", "version"], f"insert_all_{i} labels"
            )
            check.equal(
                keys["rows"],
                [{"id": str(10 + i), "owner": f"k{i}", "balance": "1.00", "version": "1"}],
                f"insert_all_{i} keys",
            )
            keys = via[f"insert_id_{i}"]["keys"]
            check.equal(
                (keys["columns"], keys["rows"]), (1, [{"id": str(20 + i)}]), f"insert_id_{i} keys"
            )
            keys = via[f"update_all_{i}"]["keys"]
            check.equal(
                (keys["columns"], keys["rows"][0]["version"]),
                (4, str(2 + i)),
                f"update_all_{i} keys",
            )
        check.equal(
            via["insert_owner_balance"]["keys"]["labels"], ["owner", "balance"], "named keys"
        )
        check.equal(
            via["statement_update_owner"]["keys"],
            {"columns": 1, "labels": ["owner"], "rows": [{"owner": "g2"}]},
            "UPDATE keys",
        )
        check.equal(
            [r["id"] for r in via["insert_batch"]["keys"]["rows"]], ["40", "41", "42"], "batch keys"
        )
        # what the session learned from its own INSERT is checked
        check.conflict("conflict_21")


def test_result_and_parameter_metadata_of_update_returning(jdbc, dbs):
    """ResultSetMetaData (before and after execution), ParameterMetaData and DatabaseMetaData
    show the client's statement, not the proxy's rewritten one."""
    via = run_scenario(jdbc, dbs, "metadata", "proxy")
    direct = run_scenario(jdbc, dbs, "metadata", "direct")
    with Checks(via) as check:
        check.same_as_direct(direct)
        before = via["prepared_metadata_before"]
        check.equal(
            (before["meta"]["labels"], before["params"]), (["id", "balance"], 2), "before execution"
        )
        for i in range(1, 7):
            check.equal(
                via[f"returning_{i}"]["meta"]["labels"], ["id", "balance"], f"returning_{i}"
            )
        check.equal(
            via["statement_returning_star"]["meta"]["labels"],
            ["id", "owner", "balance", "version"],
            "RETURNING *",
        )
        check.equal(via["statement_returning_balance"]["meta"]["columns"], 1, "RETURNING balance")
        check.equal(
            via["statement_returning_expr"]["meta"]["labels"],
            ["who", "twice"],
            "RETURNING expressions",
        )
        check.equal(via["statement_delete_returning"]["meta"]["columns"], 1, "DELETE RETURNING")
        check.equal(via["prepared_plain_metadata"]["params"], 2, "parameters of a plain UPDATE")
        check.equal(via["database_metadata"]["primary_key"], ["id"], "primary key")
