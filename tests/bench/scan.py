"""One statement scan against the separate lexer passes it replaces, for a typical UPDATE.

    python -m tests.bench.scan [--seconds S]

Interleaves the measures (round-robin, best of several rounds) so a busy machine slows all of
them alike. "before" is what the enforcer paid per simple-protocol write: write_target, then
normalize, classify and normalize again, all uncached.
"""

from __future__ import annotations

import argparse
import time

from proxy.rewrite import lexer
from proxy.rewrite.scan import _scan, scan

STMT = "UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 48213"


def _per_call_ns(fn, seconds: float) -> float:
    n, start = 0, time.perf_counter_ns()
    deadline = start + seconds * 1e9
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.perf_counter_ns()
        if now >= deadline:
            return (now - start) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measure and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    def before_two():
        lexer.write_target(STMT)
        lexer.normalize_uncached(STMT)

    def before_four():
        lexer.write_target(STMT)
        lexer.normalize_uncached(STMT)
        lexer.classify_uncached(STMT)
        lexer.normalize_uncached(STMT)

    cases = {
        "write_target + normalize (uncached)": before_two,
        "write_target + normalize + classify + normalize (uncached)": before_four,
        "scan, cache miss": lambda: _scan(STMT, True),
        "scan, cache hit": lambda: scan(STMT),
        "write_target alone": lambda: lexer.write_target(STMT),
    }
    best = {name: float("inf") for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], _per_call_ns(fn, args.seconds))
    print(f"statement: {STMT}")
    for name, ns in best.items():
        print(f"  {name:60s} {ns / 1000:8.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
