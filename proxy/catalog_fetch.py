"""The live catalog fetch, for `optimist check`, `optimist explain` and tests: the proxy itself
sends catalog_query() in-band on the client's connection (see proxy.catalog)."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.catalog import Catalog, catalog_query

__all__ = ["fetch_catalog"]


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


async def fetch_catalog(
    dsn: str, tables: Iterable[tuple[str, str]], *, timeout: float = 10.0
) -> Catalog:
    """Run catalog_query() over a fresh asyncpg connection (for `optimist check`, tests)."""
    import asyncpg  # only the tools need a driver; the proxy sends the query in-band

    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        records = await conn.fetch(catalog_query(tables), timeout=timeout)
    finally:
        await conn.close()
    return Catalog.from_rows([[_as_text(v) for v in r.values()] for r in records])
