"""`optimist` command line: parses arguments and dispatches to serve, demo, check, explain."""

from __future__ import annotations

import argparse
import sys

from proxy import __version__, build
from proxy.config import ConfigError, load_settings

SERVE_HELP = """\
Run the proxy. Point applications at --listen instead of PostgreSQL.

Every option can also be set with an OPTIMIST_<NAME> environment variable
(e.g. OPTIMIST_UPSTREAM, OPTIMIST_RULES with paths separated by ':') or in a
TOML file given with --config (keys as the long option names, '-' or '_').
Precedence: command line, then environment, then config file.

Without --upstream, optimist starts a PostgreSQL server of its own (data kept
in a per-user directory, stopped on exit) and proxies to it.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML file with settings")
    p.add_argument(
        "--rules",
        metavar="PATH",
        action="append",
        help="rule file or directory of rule files (repeatable)",
    )
    p.add_argument(
        "--upstream", metavar="URL", help="PostgreSQL server: postgresql://host:port or host:port"
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="least severe messages logged (default info)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="one plain line or one JSON object per event (default text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimist",
        description="A PostgreSQL proxy that turns lost updates into conflict errors.",
    )
    parser.add_argument("--version", action="version", version=f"optimist {__version__}, {build()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the proxy",
        description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(serve)
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where clients connect (default 127.0.0.1:6432; a bare PORT means 127.0.0.1:PORT)",
    )
    serve.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve /metrics, /healthz and /readyz here"
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long open transactions may finish (default 30)",
    )
    serve.add_argument(
        "--conflict-sqlstate", metavar="CODE", help="SQLSTATE of conflict errors (default 40001)"
    )
    serve.add_argument(
        "--data-dir", metavar="DIR", help="data directory of the embedded PostgreSQL"
    )
    serve.add_argument(
        "--pooler-mode",
        choices=["session", "transaction"],
        help="transaction: a transaction pooler is between optimist and PostgreSQL (guards "
        "only from `optimist install`; see README, Poolers) (default session)",
    )
    serve.add_argument(
        "--guard-schema",
        metavar="NAME",
        help="schema of guard functions installed by `optimist install` (default optimist)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N proxy processes on the listen port (default 1)",
    )
    tls = serve.add_argument_group("TLS (certificates reload on SIGHUP)")
    tls.add_argument("--tls-cert", metavar="FILE", help="certificate offered to clients")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key")
    tls.add_argument(
        "--client-tls",
        choices=["disable", "allow", "require"],
        help="allow (default when a certificate is set) or require TLS from clients",
    )
    tls.add_argument(
        "--upstream-tls",
        choices=["disable", "prefer", "require", "verify-ca", "verify-full"],
        help="TLS to PostgreSQL, as libpq's sslmode (default disable)",
    )
    tls.add_argument(
        "--upstream-tls-ca",
        metavar="FILE",
        help="CA certificate for --upstream-tls verify-ca/verify-full",
    )
    admin = serve.add_argument_group("admin console (psql ... optimist; see README)")
    admin.add_argument(
        "--admin-users",
        metavar="ROLES",
        action="append",
        help="roles that may use the console, comma-separated (default none: disabled)",
    )
    admin.add_argument(
        "--admin-database",
        metavar="NAME",
        help="the console's virtual database name (default optimist)",
    )
    admin.add_argument(
        "--admin-auth-database",
        metavar="NAME",
        help="real database PostgreSQL authenticates console users against (default postgres)",
    )
    limits = serve.add_argument_group("limits (0 turns a timeout off)")
    limits.add_argument(
        "--max-client-connections",
        type=int,
        metavar="N",
        help="refuse clients beyond N with 53300 (default 1000)",
    )
    limits.add_argument(
        "--max-message-size",
        type=int,
        metavar="BYTES",
        help="refuse larger protocol messages with 08P01 (default 1 GiB)",
    )
    limits.add_argument(
        "--auth-timeout",
        type=float,
        metavar="SECONDS",
        help="time a client has to finish connecting (default 60)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="close sessions idle outside a transaction (default 0: off)",
    )
    limits.add_argument(
        "--query-timeout",
        type=float,
        metavar="SECONDS",
        help="cancel requests running longer (default 0: off)",
    )

    demo = sub.add_parser(
        "demo",
        help="run the proxy on an embedded PostgreSQL with a sample schema and the example rules",
    )
    demo.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where clients connect (default 127.0.0.1:6432; a bare PORT means 127.0.0.1:PORT)",
    )
    demo.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory of the embedded PostgreSQL (default: per user)",
    )

    check = sub.add_parser("check", help="validate rule files (and against a live database)")
    check.add_argument(
        "--rules",
        metavar="PATH",
        action="append",
        required=True,
        help="rule file or directory of rule files (repeatable)",
    )
    check.add_argument(
        "--upstream",
        metavar="URL",
        help="also check tables, keys, columns and types in this database "
        "(postgresql://user@host:port/db, or host:port for user and "
        "database postgres)",
    )

    explain = sub.add_parser("explain", help="show what the proxy would do with a statement")
    explain.add_argument(
        "--rules",
        metavar="PATH",
        action="append",
        required=True,
        help="rule file or directory of rule files (repeatable)",
    )
    explain.add_argument(
        "--upstream",
        metavar="URL",
        help="read the table's key, columns and types from this database "
        "(without it: from the rule files and any schema .sql beside "
        "them)",
    )
    explain.add_argument("sql", help="one SQL statement, quoted")

    install = sub.add_parser(
        "install",
        help="create the guard functions in a schema of their own (for transaction poolers)",
        description="Create (or replace) the guard functions in --schema of the --upstream "
        "database, executable by every role. Needs a role that may create the schema. "
        "Proxies use them instead of per-connection pg_temp functions.",
    )
    install.add_argument("--config", metavar="FILE", help="TOML file with settings")
    install.add_argument(
        "--upstream",
        metavar="URL",
        help="the database (postgresql://user@host:port/db)",
    )
    install.add_argument(
        "--schema",
        dest="guard_schema",
        metavar="NAME",
        help="schema to create them in (default optimist)",
    )
    install.add_argument(
        "--conflict-sqlstate",
        metavar="CODE",
        help="SQLSTATE of conflict errors, as the proxies use (default 40001)",
    )
    install.add_argument(
        "--uninstall", action="store_true", help="drop the functions and the schema instead"
    )

    for name, what in (
        ("status", "show a running proxy's rules, sessions and write counts (its console)"),
        ("reload", "make a running proxy reload its rule files (its console's RELOAD)"),
    ):
        console = sub.add_parser(name, help=what, description=what)
        console.add_argument(
            "--config", metavar="FILE", help="the TOML file the proxy runs with (listen, admin_*)"
        )
        console.add_argument(
            "--listen", metavar="HOST:PORT", help="where the proxy listens (default 127.0.0.1:6432)"
        )
        console.add_argument(
            "--user", metavar="ROLE", help="admin role to connect as (default: first admin_users)"
        )
        console.add_argument(
            "--dsn", metavar="URL", help="or a full connection string to the console"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from proxy.logs import setup_logging

    try:
        settings = load_settings(vars(args))
    except ConfigError as exc:
        print(f"optimist: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        from proxy.runtime import serve

        return serve(settings)
    if args.command == "demo":
        from proxy.demo import prepare_demo

        return prepare_demo(settings)
    if args.command == "check":
        from proxy.check import check

        code, lines = check(settings.rules, settings.upstream)
        for line in lines:
            print(line)
        return code
    if args.command == "install":
        from proxy.install import install

        code, line = install(
            settings.upstream, settings.guard_schema, settings.conflict_sqlstate, args.uninstall
        )
        print(line, file=sys.stderr if code else sys.stdout)
        return code
    if args.command in ("status", "reload"):
        from proxy.admin import client

        try:
            target = client.console_target(settings, args.user, args.dsn)
        except ConfigError as exc:
            print(f"optimist: {exc}", file=sys.stderr)
            return 2
        code, lines = getattr(client, args.command)(target)
        for line in lines:
            print(line, file=sys.stderr if code else sys.stdout)
        return code
    if args.command == "explain":
        from proxy.explain import explain

        code, lines = explain(settings.rules, settings.upstream, args.sql)
        for line in lines:
            print(line)
        return code
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
