"""The performance issue's targets, evaluated on one benchmark run: ratio, threshold, met or not.

`evaluate(rows, micro)` takes the macro benchmark's summary rows (`macro.summarize`) and the hot-path
figures of `micro_targets()` and returns one `Target` per goal of the issue, in its order. A goal
whose workload was not run is reported as "not measured", never silently left out, so a partial
run (`--workloads ...`, `--quick`) still shows every goal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SELECTS = ("select-simple", "select-extended", "select-prepared")


@dataclass(frozen=True)
class Target:
    goal: str
    measured: str  # what the value is, e.g. "optimist / pgbouncer"
    value: float | None
    threshold: float | None
    higher_is_better: bool = True
    unit: str = "x"
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.threshold is None:
            return None
        if self.higher_is_better:
            return self.value >= self.threshold
        return self.value <= self.threshold

    @property
    def verdict(self) -> str:
        if self.threshold is None:
            return "(info)" if self.value is not None else "not measured"
        return {True: "met", False: "NOT MET", None: "not measured"}[self.met]

    def to_json(self) -> dict:
        return {**asdict(self), "met": self.met, "verdict": self.verdict}


def _row(rows: list[dict], workload: str, target: str) -> dict | None:
    for r in rows:
        if r["workload"] == workload and r["target"] == target:
            return r
    return None


def _ratio(rows: list[dict], workload: str, a: str, b: str) -> float | None:
    ra, rb = _row(rows, workload, a), _row(rows, workload, b)
    if ra is None or rb is None or not ra["tps"] or not rb["tps"]:
        return None
    return ra["tps"] / rb["tps"]


def evaluate(
    rows: list[dict], micro: dict[str, float] | None = None, clients: int = 8
) -> list[Target]:
    """Every target of the issue; `micro`: 'idle_session_bytes', 'cached_rewrite_ns',
    'recognition_ns' (see micro_targets)."""
    out: list[Target] = []
    for w in SELECTS:
        mode = w.split("-")[1]
        out.append(
            Target(
                f"select-only {mode}, no rules",
                "optimist / pgbouncer",
                _ratio(rows, w, "optimist", "pgbouncer"),
                1.0,
            )
        )
        out.append(
            Target(
                f"select-only {mode}, rules for other tables",
                "optimist-otherrules / pgbouncer",
                _ratio(rows, w, "optimist-otherrules", "pgbouncer"),
                0.9,
            )
        )
    out.append(
        Target(
            "read-then-write-back, version rule",
            "optimist / optimist-norules",
            _ratio(rows, "read-write-back", "optimist", "optimist-norules"),
            0.8,
        )
    )
    out.append(
        Target(
            "form save: 20 columns, columns rule, sparse update",
            "optimist / optimist-norules",
            _ratio(rows, "form-save", "optimist", "optimist-norules"),
            0.7,
        )
    )
    tpcb = _row(rows, "tpcb-version", "optimist")
    out.append(
        Target(
            "TPC-B, version rules on its 3 tables",
            "optimist / optimist-norules",
            _ratio(rows, "tpcb-version", "optimist", "optimist-norules"),
            0.8,
        )
    )
    out.append(
        Target(
            "TPC-B, version rules: retries",
            "retried transactions",
            None if tpcb is None else float(tpcb["retries"]),
            0.0,
            higher_is_better=False,
            unit="",
        )
    )
    checked = _row(rows, "read-write-back", "optimist")
    plain = _row(rows, "read-write-back", "optimist-norules")
    added = None
    if (
        checked
        and plain
        and checked["latency_p99_ms"] is not None
        and plain["latency_p99_ms"] is not None
    ):
        added = checked["latency_p99_ms"] - plain["latency_p99_ms"]
    out.append(
        Target(
            f"p99 added by a checked write (read-write-back, -c {clients})",
            "p99 optimist - p99 optimist-norules",
            added,
            0.3,
            higher_is_better=False,
            unit=" ms",
            note="" if clients == 8 else "the issue's target is at -c 8",
        )
    )
    micro = micro or {}
    idle = micro.get("idle_session_bytes")
    out.append(
        Target(
            "idle session",
            "KiB per session, rules attached (tracemalloc)",
            None if idle is None else idle / 1024,
            64.0,
            higher_is_better=False,
            unit=" KiB",
        )
    )
    cached = micro.get("cached_rewrite_ns")
    out.append(
        Target(
            "cached rewrite",
            "WriteChecker.simple(UPDATE), cached, checked",
            None if cached is None else cached / 1000,
            20.0,
            higher_is_better=False,
            unit=" us",
        )
    )
    recog = micro.get("recognition_ns")
    out.append(
        Target(
            "no-rewrite recognition",
            "SessionLocking.query(SELECT), rules loaded",
            None if recog is None else recog / 1000,
            2.0,
            higher_is_better=False,
            unit=" us",
        )
    )
    # --workers N: measured, no target (on a shared 2-core machine more processes mostly
    # contend with PostgreSQL and pgbench for the same cores)
    for r in rows:
        label = r["target"]
        if label.startswith("optimist-w") and label[10:].isdigit():
            ratio = _ratio(rows, r["workload"], label, "optimist")
            n = label[10:]
            out.append(
                Target(
                    f"{r['workload']}: --workers {n} over one process",
                    f"{label} / optimist",
                    ratio,
                    None,
                )
            )
    return out


def _fmt(t: Target) -> str:
    if t.value is None:
        return "-"
    if t.unit == "x":
        return f"{t.value:.2f}x"
    return f"{t.value:.{0 if t.unit == '' else 2}f}{t.unit}"


def _threshold(t: Target) -> str:
    if t.threshold is None:
        return ""
    op = ">=" if t.higher_is_better else ("<" if t.unit in (" KiB", " us") else "<=")
    if t.unit == "x":
        return f"{op} {t.threshold:g}x"
    return f"{op} {t.threshold:g}{t.unit}"


def format_targets(targets: list[Target]) -> str:
    lines = [("goal", "measured as", "value", "target", "")]
    for t in targets:
        lines.append(
            (
                t.goal,
                t.measured,
                _fmt(t),
                _threshold(t),
                t.verdict + (f" ({t.note})" if t.note else ""),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "| "
            + " | ".join(
                c.rjust(widths[i]) if i in (2, 3) else c.ljust(widths[i])
                for i, c in enumerate(line)
            )
            + " |"
        )
        if n == 0:
            out.append(
                "|"
                + "|".join(
                    "-" * (w + 1) + ":" if i in (2, 3) else "-" * (w + 2)
                    for i, w in enumerate(widths)
                )
                + "|"
            )
    met = sum(1 for t in targets if t.met)
    judged = sum(1 for t in targets if t.met is not None)
    out.append(
        f"{met} of {judged} measured targets met; {sum(1 for t in targets if t.threshold is not None and t.met is None)} not measured"
    )
    return "\n".join(out)


def micro_targets(seconds: float = 0.2, sessions: int = 200) -> dict[str, float]:
    """The hot-path targets from the micro benchmark's own objects (no sockets), in-process."""
    import tempfile
    from pathlib import Path

    from tests.bench import micro

    results: list[micro.Timing] = []
    with tempfile.TemporaryDirectory(prefix="optimist-targets-") as tmp:
        enforcement = micro.make_enforcement(Path(tmp))
        micro.bench_recognise(results, seconds, enforcement)
        micro.bench_cached(results, seconds, enforcement)
        memory = micro.bench_memory(sessions, enforcement)
    by_name = {t.name: t.median_ns for t in results}
    idle = [e["bytes_per_session"] for e in memory if "bytes_per_session" in e]
    return {
        "idle_session_bytes": max(idle),
        "cached_rewrite_ns": by_name["WriteChecker.simple(UPDATE), cached, checked"],
        "recognition_ns": by_name["SessionLocking.query(SELECT), rules"],
    }
