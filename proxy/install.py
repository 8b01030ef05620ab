"""`optimist install`: put the guard functions in a schema of their own, once per database,
for proxies whose sessions cannot rely on pg_temp (in front of a transaction pooler).

Privileges: CREATE on the database when the schema does not exist yet (it is created, owned
by the installing role, USAGE granted to PUBLIC), or CREATE on the existing schema named by
--schema (its owner grants USAGE to the roles clients connect as). Nothing else: the functions
read no table and run as their caller. One transaction: a failure changes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.config import upstream_dsn
from proxy.locking import installed
from proxy.sqlnames import quote_ident

EXIT_OK, EXIT_FAILED = 0, 1


class Refused(Exception):
    """What the role may not do, said in one line."""


_SCHEMA = (
    "SELECT n.oid, pg_catalog.has_schema_privilege(n.oid, 'CREATE'),"
    " pg_catalog.pg_has_role(n.nspowner, 'USAGE')"
    " FROM pg_catalog.pg_namespace n WHERE n.nspname = $1"
)


async def _install(conn: Any, schema: str, sqlstate: str) -> str:
    quoted = quote_ident(schema)
    found = await conn.fetchrow(_SCHEMA, schema)
    database = await conn.fetchval("SELECT pg_catalog.current_database()")
    role = await conn.fetchval("SELECT current_user")
    notes = []
    if found is None:
        if not await conn.fetchval(
            "SELECT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE')"
        ):
            raise Refused(
                f"role {role} may not create schema {schema} in database {database}: "
                f"GRANT CREATE ON DATABASE {quote_ident(database)} TO {quote_ident(role)}, "
                "or create the schema, GRANT CREATE ON it, and pass --schema"
            )
        await conn.execute(f"CREATE SCHEMA {quoted}")
        owner = True
    else:
        _, may_create, owner = found
        if not may_create:
            raise Refused(
                f"role {role} may not create functions in schema {schema}: "
                f"GRANT CREATE ON SCHEMA {quoted} TO {quote_ident(role)}"
            )
    if owner:
        await conn.execute(f"GRANT USAGE ON SCHEMA {quoted} TO PUBLIC")
    else:
        notes.append(f"schema {schema} is not {role}'s: its owner grants USAGE to client roles")
    before = installed.judge_installed(
        [tuple(r) for r in await conn.fetch(installed.installed_query(schema))], schema, sqlstate
    )
    for (signature,) in await conn.fetch(installed.stale_functions_query(schema)):
        await conn.execute(f"DROP FUNCTION {signature}")
        notes.append(f"dropped {signature}")
    await conn.execute(installed.install_sql(schema, sqlstate))
    version = installed.version(sqlstate)
    if before.usable:
        was = "unchanged"
    elif before.version is not None:
        was = f"replaced version {before.version}"
    else:
        was = "new"
    return (
        f"optimist install: guard functions installed in schema {schema} of database "
        f"{database} (version {version}, conflict SQLSTATE {sqlstate}; {was}"
        + "".join(f"; {n}" for n in notes)
        + "); running proxies use them after their next catalog check"
    )


async def _uninstall(conn: Any, schema: str) -> str:
    found = await conn.fetchrow(_SCHEMA, schema)
    if found is None:
        return f"optimist install: nothing to remove, there is no schema {schema}"
    signatures = installed.signatures(schema)
    signatures += [s for (s,) in await conn.fetch(installed.stale_functions_query(schema))]
    for signature in signatures:
        await conn.execute(f"DROP FUNCTION IF EXISTS {signature}")
    oid, _, owner = found
    empty = not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_depend"
        " WHERE refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND refobjid = $1)",
        oid,
    )
    if owner and empty:
        await conn.execute(f"DROP SCHEMA {quote_ident(schema)}")
        return f"optimist install: removed the guard functions and schema {schema}"
    why = "it holds other objects" if not empty else "it is not the installing role's"
    return f"optimist install: removed the guard functions; schema {schema} kept ({why})"


async def _run(dsn: str, schema: str, sqlstate: str, uninstall: bool) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            if uninstall:
                return await _uninstall(conn, schema)
            return await _install(conn, schema, sqlstate)
    finally:
        await conn.close()


def install(upstream: str | None, schema: str, sqlstate: str, uninstall: bool) -> tuple[int, str]:
    """(exit code, one line saying what was done or why not)."""
    if not upstream:
        return EXIT_FAILED, (
            "optimist install: --upstream URL is required (the database to install in, "
            "directly, not through a pooler: postgresql://owner@host:5432/db)"
        )
    what = "uninstall" if uninstall else "install"
    try:
        installed.version(sqlstate)  # a conflict SQLSTATE that is not one: say so first
        return EXIT_OK, asyncio.run(_run(upstream_dsn(upstream), schema, sqlstate, uninstall))
    except Refused as exc:
        return EXIT_FAILED, f"optimist install: cannot {what}: {exc}"
    except Exception as exc:  # the driver's and the server's errors: one line, no traceback
        detail = " ".join(str(exc).split()) or type(exc).__name__
        hint = ""
        if getattr(exc, "sqlstate", None) == "42501":
            hint = " (connect as the role that installed them, or the schema's owner)"
        return EXIT_FAILED, f"optimist install: cannot {what} in schema {schema}: {detail}{hint}"
