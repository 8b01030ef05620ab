"""node-postgres (npm ``pg``) through the proxy: the core locking scenarios with each way the
driver sends a statement -- ``client.query(text)`` (simple query protocol),
``client.query(text, values)`` (extended protocol, unnamed statement) and
``client.query({name, text, values})`` (a named prepared statement, parsed once per connection).

The script is tests/drivers/node/scenarios.js; ``pg`` is installed from the committed
package-lock.json into tests/drivers/node/node_modules (by .ci/run, or here with ``npm ci`` when
it is missing). Without node on the machine the tests skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.locking import VERSION_RULES, make_database, write_rules
from tests.support.pgutil import connect
from tests.support.softchecks import SoftChecks

NODE_DIR = Path(__file__).resolve().parents[1] / "drivers" / "node"
SCRIPT = NODE_DIR / "scenarios.js"
RUN_TIMEOUT = 90
MODES = ["simple", "extended", "named"]


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("no node on this machine (.ci/run installs pg with npm where node is present)")
    if not (NODE_DIR / "node_modules" / "pg" / "package.json").is_file():
        npm = shutil.which("npm")
        assert npm, f"node_modules/pg missing in {NODE_DIR} and no npm to install it"
        res = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{res.stdout}\n{res.stderr}"
    return exe


class Database:
    """A database with the locking schema behind a proxy with the version rules."""

    def __init__(self, pg, proxy_factory, tmp_path):
        self.pg = pg
        self.db = make_database(pg.dsn)
        self.proxy = proxy_factory(rules=write_rules(tmp_path, VERSION_RULES))

    @property
    def url(self) -> str:
        # the proxy's address with the upstream's credentials (OPTIMIST_TEST_DSN may carry some)
        up = urlsplit(self.pg.dsn)
        auth = up.username or "postgres"
        if up.password:
            auth += f":{up.password}"
        return urlunsplit(
            (
                "postgresql",
                f"{auth}@{self.proxy.host}:{self.proxy.port}",
                f"/{self.db}",
                "sslmode=disable",
                "",
            )
        )

    def rows(self, sql: str) -> list[tuple]:
        with connect(self.pg.dsn.rsplit("/", 1)[0] + "/" + self.db) as c:
            return c.execute(sql).fetchall()


@pytest.fixture
def database(pg, proxy_factory, tmp_path):
    return Database(pg, proxy_factory, tmp_path)


def run_scenario(node: str, database: Database, scenario: str, mode: str) -> dict[str, dict]:
    cmd = [node, str(SCRIPT), scenario, mode, database.url]
    try:
        res = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{scenario} ({mode}) did not finish in {RUN_TIMEOUT}s\nstdout:\n{exc.stdout}\n"
            f"stderr:\n{exc.stderr}\n{database.proxy.describe()}",
            pytrace=False,
        )
    steps: dict[str, dict] = {}
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            steps[obj.pop("step")] = obj
    if res.returncode != 0 or "done" not in steps:
        pytest.fail(
            f"{scenario} ({mode}) exited {res.returncode}\nstdout:\n{res.stdout}\n"
            f"stderr:\n{res.stderr}\n{database.proxy.describe()}",
            pytrace=False,
        )
    return steps


class Checks(SoftChecks):
    """The driver's scenario outputs, checked softly."""

    def ok(self, name: str, row_count: int | None = None) -> dict:
        step = self.out.get(name, {})
        if not self.true(step.get("ok") is True, f"{name}: expected success, got {step}"):
            return {}
        if row_count is not None:
            self.equal(step["rowCount"], row_count, f"{name}: rowCount")
        return step

    def error(self, name: str, code: str) -> dict:
        step = self.out.get(name, {})
        if not self.true(
            step.get("ok") is False, f"{name}: expected error {code}, but it succeeded: {step}"
        ):
            return {}
        err = step["error"]
        self.equal(err["code"], code, f"{name}: err.code ({err['message']!r})")
        return err

    def conflict(self, name: str, kind: str = "modified", key: dict | None = None) -> dict:
        err = self.error(name, "40001")
        if err.get("code") != "40001":
            return {}
        self.true(
            f"{kind} by another session" in err["message"], f"{name}: message {err['message']!r}"
        )
        try:
            detail = json.loads(err.get("detail") or "")
        except ValueError:
            self.failed.append(f"{name}: err.detail is not JSON: {err.get('detail')!r}")
            return {}
        self.equal(
            (detail.get("kind"), detail.get("table")), (kind, "public.accounts"), f"{name}: detail"
        )
        if key is not None:
            self.equal(detail.get("key"), key, f"{name}: detail key")
        return detail


def final(out) -> dict[int, tuple[str, str, int]]:
    return {r["id"]: (r["owner"], r["balance"], r["version"]) for r in out["final"]["rows"]}


@pytest.mark.parametrize("mode", MODES)
def test_second_writer_gets_a_modified_conflict(node, database, mode):
    out = run_scenario(node, database, "modified", mode)
    with Checks(out) as check:
        check.ok("a_write", 1)
        detail = check.conflict("b_conflict", "modified", {"id": 1})
        if detail:
            check.equal(detail["columns"]["version"]["read"], 1, "detail: version read")
            check.equal(detail["columns"]["version"]["current"], 2, "detail: version current")
            check.true("re-read" in (out["b_conflict"]["error"].get("hint") or "").lower(), "hint")
        check.ok("b_retry", 1)
        check.equal(final(out)[1], ("Sue", "51.00", 3), "row 1")


@pytest.mark.parametrize("mode", MODES)
def test_write_after_a_delete_gets_a_deleted_conflict(node, database, mode):
    out = run_scenario(node, database, "deleted", mode)
    with Checks(out) as check:
        check.ok("a_delete", 1)
        check.conflict("b_update_conflict", "deleted", {"id": 2})
        check.conflict("b_delete_conflict", "deleted", {"id": 2})
        check.true(2 not in final(out), "row 2 stays deleted")


@pytest.mark.parametrize("mode", MODES)
def test_conflict_aborts_the_transaction(node, database, mode):
    out = run_scenario(node, database, "transaction", mode)
    with Checks(out) as check:
        check.ok("b_tx_first_write", 1)
        check.ok("a_write", 1)
        check.conflict("b_tx_conflict", "modified", {"id": 3})
        check.error("b_tx_after_conflict", "25P02")
        check.ok("b_after_rollback", 1)
        check.ok("b_retry", 1)
        rows = final(out)
        # b's first write went with the aborted transaction
        check.equal(rows[1], ("Sue", "100.00", 1), "row 1")
        check.equal(rows[3], ("Ann", "31.00", 3), "row 3")


@pytest.mark.parametrize("mode", MODES)
def test_no_false_conflict_on_own_writes(node, database, mode):
    out = run_scenario(node, database, "own_writes", mode)
    with Checks(out) as check:
        for step in [f"a_again_{i}" for i in range(1, 5)] + [
            "a_again_owner",
            "a_tx_again_1",
            "a_tx_again_2",
            "a_insert",
            "a_write_inserted_1",
            "a_write_inserted_2",
        ]:
            check.ok(step, 1)
        check.conflict("b_conflict", "modified", {"id": 1})
        check.ok("a_write_2", 1)
        check.ok("b_write_2", 1)
        check.ok("a_write_2_after_reread", 1)
        rows = final(out)
        check.equal(rows[1], ("Zoe", "162.00", 8), "row 1")
        check.equal(rows[2], ("a", "200.00", 4), "row 2")
        check.equal(rows[7], ("own2", "7.00", 3), "row 7")


@pytest.mark.parametrize("mode", MODES)
def test_returning_shows_what_the_client_asked_for(node, database, mode):
    out = run_scenario(node, database, "returning", mode)
    with Checks(out) as check:
        steps = {
            "returning_two": (["id", "balance"], [{"id": 1, "balance": "101.00"}]),
            "returning_star": (
                ["id", "owner", "balance", "version"],
                [{"id": 1, "owner": "Zed", "balance": "101.00", "version": 3}],
            ),
            "returning_expr": (["who", "twice"], [{"who": "Zoe", "twice": "202.00"}]),
            "insert_returning": (["id"], [{"id": 8}]),
            "delete_returning": (["owner"], [{"owner": "ret"}]),
        }
        for name, (fields, rows) in steps.items():
            step = check.ok(name, 1)
            if step:
                check.equal((step["fields"], step["rows"]), (fields, rows), name)
        check.equal(
            out["read_1"]["rows"],
            [{"id": 1, "owner": "Zoe", "balance": "101.00", "version": 4}],
            "row 1",
        )
