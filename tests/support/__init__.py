"""Test harness: the embedded server, the proxy subprocess, client programs, a raw client."""

from proxy.embedded import EmbeddedPostgres, free_port, pg_tool

from .pgtools import PsqlResult, client_env, psql_with_ssl, run_pgbench, run_psql
from .pgutil import backend_gone, backend_pids, connect, query_direct, run_async, wait_until
from .proxyproc import ProxyProcess, port_accepts, wait_for_port
from .rawpg import RawClient, rows

__all__ = [
    "EmbeddedPostgres",
    "free_port",
    "pg_tool",
    "PsqlResult",
    "client_env",
    "psql_with_ssl",
    "run_pgbench",
    "run_psql",
    "backend_gone",
    "backend_pids",
    "connect",
    "query_direct",
    "run_async",
    "wait_until",
    "ProxyProcess",
    "port_accepts",
    "wait_for_port",
    "RawClient",
    "rows",
]
