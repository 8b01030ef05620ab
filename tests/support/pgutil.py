"""Small helpers around psycopg/asyncpg connections used by many tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")

__all__ = ["connect", "wait_until", "run_async", "backend_pids", "backend_gone", "query_direct"]


def connect(dsn: str, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection:
    """A psycopg connection with a bounded connect time (and sslmode=disable unless given)."""
    kwargs.setdefault("connect_timeout", 10)
    if "sslmode" not in dsn:
        kwargs.setdefault("sslmode", "disable")
    return psycopg.connect(dsn, autocommit=autocommit, **kwargs)


def query_direct(dsn: str, sql: str, params: Any = None) -> list[tuple]:
    with connect(dsn) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


def wait_until(
    pred: Callable[[], T], timeout: float = 5.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``pred`` until truthy; return its value or raise AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a coroutine to completion in a fresh event loop, bounded by ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def backend_pids(
    direct_dsn: str, *, application_name: str | None = None, query_like: str | None = None
) -> list[int]:
    """Server backends (seen through a direct connection) matching the filters."""
    sql = "select pid from pg_stat_activity where pid <> pg_backend_pid() and backend_type = 'client backend'"
    params: list[Any] = []
    if application_name is not None:
        sql += " and application_name = %s"
        params.append(application_name)
    if query_like is not None:
        sql += " and query like %s"
        params.append(query_like)
    return [r[0] for r in query_direct(direct_dsn, sql, params)]


def backend_gone(direct_dsn: str, pid: int) -> bool:
    return not query_direct(direct_dsn, "select 1 from pg_stat_activity where pid = %s", [pid])
