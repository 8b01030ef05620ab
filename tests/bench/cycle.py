"""One select-only request/response cycle through `Session`, repeated: ns per cycle, and a
region for instruction counts under callgrind.

    python -m tests.bench.cycle [--mode simple|extended|prepared] [--rules none|other|own] [-n N]
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=builtin_sorted \\
        python -m tests.bench.cycle --mode extended -n 2000 --once

The cycle is what `pgbench -S -M MODE` sends and PostgreSQL answers (one row, one int4 column),
fed to the Session as one read each way, as the relay does. `--rules other`: rules loaded for
other tables (the RowDescription names a table without a rule); `own`: the row's table has a
version rule (no version column selected, so nothing is captured). The measured loop runs inside
`sorted(..., key=step)` so callgrind can count exactly it (--toggle-collect=builtin_sorted),
deterministic on a loaded machine; divide the Ir of builtin_sorted's inclusive cost by N.

The compiled build: run it with the Python of a venv holding the wheel, PYTHONSAFEPATH=1 and the
repo root after site-packages (e.g. a .pth file naming it), so that `tests` comes from here and
`proxy` from the install; the line printed names the build measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from proxy import build
from proxy.wire import messages as m
from proxy.wire.framing import frame
from tests.bench.micro import (
    ACCOUNTS_OID,
    INT4,
    READY,
    command_complete,
    make_enforcement,
    new_session,
    query_bytes,
    row_description,
)

OTHER_OID = 16440  # a table no rule names (pgbench_branches, say)
SQL = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


def _cstr(b: bytes) -> bytes:
    return b + b"\x00"


def request(mode: str, aid: int = 48213) -> bytes:
    value = b"%d" % aid
    if mode == "simple":
        return query_bytes(SQL.replace(b"$1", value).decode())
    bind = frame(
        b"B",
        _cstr(b"")
        + _cstr(b"P0_1" if mode == "prepared" else b"")
        + b"\x00\x00"
        + b"\x00\x01"
        + len(value).to_bytes(4, "big")
        + value
        + b"\x00\x00",
    )
    execute = frame(b"E", _cstr(b"") + b"\x00\x00\x00\x00")
    sync = frame(b"S", b"")
    if mode == "prepared":
        return bind + execute + sync
    parse = frame(b"P", _cstr(b"") + _cstr(SQL) + b"\x00\x00")
    describe = frame(b"D", b"P" + _cstr(b""))
    return parse + bind + describe + execute + sync


def answer(mode: str, table_oid: int) -> bytes:
    desc = row_description([("abalance", table_oid, 3, INT4)])
    rows = m.encode_data_row([b"0"]) + command_complete(b"SELECT 1") + READY
    if mode == "simple":
        return desc + rows
    if mode == "prepared":
        return frame(b"2", b"") + rows
    return frame(b"1", b"") + frame(b"2", b"") + desc + rows


def make_session(mode: str, rules: str, tmp: Path):
    enforcement = None if rules == "none" else make_enforcement(tmp)
    session = new_session(enforcement)
    if mode == "prepared":  # the statement, prepared once as pgbench -M prepared does
        prep = frame(b"P", _cstr(b"P0_1") + _cstr(SQL) + b"\x00\x00") + frame(b"S", b"")
        session.client_data(prep)
        session.take_output()
        session.server_data(frame(b"1", b"") + READY)
        session.take_output()
    return session


def stepper(mode: str, rules: str, tmp: Path):
    session = make_session(mode, rules, tmp)
    req = request(mode)
    ans = answer(mode, ACCOUNTS_OID if rules == "own" else OTHER_OID)
    client_data, server_data, take = session.client_data, session.server_data, session.take_output

    def step(_: int) -> int:
        client_data(req)
        take()
        server_data(ans)
        take()
        return 0

    step(0)
    assert not session.busy
    return step


def callgrind(mode: str, rules: str, n: int) -> int:
    """Instructions (callgrind Ir) per cycle: exactly the sorted() region, N cycles."""
    import re
    import subprocess

    with tempfile.TemporaryDirectory(prefix="optimist-cg-") as tmp:
        res = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                "--toggle-collect=builtin_sorted",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                "-m",
                "tests.bench.cycle",
                "--mode",
                mode,
                "--rules",
                rules,
                "-n",
                str(n),
                "--once",
            ],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
    found = re.search(r"Collected : (\d+)", res.stderr)
    if res.returncode != 0 or found is None:
        print(res.stdout + res.stderr[-2000:], file=sys.stderr)
        return 1
    print(
        f"{mode} cycle, rules {rules}, {build()}: {int(found.group(1)) / n:,.0f} instructions per cycle"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.cycle", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--mode", choices=["simple", "extended", "prepared"], default="extended")
    p.add_argument("--rules", choices=["none", "other", "own"], default="none")
    p.add_argument("-n", type=int, default=100_000)
    p.add_argument("--once", action="store_true", help="one timed region only (for callgrind)")
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="run this cycle under valgrind --tool=callgrind and print instructions per cycle",
    )
    args = p.parse_args(argv)
    if args.callgrind:
        return callgrind(args.mode, args.rules, args.n)
    with tempfile.TemporaryDirectory(prefix="optimist-cycle-") as tmp:
        step = stepper(args.mode, args.rules, Path(tmp))
        best = float("inf")
        for _ in range(1 if args.once else 7):
            t0 = time.perf_counter_ns()
            sorted(range(args.n), key=step)
            best = min(best, (time.perf_counter_ns() - t0) / args.n)
    print(
        f"{args.mode} cycle, rules {args.rules}, {build()}: {best:.0f} ns per cycle (best of runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
