"""The benchmark's target table (tests/bench/targets.py): every goal of the performance issue is
reported, with the right ratio, threshold and verdict, also when its workload was not run."""

from __future__ import annotations

from tests.bench.targets import evaluate, format_targets


def _row(workload: str, target: str, tps: float, p99: float = 1.0, retries: int = 0) -> dict:
    return {
        "workload": workload,
        "target": target,
        "tps": tps,
        "latency_p99_ms": p99,
        "retries": retries,
    }


ROWS = [
    _row("select-extended", "pgbouncer", 1000),
    _row("select-extended", "optimist", 1000),  # exactly 1.0: met
    _row("select-extended", "optimist-otherrules", 899),  # 0.899 < 0.9: not met
    _row("select-extended", "optimist-w2", 1500),
    _row("read-write-back", "optimist", 800, p99=1.5),
    _row("read-write-back", "optimist-norules", 1000, p99=1.1),
    _row("form-save", "optimist", 690),
    _row("form-save", "optimist-norules", 1000),
    _row("tpcb-version", "optimist", 900, retries=3),
    _row("tpcb-version", "optimist-norules", 1000),
]


def _by_goal(targets):
    return {t.goal: t for t in targets}


def test_every_goal_is_reported_with_its_verdict():
    micro = {"idle_session_bytes": 5000, "cached_rewrite_ns": 25000, "recognition_ns": 1500}
    t = _by_goal(evaluate(ROWS, micro))
    assert t["select-only extended, no rules"].verdict == "met"
    assert t["select-only extended, rules for other tables"].verdict == "NOT MET"
    assert t["select-only simple, no rules"].verdict == "not measured"
    assert t["select-only prepared, rules for other tables"].verdict == "not measured"
    rwb = t["read-then-write-back, version rule"]
    assert rwb.value == 0.8 and rwb.verdict == "met"
    assert t["form save: 20 columns, columns rule, sparse update"].verdict == "NOT MET"
    assert t["TPC-B, version rules on its 3 tables"].verdict == "met"
    assert t["TPC-B, version rules: retries"].verdict == "NOT MET"  # 3 retries, target 0
    p99 = t["p99 added by a checked write (read-write-back, -c 8)"]
    assert abs(p99.value - 0.4) < 1e-9 and p99.verdict == "NOT MET"
    assert t["idle session"].verdict == "met"
    assert t["cached rewrite"].verdict == "NOT MET"
    assert t["no-rewrite recognition"].verdict == "met"
    workers = t["select-extended: --workers 2 over one process"]
    assert workers.value == 1.5 and workers.verdict == "(info)"
    text = format_targets(evaluate(ROWS, micro))
    assert "| select-only extended, no rules" in text
    assert "5 of 10 measured targets met; 4 not measured" in text


def test_nothing_run_still_lists_every_goal():
    targets = evaluate([], None)
    assert len(targets) == 14  # 6 select goals, rwb, form, TPC-B x2, p99, 3 hot-path goals
    assert {t.verdict for t in targets} == {"not measured"}
