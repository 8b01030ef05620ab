"""optimist against direct PostgreSQL and PgBouncer (session mode), same pgbench workloads.

    python -m tests.bench [--rounds N] [--duration S] [--clients 8] [--jobs 2] [--scale 10]
                          [--workloads W ...] [--quick] [--json PATH]

Starts a private PostgreSQL 18 (EmbeddedPostgres: shared_buffers 256MB, max_connections 200,
fsync/synchronous_commit/full_page_writes off), PgBouncer (pool_mode=session, trust auth with an
auth_file), and optimist (`python -m proxy serve`, uvloop, log level warning) three times: without
rules, with `strategy: version` rules and with `strategy: columns` rules on the pgbench tables.
Initialises pgbench, then for each workload: one warm-up run per target, then rounds in which
every target runs once, in alternation (round r starts at target r mod n: A B C, B C A, C A B,
so a slow drift of the server favours no target). Reports, per workload and target, the median
over rounds of TPS, average latency (pgbench's), median and p99 latency (from the per-transaction
logs of `pgbench -l`), failures and retries, and the proxy's CPU time per transaction.

Everything listens on 127.0.0.1 and is stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tests.bench.pgbench import RunResult, background_busy, run_pgbench
from tests.bench.services import (
    REPO,
    Services,
    dsn,
    environment,
    install_signal_handlers,
    psql,
)
from tests.bench.targets import evaluate, format_targets, micro_targets

DB = "bench"

# ------------------------------------------------------------------ workloads and rules

READ_WRITE_BACK = """\
\\set aid random(1, 100000 * :scale)
SELECT aid, abalance, version FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
"""

TABLES = ("pgbench_accounts", "pgbench_tellers", "pgbench_branches")

VERSION_RULES = "version: 1\ntables:\n" + "".join(
    f"  - table: {t}\n    strategy: version\n    version_column: version\n" for t in TABLES
)
COLUMNS_RULES = "version: 1\ntables:\n" + "".join(
    f"  - table: {t}\n    strategy: columns\n    check: changed\n" for t in TABLES
)

# The form save: a 20-column row (id + 10 int + 9 text) read whole and written back whole with
# one column changed (\gset: pgbench keeps the read values in variables; -M simple inlines
# them, also inside the quotes). Under the columns rule with sparse_update the proxy drops the
# 18 unchanged columns and checks the changed one.
FORM_INTS = tuple(f"n{i:02}" for i in range(1, 11))
FORM_TEXTS = tuple(f"t{i:02}" for i in range(1, 10))
FORM_ROWS_PER_SCALE = 10000
FORM_TABLE = (
    "CREATE TABLE bench_form (id int PRIMARY KEY, "
    + ", ".join(f"{c} int NOT NULL" for c in FORM_INTS)
    + ", "
    + ", ".join(f"{c} text NOT NULL" for c in FORM_TEXTS)
    + ")"
)


def form_fill(scale: int) -> str:
    return (
        "INSERT INTO bench_form SELECT g, "
        + ", ".join(f"g % {1000 + i}" for i in range(len(FORM_INTS)))
        + ", "
        + ", ".join(f"'value-{c}-' || g" for c in FORM_TEXTS)
        + f" FROM generate_series(1, {FORM_ROWS_PER_SCALE * scale}) g"
    )


FORM_SAVE = (
    f"\\set id random(1, {FORM_ROWS_PER_SCALE} * :scale)\n"
    "\\set v random(1, 1000000)\n"
    f"SELECT id, {', '.join(FORM_INTS + FORM_TEXTS)} FROM bench_form WHERE id = :id \\gset\n"
    "UPDATE bench_form SET n01 = :v, "
    + ", ".join([f"{c} = :{c}" for c in FORM_INTS[1:]] + [f"{c} = ':{c}'" for c in FORM_TEXTS])
    + " WHERE id = :id;\n"
)

# Rules for a table the select-only workloads never touch: the realistic deployment, where the
# relay still looks at every RowDescription (and the form save's own rule).
FORM_RULES = (
    "version: 1\ntables:\n  - table: bench_form\n    strategy: columns\n"
    "    check: changed\n    sparse_update: true\n"
)


@dataclass(frozen=True)
class Workload:
    name: str
    args: tuple[str, ...]
    # target label -> which optimist process ("norules", "version", "columns", "form"); direct
    # and pgbouncer are always there
    optimists: tuple[tuple[str, str], ...]
    writes: bool
    description: str
    default: bool = True  # part of a run without --workloads


def _select(mode: str) -> Workload:
    return Workload(
        f"select-{mode}",
        ("-S", "-M", mode),
        (("optimist", "norules"), ("optimist-otherrules", "form")),
        False,
        f"pgbench -S -M {mode}; optimist without rules, and with rules for another table only",
    )


RETRY = ("--max-tries=10", "--failures-detailed")

WORKLOADS = {
    w.name: w
    for w in (
        _select("simple"),
        _select("extended"),
        _select("prepared"),
        Workload(
            "tpcb-version",
            ("-b", "tpcb-like", "-M", "simple", *RETRY),
            (("optimist", "version"), ("optimist-norules", "norules")),
            True,
            "built-in TPC-B-like script (-M simple); optimist with strategy: version rules "
            "on accounts, tellers, branches, and without rules",
        ),
        Workload(
            "tpcb-columns",
            ("-b", "tpcb-like", "-M", "simple", *RETRY),
            (("optimist", "columns"), ("optimist-norules", "norules")),
            True,
            "built-in TPC-B-like script (-M simple); optimist with strategy: columns, "
            "check: changed rules on accounts, tellers, branches, and without rules",
            default=False,  # no target of its own; run it by name
        ),
        Workload(
            "read-write-back",
            ("-f", "{script}", "-M", "simple", *RETRY),
            (("optimist", "version"), ("optimist-norules", "norules")),
            True,
            "SELECT aid, abalance, version ... ; UPDATE ... SET abalance = abalance + 1 "
            "(-M simple); optimist with the version rule (every write checked) and "
            "without rules",
        ),
        Workload(
            "form-save",
            ("-f", "{form}", "-M", "simple", *RETRY),
            (("optimist", "form"), ("optimist-norules", "norules")),
            True,
            "SELECT all 20 columns of a bench_form row; UPDATE every column back, one changed "
            "(-M simple); optimist with a columns rule (check: changed, sparse_update) and "
            "without rules",
        ),
    )
}
DEFAULT_WORKLOADS = [name for name, w in WORKLOADS.items() if w.default]
# where the --workers N process runs as one more target (optimist without rules)
WORKERS_WORKLOADS = ("select-extended",)


# ------------------------------------------------------------------ statistics


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _us(seconds):
    return None if seconds is None else seconds * 1e6


def summarize(runs: list[RunResult], workloads: list[Workload]) -> list[dict]:
    rows = []
    for w in workloads:
        targets = ["direct", "pgbouncer"] + [label for label, _ in w.optimists]
        by_target = {}
        for t in targets:
            measured = [r for r in runs if r.workload == w.name and r.target == t and r.round >= 0]
            tps = [r.tps for r in measured if r.tps is not None]
            by_target[t] = {
                "workload": w.name,
                "target": t,
                "rounds": len(measured),
                "tps": _median(tps),
                "tps_min": min(tps) if tps else None,
                "tps_max": max(tps) if tps else None,
                "latency_avg_ms": _median([r.latency_avg_ms for r in measured]),
                "latency_p50_ms": _median([r.latency_p50_ms for r in measured]),
                "latency_p99_ms": _median([r.latency_p99_ms for r in measured]),
                "failed": sum(r.failed for r in measured),
                "serialization_failures": sum(r.serialization_failures for r in measured),
                "retried": sum(r.retried for r in measured),
                "retries": sum(r.retries for r in measured),
                "aborted_clients": sum(r.aborted_clients for r in measured),
                "processed": sum(r.processed or 0 for r in measured),
                "proxy_cpu_us_per_tx": _median([r.proxy_cpu_us_per_tx for r in measured]),
                "proxy_user_us_per_tx": _median([_us(r.per_tx(r.proxy_user_s)) for r in measured]),
                "proxy_sys_us_per_tx": _median([_us(r.per_tx(r.proxy_sys_s)) for r in measured]),
                "proxy_reads_per_tx": _median([r.per_tx(r.proxy_syscr) for r in measured]),
                "proxy_writes_per_tx": _median([r.per_tx(r.proxy_syscw) for r in measured]),
                "proxy_preempted_per_tx": _median([r.per_tx(r.proxy_preempted) for r in measured]),
                "machine_busy": _median([r.machine_busy for r in measured]),
                "loadavg_1m": _median([r.loadavg_1m for r in measured]),
                "machine_cpu_us_per_tx": _median(
                    [_us(r.per_tx(r.machine_cpu_s)) for r in measured]
                ),
                "errors": sorted({e for r in measured for e in r.errors})[:5],
            }
        base_direct = by_target["direct"]["tps"]
        base_bouncer = by_target["pgbouncer"]["tps"]
        for t in targets:
            row = by_target[t]
            tps = row["tps"]
            row["vs_direct"] = tps / base_direct if tps and base_direct else None
            row["vs_pgbouncer"] = tps / base_bouncer if tps and base_bouncer else None
            if t.startswith("optimist-") and by_target.get("optimist", {}).get("tps") and tps:
                row["checked_vs_this"] = by_target["optimist"]["tps"] / tps
            base = by_target.get(t + "@base", {}).get("tps")
            row["vs_base"] = tps / base if tps and base else None
            rows.append(row)
    return rows


def _f(value, fmt: str, none: str = "-") -> str:
    return none if value is None else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    header = (
        "workload",
        "target",
        "TPS",
        "TPS min-max",
        "lat avg ms",
        "lat p50 ms",
        "lat p99 ms",
        "fail",
        "retried",
        "x direct",
        "x pgbouncer",
        "x base",
        "proxy CPU us/tx",
        "(user+sys)",
        "machine CPU us/tx",
        "machine busy",
        "load 1m",
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                r["workload"],
                r["target"],
                _f(r["tps"], ".0f"),
                f"{_f(r['tps_min'], '.0f')}-{_f(r['tps_max'], '.0f')}",
                _f(r["latency_avg_ms"], ".3f"),
                _f(r["latency_p50_ms"], ".3f"),
                _f(r["latency_p99_ms"], ".3f"),
                str(r["failed"] + r["aborted_clients"]),
                str(r["retried"]),
                _f(r["vs_direct"], ".2f") if r["target"] != "direct" else "",
                _f(r["vs_pgbouncer"], ".2f") if r["target"].startswith("optimist") else "",
                _f(r.get("vs_base"), ".2f", ""),
                _f(r["proxy_cpu_us_per_tx"], ".1f"),
                ""
                if r["proxy_user_us_per_tx"] is None
                else f"{r['proxy_user_us_per_tx']:.0f}+{r['proxy_sys_us_per_tx']:.0f}",
                _f(r["machine_cpu_us_per_tx"], ".0f"),
                "" if r["machine_busy"] is None else f"{100 * r['machine_busy']:.0f}%",
                _f(r["loadavg_1m"], ".1f"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "| "
            + " | ".join(
                cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                for i, cell in enumerate(line)
            )
            + " |"
        )
        if n == 0:
            out.append(
                "|"
                + "|".join(
                    "-" * (w + 1) + ":" if i >= 2 else "-" * (w + 2) for i, w in enumerate(widths)
                )
                + "|"
            )
    return "\n".join(out)


# ------------------------------------------------------------------ the run


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_database(pg, scale: int) -> None:
    psql(pg.dsn, f"DROP DATABASE IF EXISTS {DB}")
    psql(pg.dsn, f"CREATE DATABASE {DB}")
    import subprocess

    from proxy.embedded import pg_tool
    from tests.bench.services import client_env

    url = dsn(pg.host, pg.port, DB)
    res = subprocess.run(
        [pg_tool("pgbench"), "-i", "-q", "-s", str(scale), url],
        capture_output=True,
        text=True,
        env=client_env(),
        timeout=1800,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(f"pgbench -i failed:\n{res.stderr}")
    for table in TABLES:
        psql(url, f"ALTER TABLE {table} ADD COLUMN version int NOT NULL DEFAULT 1")
    psql(url, FORM_TABLE)
    psql(url, form_fill(scale))
    psql(url, "VACUUM ANALYZE")


def reset_for_writes(url: str) -> None:
    """What pgbench does before a run unless -n, done directly so every run starts alike."""
    psql(url, "VACUUM pgbench_branches")
    psql(url, "VACUUM pgbench_tellers")
    psql(url, "TRUNCATE pgbench_history")
    psql(url, "VACUUM bench_form")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, help="measured rounds per workload (default 3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per measured run (default 6; quick 2)")
    p.add_argument(
        "--warmup",
        type=float,
        help="seconds of the warm-up run per target (default 1; 0: none; whole seconds)",
    )
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--scale", type=int, help="pgbench -i -s (default 10; quick 1)")
    p.add_argument(
        "--workloads",
        nargs="+",
        choices=list(WORKLOADS),
        metavar="W",
        help="some of: " + ", ".join(WORKLOADS) + " (default: all but tpcb-columns)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="also run optimist without rules as `serve --workers N` on "
        + ", ".join(WORKERS_WORKLOADS)
        + " (target optimist-wN, compared with the one-process optimist; default 2; 0 or 1: no)",
    )
    p.add_argument(
        "--no-micro",
        action="store_true",
        help="skip the in-process hot-path targets (idle session, cached rewrite, recognition)",
    )
    p.add_argument(
        "--quick", action="store_true", help="1 round of 2 s, warm-up 1 s, scale 1: ~2 minutes"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        type=Path,
        help="a checkout of another commit (git worktree add DIR COMMIT): its optimist runs as "
        "one more target per optimist, same rules, in the same alternation (label '@base')",
    )
    p.add_argument(
        "--optimist-python",
        metavar="PATH",
        help="the Python of another venv whose installed optimist the optimist targets run "
        "(e.g. a non-editable, mypyc-compiled install; PYTHONSAFEPATH=1 so that the installed "
        "package, not this source tree, is imported); default: this interpreter",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, data) for inspection"
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (2.0 if quick else 6.0)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.scale = args.scale or (1 if quick else 10)
    args.workloads = args.workloads or list(DEFAULT_WORKLOADS)
    # pgbench -T takes whole seconds
    args.duration = float(max(1, round(args.duration)))
    args.warmup = float(max(0, round(args.warmup)))
    if args.rounds < 1 or args.duration < 1 or args.clients < 1 or args.jobs < 1:
        p.error("rounds, duration, clients and jobs must be positive")
    return args


def optimist_build(python: str | None) -> str:
    """What the optimist targets import: 'compiled (mypyc)' or 'pure Python' (proxy.build)."""
    import subprocess

    cmd = [python or sys.executable, "-c", "import proxy; print(proxy.build(), proxy.__file__)"]
    env = {**os.environ, "PYTHONSAFEPATH": "1"} if python else None
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    return res.stdout.strip() or f"unknown ({res.stderr.strip()[-200:]})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    workloads = [WORKLOADS[name] for name in args.workloads]
    started = time.monotonic()
    runs: list[RunResult] = []
    try:
        with Services(keep=args.keep, optimist_python=args.optimist_python) as services:
            _log(f"work directory {services.workdir}")
            pg = services.postgres()
            env = environment(pg)
            env["optimist build"] = optimist_build(args.optimist_python)
            idle_busy = background_busy()
            env["background CPU load before the run"] = (
                "unknown"
                if idle_busy is None
                else f"{100 * idle_busy:.0f}% of all CPUs busy with other work (measured 3 s "
                f"before starting); load average {os.getloadavg()[0]:.2f}"
            )
            _log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
            _log(f"initialising pgbench, scale {args.scale}")
            t0 = time.monotonic()
            prepare_database(pg, args.scale)
            _log(f"  done in {time.monotonic() - t0:.1f}s")
            rules_dir = services.workdir / "rules"
            rules_dir.mkdir()
            (rules_dir / "version.yaml").write_text(VERSION_RULES)
            (rules_dir / "columns.yaml").write_text(COLUMNS_RULES)
            (rules_dir / "form.yaml").write_text(FORM_RULES)
            script = services.workdir / "read-write-back.sql"
            script.write_text(READ_WRITE_BACK)
            form_script = services.workdir / "form-save.sql"
            form_script.write_text(FORM_SAVE)
            if args.workers > 1:
                wlabel, wkind = f"optimist-w{args.workers}", f"norules-w{args.workers}"
                workloads = [
                    replace(w, optimists=w.optimists + ((wlabel, wkind),))
                    if w.name in WORKERS_WORKLOADS
                    else w
                    for w in workloads
                ]

            bouncer = services.pgbouncer()
            needed = {kind for w in workloads for _, kind in w.optimists}
            proxies = {}
            for kind in ("norules", "version", "columns", "form"):
                if kind in needed:
                    rules = None if kind == "norules" else rules_dir / f"{kind}.yaml"
                    proxies[kind] = services.optimist(kind, rules)
                    if args.baseline is not None:
                        proxies[kind + "@base"] = services.optimist(
                            kind + "-base", rules, checkout=args.baseline
                        )
            if args.workers > 1 and f"norules-w{args.workers}" in needed:
                proxies[f"norules-w{args.workers}"] = services.optimist(
                    f"norules-w{args.workers}", None, extra=["--workers", str(args.workers)]
                )
            if args.baseline is not None:
                workloads = [
                    replace(
                        w,
                        optimists=w.optimists
                        + tuple(
                            (label + "@base", kind + "@base")
                            for label, kind in w.optimists
                            if kind + "@base" in proxies
                        ),
                    )
                    for w in workloads
                ]
            direct_url = dsn(pg.host, pg.port, DB)
            endpoints = {
                "direct": (direct_url, None),
                "pgbouncer": (dsn(bouncer.host, bouncer.port, DB), bouncer.pid),
            }

            for w in workloads:
                targets = [("direct", *endpoints["direct"]), ("pgbouncer", *endpoints["pgbouncer"])]
                for label, kind in w.optimists:
                    p = proxies[kind]
                    targets.append((label, dsn(p.host, p.port, DB), p.pid))
                wargs = [
                    a.replace("{script}", str(script)).replace("{form}", str(form_script))
                    for a in w.args
                ]
                _log(f"== {w.name}: {w.description}")
                schedule = []
                if args.warmup > 0:
                    schedule += [(-1, t) for t in targets]
                for r in range(args.rounds):
                    k = r % len(targets)
                    schedule += [(r, t) for t in targets[k:] + targets[:k]]
                for round_, (label, url, pid) in schedule:
                    if w.writes:
                        reset_for_writes(direct_url)
                    duration = args.warmup if round_ < 0 else args.duration
                    res = run_pgbench(
                        url,
                        wargs,
                        workload=w.name,
                        target=label,
                        round_=round_,
                        duration=duration,
                        clients=args.clients,
                        jobs=args.jobs,
                        proxy_pid=pid,
                        log_latencies=round_ >= 0,
                    )
                    runs.append(res)
                    what = "warm-up" if round_ < 0 else f"round {round_ + 1}"
                    _log(
                        f"  {what:8} {label:17} tps {_f(res.tps, '8.0f')}  p99 "
                        f"{_f(res.latency_p99_ms, '.2f')} ms  failed {res.failed}  "
                        f"retried {res.retried}"
                        + ("" if res.ok else f"  PROBLEM rc={res.returncode} {res.errors[:2]}")
                    )
            for p in proxies.values():
                if not p.alive():
                    _log(f"{p.name} died during the benchmark:\n{p.log_tail()}")
            proxy_logs = {p.name: p.log_tail(20) for p in proxies.values()}
    except KeyboardInterrupt:
        _log("interrupted: everything started was stopped")
        return 130
    elapsed = time.monotonic() - started
    rows = summarize(runs, workloads)
    after_busy = background_busy(2.0)
    if after_busy is not None:
        env["background CPU load after the run"] = (
            f"{100 * after_busy:.0f}% of all CPUs busy with other work (measured 2 s after "
            f"stopping everything); load average {os.getloadavg()[0]:.2f}"
        )
    print()
    print(
        f"optimist benchmark: {args.rounds} round(s) x {args.duration:g}s per target, "
        f"warm-up {args.warmup:g}s, pgbench -c {args.clients} -j {args.jobs}, "
        f"scale {args.scale}; total {elapsed:.0f}s"
    )
    print("environment:")
    for k, v in env.items():
        print(f"  {k}: {v}")
    print()
    print(format_table(rows))
    print()
    for w in workloads:
        print(f"  {w.name}: {w.description}")
    checked = [r for r in rows if "checked_vs_this" in r]
    for r in checked:
        print(
            f"  {r['workload']}: optimist with rules / {r['target']} = "
            f"{r['checked_vs_this']:.2f} (the cost of checking alone)"
        )
    problems = [r for r in runs if not r.ok]
    failures = [r for r in rows if r["failed"] or r["retried"] or r["aborted_clients"]]
    if failures:
        print("\nfailed / retried transactions (summed over measured rounds):")
        for r in failures:
            print(
                f"  {r['workload']} {r['target']}: failed {r['failed']} (serialization "
                f"{r['serialization_failures']}), retried {r['retried']} "
                f"({r['retries']} retries), aborted clients {r['aborted_clients']}"
            )
    if problems:
        print("\nruns with errors:")
        for r in problems:
            print(
                f"  {r.workload} {r.target} round {r.round}: rc={r.returncode} "
                f"{'; '.join(r.errors[:3])}"
            )
    noisy = {k: v for k, v in proxy_logs.items() if v.strip()}
    if noisy:
        print("\noptimist log output (warnings and up):")
        for k, v in noisy.items():
            print(f"  {k}:\n    " + v.replace("\n", "\n    "))
    micro = None
    if not args.no_micro:
        _log("hot-path targets (micro benchmark, in-process)")
        micro = micro_targets(0.1 if args.quick else 0.3, 200 if args.quick else 1000)
    targets = evaluate(rows, micro, clients=args.clients)
    print("\ntargets of the performance issue (ratios within this run):")
    print(format_targets(targets))
    if args.json:
        data = {
            "settings": {
                k: getattr(args, k)
                for k in (
                    "rounds",
                    "duration",
                    "warmup",
                    "clients",
                    "jobs",
                    "scale",
                    "workloads",
                    "quick",
                    "workers",
                )
            },
            "environment": env,
            "elapsed_s": elapsed,
            "workloads": {w.name: w.description for w in workloads},
            "summary": rows,
            "micro": micro,
            "targets": [t.to_json() for t in targets],
            "runs": [r.to_json() for r in runs],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 1 if problems else 0
