"""Running pgbench once and reading what it says: TPS, latencies, failures, retries, errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from proxy.embedded import pg_tool
from tests.bench.services import client_env

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class RunResult:
    workload: str
    target: str
    round: int  # 0-based; -1 for the warm-up
    duration: float
    returncode: int
    tps: float | None = None
    latency_avg_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    processed: int | None = None
    failed: int = 0
    serialization_failures: int = 0
    deadlock_failures: int = 0
    retried: int = 0
    retries: int = 0
    aborted_clients: int = 0
    logged: int = 0  # transactions in the per-transaction logs
    proxy_cpu_s: float | None = None  # CPU the target's proxy process used during the run
    proxy_user_s: float | None = None  # of which in user space (Python, for optimist)
    proxy_sys_s: float | None = None  # of which in the kernel (socket reads and writes)
    proxy_syscr: int | None = None  # read-like system calls of the proxy process
    proxy_syscw: int | None = None  # write-like system calls
    proxy_preempted: int | None = None  # involuntary context switches of the proxy process
    machine_busy: float | None = None  # busy fraction of all CPUs during the run (0..1)
    machine_cpu_s: float | None = None  # CPU seconds used by everything on the machine
    loadavg_1m: float | None = None  # at the end of the run: others' work shows up here
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.tps is not None and not self.aborted_clients

    @property
    def proxy_cpu_us_per_tx(self) -> float | None:
        if self.proxy_cpu_s is None or not self.processed:
            return None
        return self.proxy_cpu_s / self.processed * 1e6

    def per_tx(self, value) -> float | None:
        if value is None or not self.processed:
            return None
        return value / self.processed

    def to_json(self) -> dict:
        d = asdict(self)
        d["proxy_cpu_us_per_tx"] = self.proxy_cpu_us_per_tx
        return d


def _descendants(pid: int) -> list[int]:
    """pid and its children's, recursively (a `--workers N` proxy forks its workers)."""
    out = [pid]
    for n in out:
        try:
            for task in Path(f"/proc/{n}/task").iterdir():
                out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def process_counters(pid: int | None):
    """(user CPU s, system CPU s, read syscalls, write syscalls, involuntary context switches)
    of a process and its descendants (the counters of workers alive now), from /proc."""
    if pid is None:
        return None
    parts = [c for c in (_one_process(p) for p in _descendants(pid)) if c is not None]
    if not parts:
        return None
    return tuple(
        None if any(c[i] is None for c in parts) else sum(c[i] for c in parts) for i in range(5)
    )


def _one_process(pid: int):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    syscr = syscw = nvcsw = None
    try:
        io = Path(f"/proc/{pid}/io").read_text()
        syscr = int(re.search(r"syscr: (\d+)", io).group(1))
        syscw = int(re.search(r"syscw: (\d+)", io).group(1))
        status = Path(f"/proc/{pid}/status").read_text()
        nvcsw = int(re.search(r"nonvoluntary_ctxt_switches:\s*(\d+)", status).group(1))
    except (OSError, AttributeError):
        pass
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, syscr, syscw, nvcsw


def machine_counters() -> tuple[float, float] | None:
    """(busy CPU seconds, total CPU seconds) of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return float(sorted_values[int(rank) - 1])


def read_latencies(logdir: Path) -> list[int]:
    """Per-transaction latencies (us) from `pgbench -l` logs: the 3rd field of every line
    (`client_id transaction_no time script_no time_epoch time_us [lag] [retries]`); 'failed'
    and 'skipped' transactions have no latency and are left out."""
    out: list[int] = []
    append = out.append
    for path in sorted(logdir.iterdir()):
        with open(path, "rb") as f:
            for line in f:
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[2].isdigit():
                    append(int(parts[2]))
    return out


def _num(pattern: str, text: str, cast=float):
    m = re.search(pattern, text, re.M)
    return cast(m.group(1)) if m else None


def parse_output(res: RunResult, stdout: str, stderr: str) -> None:
    res.tps = _num(r"^tps = ([\d.]+)", stdout)
    res.latency_avg_ms = _num(r"^latency average = ([\d.]+) ms", stdout)
    res.processed = _num(r"^number of transactions actually processed: (\d+)", stdout, int)
    res.failed = _num(r"^number of failed transactions: (\d+)", stdout, int) or 0
    res.serialization_failures = _num(r"^number of serialization failures: (\d+)", stdout, int) or 0
    res.deadlock_failures = _num(r"^number of deadlock failures: (\d+)", stdout, int) or 0
    res.retried = _num(r"^number of transactions retried: (\d+)", stdout, int) or 0
    res.retries = _num(r"^total number of retries: (\d+)", stdout, int) or 0
    errors = [
        line.strip()
        for line in stderr.splitlines()
        if "error" in line.lower() or "aborted" in line.lower() or "fatal" in line.lower()
    ]
    res.aborted_clients = sum(1 for line in errors if re.search(r"client \d+ .*aborted", line))
    # keep a bounded sample of distinct messages
    seen: list[str] = []
    for line in errors:
        if line not in seen:
            seen.append(line)
        if len(seen) >= 10:
            break
    res.errors = seen


def run_pgbench(
    url: str,
    args: list[str],
    *,
    workload: str,
    target: str,
    round_: int,
    duration: float,
    clients: int,
    jobs: int,
    proxy_pid: int | None = None,
    log_latencies: bool = True,
    timeout_extra: float = 60,
) -> RunResult:
    """`pgbench -n -c C -j J -T D [-l --log-prefix] ARGS URL`, parsed."""
    logdir = Path(tempfile.mkdtemp(prefix="optimist-bench-log-"))
    try:
        cmd = [
            pg_tool("pgbench"),
            "-n",
            "-c",
            str(clients),
            "-j",
            str(jobs),
            "-T",
            str(int(duration) if float(duration).is_integer() else duration),
        ]
        if log_latencies:
            cmd += ["-l", f"--log-prefix={logdir / 'tx'}"]
        cmd += args + [url]
        before = process_counters(proxy_pid)
        machine0 = machine_counters()
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=client_env(),
            stdin=subprocess.DEVNULL,
            timeout=duration + timeout_extra,
            cwd=str(logdir),
        )
        machine1 = machine_counters()
        after = process_counters(proxy_pid)
        load = os.getloadavg()[0]
        res = RunResult(workload, target, round_, duration, proc.returncode)
        parse_output(res, proc.stdout, proc.stderr)
        res.loadavg_1m = load
        if machine0 is not None and machine1 is not None and machine1[1] > machine0[1]:
            res.machine_cpu_s = machine1[0] - machine0[0]
            res.machine_busy = res.machine_cpu_s / (machine1[1] - machine0[1])
        if before is not None and after is not None:
            res.proxy_user_s = after[0] - before[0]
            res.proxy_sys_s = after[1] - before[1]
            res.proxy_cpu_s = res.proxy_user_s + res.proxy_sys_s
            if before[2] is not None and after[2] is not None:
                res.proxy_syscr = after[2] - before[2]
                res.proxy_syscw = after[3] - before[3]
            if before[4] is not None and after[4] is not None:
                res.proxy_preempted = after[4] - before[4]
        if res.tps is None:
            res.errors.append((proc.stdout + proc.stderr)[-2000:])
        if log_latencies:
            lat = read_latencies(logdir)
            lat.sort()
            res.logged = len(lat)
            if lat:
                res.latency_p50_ms = percentile(lat, 50) / 1000
                res.latency_p99_ms = percentile(lat, 99) / 1000
        return res
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def background_busy(seconds: float = 3.0) -> float | None:
    """Busy fraction of the machine's CPUs while the benchmark itself does nothing."""
    import time

    first = machine_counters()
    time.sleep(seconds)
    second = machine_counters()
    if first is None or second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1])
