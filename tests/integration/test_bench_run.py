"""The macro benchmark end to end on a tiny run (scale 1, 1 s per target), so that its workloads
(the pgbench scripts, the form save's \\gset write-back), its services and the target table
cannot rot unnoticed. Numbers are not judged here: only that every goal is printed and that the
workloads it ran produced measured targets without a failed transaction."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.bench.services import REPO

pytestmark = pytest.mark.skipif(
    shutil.which("pgbouncer") is None and not os.path.exists("/usr/sbin/pgbouncer"),
    reason="pgbouncer not installed (.ci/run installs it)",
)


def test_tiny_benchmark_run_reports_every_target(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench",
            "--quick",
            "--workloads",
            "form-save",
            "read-write-back",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--workers",
            "0",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "targets of the performance issue" in res.stdout
    data = json.loads(out.read_text())
    by_goal = {t["goal"]: t for t in data["targets"]}
    assert len(by_goal) == 14
    measured = {
        "read-then-write-back, version rule",
        "form save: 20 columns, columns rule, sparse update",
        "p99 added by a checked write (read-write-back, -c 8)",
        "idle session",
        "cached rewrite",
        "no-rewrite recognition",
    }
    for goal, t in by_goal.items():
        if goal in measured:
            assert t["value"] is not None and t["verdict"] in ("met", "NOT MET"), t
        else:
            assert t["verdict"] == "not measured", t
    for row in data["summary"]:
        assert row["tps"], row
        assert row["failed"] == 0 and row["aborted_clients"] == 0, row
    # the form save really wrote back through the proxy: every run processed transactions
    form = [r for r in data["summary"] if r["workload"] == "form-save"]
    assert {r["target"] for r in form} == {"direct", "pgbouncer", "optimist", "optimist-norules"}
