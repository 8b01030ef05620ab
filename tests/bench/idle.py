"""Memory of idle connections in the real proxy process (RSS), to check the tracemalloc figure.

    python -m tests.bench.idle [--connections 150]

Starts PostgreSQL and optimist (without rules, then with a version rule), opens N idle
connections through it with asyncpg, and reports the proxy's resident memory growth per
connection (VmRSS from /proc, after the connections are set up and have run one query). This
counts everything the micro-benchmark's tracemalloc figure leaves out: uvloop transports and
their buffers, the relay objects, allocator overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

import asyncpg

from tests.bench.macro import VERSION_RULES
from tests.bench.services import Services, dsn, install_signal_handlers, psql


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s*(\d+) kB", status).group(1))


async def hold(url: str, n: int, pid: int) -> tuple[int, int]:
    before = rss_kib(pid)
    conns = []
    for _ in range(n):
        conn = await asyncpg.connect(url, timeout=10)
        await conn.fetchval("SELECT aid FROM pgbench_accounts WHERE aid = 1")
        conns.append(conn)
    await asyncio.sleep(0.5)
    after = rss_kib(pid)
    for conn in conns:
        await conn.close()
    return before, after


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.idle", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--connections",
        type=int,
        default=150,
        help="idle connections (default 150; the benchmark server allows 200)",
    )
    args = p.parse_args(argv)
    install_signal_handlers()
    try:
        with Services() as services:
            pg = services.postgres()
            psql(
                pg.dsn,
                "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, abalance int, "
                "version int NOT NULL DEFAULT 1)",
            )
            psql(pg.dsn, "INSERT INTO pgbench_accounts (aid, abalance) VALUES (1, 0)")
            rules = services.workdir / "version.yaml"
            rules.write_text(VERSION_RULES.split("  - table: pgbench_tellers")[0])
            for label, path in (("no rules", None), ("version rule", rules)):
                proxy = services.optimist(label.replace(" ", "-"), path)
                time.sleep(0.5)
                url = dsn(proxy.host, proxy.port, "postgres")
                # one connection first: imports, caches and the catalog are not per connection
                asyncio.run(hold(url, 1, proxy.pid))
                before, after = asyncio.run(hold(url, args.connections, proxy.pid))
                print(
                    f"optimist, {label}: RSS {before} KiB -> {after} KiB with "
                    f"{args.connections} idle connections: "
                    f"{(after - before) / args.connections:.1f} KiB per connection"
                )
                proxy.stop()
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
