"""`optimist status` and `optimist reload`: talk to a running proxy through its console.

The connection is an ordinary PostgreSQL one (asyncpg), so PostgreSQL authenticates the
admin role as usual (PGPASSWORD or ~/.pgpass when it asks for a password). With
`--workers N` it reaches whichever worker the kernel picks: each has its own console.
"""

from __future__ import annotations

import asyncio

from proxy.config import ConfigError, Settings

TIMEOUT = 10.0


def console_target(settings: Settings, user: str | None, dsn: str | None) -> dict:
    if dsn:
        return {"dsn": dsn}
    user = user or (settings.admin_users[0] if settings.admin_users else None)
    if not user:
        raise ConfigError(
            "no admin role: give --user, or admin_users in the configuration the proxy runs with"
        )
    endpoint = settings.listen_endpoint
    host = endpoint.unix_socket or endpoint.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return {"host": host, "port": endpoint.port, "user": user, "database": settings.admin_database}


async def _fetch(target: dict, commands: list[str]) -> list[list]:
    import asyncpg

    conn = await asyncpg.connect(**target, timeout=TIMEOUT, statement_cache_size=0)
    try:
        return [await conn.fetch(command, timeout=TIMEOUT) for command in commands]
    finally:
        await conn.close()


def _run(target: dict, commands: list[str]) -> tuple[list[list] | None, str | None]:
    try:
        return asyncio.run(_fetch(target, commands)), None
    except (OSError, TimeoutError) as exc:
        where = target.get("dsn") or f"{target['host']}:{target['port']}"
        return None, f"cannot reach the optimist console at {where}: {exc or 'timeout'}"
    except Exception as exc:  # asyncpg's errors: refused role, a reload refused, ...
        detail = getattr(exc, "detail", None)
        return None, f"{exc}" + (f"\n{detail}" if detail else "")


def _table(rows, columns: list[str]) -> list[str]:
    cells = [columns] + [["" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]


def status(target: dict) -> tuple[int, list[str]]:
    found, error = _run(target, ["SHOW RULES", "SHOW SESSIONS", "SHOW STATS"])
    if found is None:
        return 1, [f"optimist: {error}"]
    rules, sessions, stats = found
    version = rules[0]["version"] if rules else "(no rules)"
    clients = [s for s in sessions if s["state"] != "console"]
    lines = [f"rules version: {version}", f"client sessions: {len(clients)}"]
    if rules:
        lines += ["", *_table(rules, ["database", "table", "mode", "state", "reason"])]
    if stats:
        lines += ["", *_table(stats, ["table", "checked", "unverified", "conflicts"])]
    return 0, lines


def reload(target: dict) -> tuple[int, list[str]]:
    found, error = _run(target, ["RELOAD"])
    if found is None:
        return 1, [f"optimist: {error}"]
    row = found[0][0]
    return 0, [f"rules version {row['rules_version'] or '-'}: {row['result']}"]
