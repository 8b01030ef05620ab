"""pgbench through the proxy: all three query modes, and a deterministic script that must
leave exactly the same table state through the proxy as directly."""

from __future__ import annotations

import re

import pytest

from tests.support import connect, query_direct, run_pgbench

DB = "relay_bench"

SCRIPT = r"""
\set id (:client_id * 3) % 10 + 1
\set k :client_id + 1
BEGIN;
UPDATE det SET v = v + :k, n = n + 1 WHERE id = :id;
INSERT INTO det_log (client, amount) VALUES (:client_id, :k);
SELECT v FROM det WHERE id = :id;
END;
UPDATE det SET v = v + 1 WHERE id = 11;
SELECT count(*) FROM det_log WHERE client = :client_id;
"""


@pytest.fixture(scope="module")
def bench_db(pg) -> str:
    """A database of its own, initialised directly with ``pgbench -i -s 1``."""
    with connect(pg.dsn) as c:
        c.execute(f"drop database if exists {DB}")
        c.execute(f"create database {DB}")
    dsn = pg.dsn.rsplit("/", 1)[0] + f"/{DB}"
    run_pgbench(dsn, "-i", "-s", "1", "-q", timeout=300).check()
    yield dsn
    with connect(pg.dsn) as c:
        c.execute(f"drop database if exists {DB} with (force)")


def _processed(out: str) -> tuple[int, int, int]:
    m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
    assert m, out
    f = re.search(r"number of failed transactions: (\d+)", out)
    return int(m.group(1)), int(m.group(2)), int(f.group(1)) if f else 0


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_tpcb(proxy, bench_db, mode):
    res = run_pgbench(
        proxy.dsn_for(DB), "-M", mode, "-t", "50", "-c", "4", "-j", "2", "-n", timeout=110
    )
    assert res.returncode == 0, f"{res.stderr}\n{res.stdout}"
    done, expected, failed = _processed(res.stdout)
    assert (done, expected, failed) == (200, 200, 0), res.stdout
    # the bank stays balanced
    rows = query_direct(
        bench_db,
        "select (select sum(abalance) from pgbench_accounts) = (select sum(delta) from pgbench_history),"
        " (select sum(bbalance) from pgbench_branches) = (select sum(delta) from pgbench_history)",
    )
    assert rows == [(True, True)]


def _reset_det(dsn: str) -> None:
    with connect(dsn) as c:
        c.execute("drop table if exists det, det_log")
        c.execute(
            "create table det (id int primary key, v bigint not null, n int not null default 0)"
        )
        c.execute("insert into det (id, v) select g, g * 100 from generate_series(1, 11) g")
        c.execute("create table det_log (seq bigserial primary key, client int, amount int)")


def _state(dsn: str):
    return (
        query_direct(dsn, "select id, v, n from det order by id"),
        query_direct(
            dsn, "select client, count(*), sum(amount) from det_log group by client order by client"
        ),
    )


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_deterministic_script_same_state(proxy, bench_db, tmp_path, mode):
    script = tmp_path / "det.sql"
    script.write_text(SCRIPT)
    args = ("-M", mode, "-t", "40", "-c", "4", "-j", "2", "-n", "-f", str(script))

    _reset_det(bench_db)
    direct = run_pgbench(bench_db, *args, timeout=110)
    assert direct.returncode == 0, direct.stderr
    direct_state = _state(bench_db)

    _reset_det(bench_db)
    via = run_pgbench(proxy.dsn_for(DB), *args, timeout=110)
    assert via.returncode == 0, f"{via.stderr}\n{via.stdout}"
    assert _processed(via.stdout) == (160, 160, 0)
    via_state = _state(bench_db)

    assert via_state == direct_state
    assert via_state[1] == [(c, 40, 40 * (c + 1)) for c in range(4)]
    assert via_state[0][-1] == (11, 1100 + 160, 0)
