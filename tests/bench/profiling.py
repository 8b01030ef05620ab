"""Where the proxy's time goes under load: py-spy on `optimist serve` while pgbench runs.

    python -m tests.bench.profiling [--workload select-extended] [--duration 20] [--out docs/profile]

Starts PostgreSQL and optimist as the benchmark does (`python -m tests.bench`), runs pgbench
against optimist, and meanwhile samples the proxy process with py-spy twice: once into a raw
collapsed-stack file (native frames of uvloop, libuv and libc included, idle samples recorded
and recognised by their epoll frame), summarised as top functions by self and total samples,
and once into an SVG flame graph. `--pin` gives the proxy a CPU of its own so that the samples
show where it spends CPU, not where it waits for one (on a 2-core machine shared with
PostgreSQL and pgbench, the proxy is often preempted right after a write() that woke its peer). Workloads: `select-extended` (pgbench -S -M extended, no rules), `read-write-back`
(the benchmark's read-then-write script through optimist with the version rule: every write is
checked), `tpcb-version` (TPC-B under version rules) and `form-save` (a 20-column row read and
written back whole through a columns rule with sparse update).

Outputs, under --out: <workload>.svg, <workload>.collapsed.txt, <workload>.top.txt.
Needs py-spy (`pip install py-spy`) and the right to ptrace the proxy (root, or
kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from proxy.embedded import pg_tool
from tests.bench.macro import (
    DB,
    FORM_RULES,
    FORM_SAVE,
    READ_WRITE_BACK,
    VERSION_RULES,
    prepare_database,
)
from tests.bench.pgbench import RunResult, parse_output
from tests.bench.services import REPO, Services, client_env, dsn, install_signal_handlers

WORKLOADS = {
    "select-extended": (["-S", "-M", "extended"], False),
    "read-write-back": (["-f", "{script}", "-M", "simple", "--max-tries=10"], True),
    "tpcb-version": (["-b", "tpcb-like", "-M", "simple", "--max-tries=10"], True),
    # a 20-column row read and written back whole through a columns rule (sparse update)
    "form-save": (["-f", "{form}", "-M", "simple", "--max-tries=10"], True),
}


def _rules_label(workload: str, rules: bool) -> str:
    if not rules:
        return ", no rules"
    return ", a columns rule (sparse update)" if workload == "form-save" else ", version rules"


_LINE = re.compile(r"^(.*) (\d+)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def _clean(frame: str) -> str:
    # 'server_data (proxy/session.py:152)' -> 'server_data (proxy/session.py)'
    return re.sub(r":\d+\)$", ")", frame.strip())


def _is_python(frame: str) -> bool:
    return frame.endswith(".py)") or "(<frozen" in frame


CATEGORIES = (  # first match wins, tested on the whole stack (or the leaf for system calls)
    (
        "write() system calls (socket writes; on loopback they also run the receiver's TCP path)",
        lambda leaf, s: leaf.startswith(("write (", "writev (", "send")),
    ),
    ("read() system calls", lambda leaf, s: leaf.startswith(("read (", "recv"))),
    (
        "metrics (prometheus_client: labels(), locks, histogram)",
        lambda leaf, s: (
            "prometheus_client" in s
            or "Metrics." in s
            or "stats_bytes" in s
            or "observe_latency" in s
        ),
    ),
    ("garbage collector", lambda leaf, s: "gc_collect" in s),
    ("lexer (normalize, write_target, classify, split)", lambda leaf, s: "rewrite/lexer.py" in s),
    (
        "planner / render (cached plans)",
        lambda leaf, s: "rewrite/planner.py" in s or "rewrite/render.py" in s,
    ),
    (
        "capture, snapshots, learning from RETURNING",
        lambda leaf, s: (
            "locking/capture.py" in s
            or "locking/snapshots.py" in s
            or "proxy/values.py" in s
            or "locking/knowledge.py" in s
        ),
    ),
    ("locking logic, rest", lambda leaf, s: "proxy/locking/" in s),
    (
        "session state machine, framing, message codecs",
        lambda leaf, s: any(
            f in s for f in ("wire/framing.py", "wire/messages.py", "proxy/session/")
        ),
    ),
    ("relay glue (proxy/server/)", lambda leaf, s: "proxy/server/" in s),
    ("event loop and interpreter (uvloop, libuv, CPython)", lambda leaf, s: True),
)


def summarize(collapsed: Path, top: int = 40, expected: int | None = None) -> tuple[str, dict]:
    """Top functions by self and total samples from a py-spy raw (collapsed) file."""
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    # native frames folded into the innermost Python function that called them
    py_self: collections.Counter[str] = collections.Counter()
    leaf_native: collections.Counter[tuple[str, str]] = collections.Counter()
    categories: collections.Counter[str] = collections.Counter()
    samples = 0
    idle = 0
    for line in collapsed.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, count = m.group(1), int(m.group(2))
        frames = [_clean(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        # py-spy prefixes the thread: 'process 123:"python -m proxy serve"' or 'thread (0x..)'
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        # a sample is idle when the event loop waits in epoll (only with --idle)
        if "epoll" in leaf or leaf.startswith(("uv__io_poll", "__GI_epoll")):
            idle += count
            continue
        self_counts[leaf] += count
        joined = ";".join(frames)
        categories[next(name for name, test in CATEGORIES if test(leaf, joined))] += count
        for f in set(frames):
            total_counts[f] += count
        py = next((f for f in reversed(frames) if _is_python(f)), leaf)
        py_self[py] += count
        if py != leaf:
            leaf_native[(py, leaf)] += count
    busy = samples - idle
    if idle:  # native frames: idle samples recorded and recognised by their epoll leaf
        first = (
            f"samples: {samples} (idle in epoll: {idle}, {100 * idle / max(samples, 1):.1f}%;"
            f" busy: {busy})"
        )
    else:  # py-spy left out the samples in which the thread slept
        first = f"busy samples: {busy}" + (
            f" of {expected} taken ({100 * busy / expected:.0f}% of the time the event loop "
            f"thread was running, not waiting in epoll)"
            if expected
            else ""
        )
    lines = [first, "", "where the busy samples go:"]
    for name, count in categories.most_common():
        lines.append(f"{100 * count / max(busy, 1):7.1f}%  {name}")
    lines += [
        "",
        f"top {top} by self samples (% of busy samples):",
        f"{'self%':>7} {'total%':>7}  function",
    ]
    for frame, count in self_counts.most_common(top):
        lines.append(
            f"{100 * count / max(busy, 1):7.2f} {100 * total_counts[frame] / max(busy, 1):7.2f}"
            f"  {frame}"
        )
    lines += [
        "",
        f"top {top} Python functions by self samples, native code they called (C "
        "extensions, libc, system calls) counted as theirs:",
        f"{'self%':>7} {'total%':>7}  function  [largest native part]",
    ]
    for frame, count in py_self.most_common(top):
        natives = [(n, c) for (p_, n), c in leaf_native.items() if p_ == frame]
        natives.sort(key=lambda x: -x[1])
        extra = f"  [{natives[0][0]}: {100 * natives[0][1] / max(busy, 1):.1f}%]" if natives else ""
        lines.append(
            f"{100 * count / max(busy, 1):7.2f} "
            f"{100 * total_counts[frame] / max(busy, 1):7.2f}  {frame}{extra}"
        )
    lines += [
        "",
        f"top {top} by total (inclusive) samples (% of busy samples):",
        f"{'total%':>7} {'self%':>7}  function",
    ]
    n = 0
    for frame, count in total_counts.most_common():
        lines.append(
            f"{100 * count / max(busy, 1):7.2f} {100 * self_counts[frame] / max(busy, 1):7.2f}"
            f"  {frame}"
        )
        n += 1
        if n >= top:
            break
    data = {
        "samples": samples,
        "idle": idle,
        "self": self_counts.most_common(100),
        "python_self": py_self.most_common(100),
        "total": total_counts.most_common(100),
    }
    return "\n".join(lines) + "\n", data


def record(
    pid: int, out: Path, fmt: str, duration: int, rate: int, native: bool, nonblocking: bool = False
) -> subprocess.CompletedProcess:
    cmd = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(duration),
        "--rate",
        str(rate),
        "--format",
        fmt,
        "--output",
        str(out),
        "--function",
    ]
    if native:
        cmd += ["--native", "--idle"]
    if nonblocking:
        cmd.append("--nonblocking")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.profiling", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--workload", choices=list(WORKLOADS), default="select-extended")
    p.add_argument("--duration", type=int, default=20, help="seconds per py-spy recording")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--scale", type=int, default=10)
    p.add_argument(
        "--python-only",
        action="store_true",
        help="Python frames only, sampled without pausing the process (py-spy "
        "--nonblocking); its idle detection then misses the event loop's epoll wait, "
        "so busy and idle time cannot be told apart",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="give the proxy a CPU of its own (the last one) and PostgreSQL and "
        "pgbench the others, so that samples show where the proxy spends CPU rather "
        "than where it waits for a CPU",
    )
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--out", default=str(REPO / "docs" / "profile"))
    p.add_argument(
        "--summarize",
        metavar="COLLAPSED",
        help="only print the summary of an existing .collapsed.txt file",
    )
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(Path(args.summarize), 40)[0])
        return 0
    install_signal_handlers()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pgargs, rules = WORKLOADS[args.workload]
    warmup = 3
    pgbench_time = warmup + 2 * args.duration + 6
    try:
        with Services() as services:
            pg = services.postgres()
            print(f"initialising pgbench, scale {args.scale}", file=sys.stderr)
            prepare_database(pg, args.scale)
            rules_path = None
            if rules:
                rules_path = services.workdir / "rules.yaml"
                form = args.workload == "form-save"
                rules_path.write_text(FORM_RULES if form else VERSION_RULES)
            script = services.workdir / "read-write-back.sql"
            script.write_text(READ_WRITE_BACK)
            form_script = services.workdir / "form-save.sql"
            form_script.write_text(FORM_SAVE)
            proxy = services.optimist("profiled", rules_path)
            others = None
            if args.pin:
                cpus = sorted(os.sched_getaffinity(0))
                if len(cpus) < 2:
                    raise SystemExit("--pin needs at least 2 CPUs")
                others = set(cpus[:-1])
                os.sched_setaffinity(pg.pid, others)  # backends forked from now on inherit it
                os.sched_setaffinity(proxy.pid, {cpus[-1]})
            cmd = [
                pg_tool("pgbench"),
                "-n",
                "-c",
                str(args.clients),
                "-j",
                str(args.jobs),
                "-T",
                str(pgbench_time),
            ] + [
                a.replace("{script}", str(script)).replace("{form}", str(form_script))
                for a in pgargs
            ]
            cmd.append(dsn(proxy.host, proxy.port, DB))
            print(" ".join(cmd), file=sys.stderr)
            bench = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=client_env(),
                stdin=subprocess.DEVNULL,
                preexec_fn=(lambda: os.sched_setaffinity(0, others)) if others else None,
            )
            try:
                time.sleep(warmup)
                native = not args.python_only
                nonblocking = args.python_only
                name = args.workload + args.tag
                raw = out / f"{name}.collapsed.txt"
                res = record(proxy.pid, raw, "raw", args.duration, args.rate, native, nonblocking)
                if res.returncode != 0:
                    raise RuntimeError(f"py-spy failed:\n{res.stderr}")
                svg = out / f"{name}.svg"
                res = record(
                    proxy.pid, svg, "flamegraph", args.duration, args.rate, native, nonblocking
                )
                if res.returncode != 0:
                    print(f"py-spy flamegraph failed:\n{res.stderr}", file=sys.stderr)
                stdout, stderr = bench.communicate(timeout=pgbench_time + 60)
            finally:
                if bench.poll() is None:
                    bench.kill()
                    bench.wait()
            result = RunResult(args.workload, "optimist", 0, pgbench_time, bench.returncode)
            parse_output(result, stdout, stderr)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    text, _ = summarize(raw, 40, None if native else args.duration * args.rate)
    header = (
        f"py-spy profile of `optimist serve` (uvloop) under pgbench {' '.join(pgargs)} "
        f"-c {args.clients} -j {args.jobs}, scale {args.scale}"
        f"{_rules_label(args.workload, rules)}; {args.duration}s at {args.rate} Hz"
        f"{', native frames' if native else ''}"
        f"{', proxy pinned to a CPU of its own' if args.pin else ', no CPU pinning'}"
        f"{', non-blocking sampling' if nonblocking else ', blocking sampling'}.\n"
        f"pgbench during the profile: "
        f"tps {result.tps}, failed {result.failed}, rc {result.returncode}\n"
        f"self%: samples with the function at the top of the stack; total%: samples with "
        f"the function anywhere on the stack.\n\n"
    )
    (out / f"{name}.top.txt").write_text(header + text)
    print(header + text)
    print(f"written: {raw}, {out / (name + '.svg')}, {out / (name + '.top.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
