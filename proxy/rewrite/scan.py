"""Everything the hot path needs from one statement's text, computed once and cached.

A simple-protocol write used to be lexed up to four times (write_target, normalize, classify,
normalize again), and standard_conforming_strings was lost on the way. `scan(sql, scs)` reads
the statement once (the head regexes look at its first tokens, normalize's single pass at the
rest) and keeps the result in a bounded LRU keyed by (sql, scs): an application repeats its
statements, so a repeat costs one dict lookup.
"""

from __future__ import annotations

from functools import _CacheInfo, lru_cache
from typing import NamedTuple

from proxy.rewrite import lexer

__all__ = ["CACHE_SIZE", "MAX_CACHED_LENGTH", "StatementScan", "scan", "scan_cache_info"]

CACHE_SIZE = 4096
# longer statements (bulk INSERTs, generated SQL) are scanned every time: caching a few
# thousand of them could hold hundreds of megabytes, and they are rarely repeated
MAX_CACHED_LENGTH = 8192


class StatementScan(NamedTuple):
    # literals replaced by $90001... placeholders (lexer.normalize)
    template: str
    literals: tuple[str, ...]
    # first keyword upper-cased ('' for none)
    keyword: str
    # keyword plus transaction-control details: savepoint, rollback_to, discard, chain, prepared
    statement: lexer.Statement
    # (schema or None, table) folded like PostgreSQL, lexer.MUST_PARSE, or None (not a write)
    target: tuple[str | None, str] | None

    @property
    def savepoint(self) -> str | None:
        return self.statement.savepoint

    @property
    def rollback_to(self) -> bool:
        return self.statement.rollback_to


def _scan(sql: str, standard_conforming_strings: bool) -> StatementScan:
    template, literals = lexer.normalize_uncached(sql, standard_conforming_strings)
    statement = lexer.classify_uncached(sql, standard_conforming_strings)
    return StatementScan(template, literals, statement.keyword, statement, lexer.write_target(sql))


_scan_cached = lru_cache(maxsize=CACHE_SIZE)(_scan)


def scan(sql: str, standard_conforming_strings: bool = True) -> StatementScan:
    """The statement's scan; lex it with the session's standard_conforming_strings (off: a
    backslash escapes in '' strings, so 'a\\'' is one complete literal)."""
    if len(sql) > MAX_CACHED_LENGTH:
        return _scan(sql, standard_conforming_strings)
    return _scan_cached(sql, standard_conforming_strings)


def scan_cache_info() -> _CacheInfo:
    """functools' (hits, misses, maxsize, currsize) of the scan cache."""
    return _scan_cached.cache_info()
