"""Where the clauses of an UPDATE / DELETE / INSERT are, by top-level token index."""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot.tokens import TokenType

from proxy.rewrite.tokens import SqlText

__all__ = ["Clauses", "find_clauses"]


@dataclass
class Clauses:
    main: int  # index of UPDATE / DELETE / INSERT
    set_lo: int = -1  # SET items tokens[set_lo:set_hi]
    set_hi: int = -1
    where: int = -1  # index of the WHERE keyword
    where_hi: int = -1  # end (exclusive) of the WHERE condition
    returning: int = -1  # index of RETURNING
    only: bool = False


def find_clauses(text: SqlText, kinds: set[TokenType]) -> Clauses | None:
    toks = text.toks
    n = len(toks)
    main = next((i for i, t in text.top(0, n, 0) if t.token_type in kinds), None)
    if main is None:
        return None
    c = Clauses(main)
    after = main + 1
    if (
        toks[main].token_type == TokenType.DELETE
        and after < n
        and toks[after].token_type == TokenType.FROM
    ):
        after += 1
    elif (
        toks[main].token_type == TokenType.INSERT
        and after < n
        and toks[after].token_type == TokenType.INTO
    ):
        after += 1
    c.only = after < n and toks[after].text.upper() == "ONLY"
    prev = None
    for i, t in text.top(after, n, 0):
        tt = t.token_type
        if (
            tt == TokenType.SET
            and c.set_lo < 0
            and c.where < 0
            and toks[main].token_type == TokenType.UPDATE
        ):
            c.set_lo = i + 1
        elif (
            c.set_lo >= 0
            and c.set_hi < 0
            and (
                tt in (TokenType.WHERE, TokenType.RETURNING)
                or (tt == TokenType.FROM and prev != TokenType.DISTINCT)
            )
        ):
            c.set_hi = i
        if tt == TokenType.WHERE and c.where < 0 and toks[main].token_type != TokenType.INSERT:
            c.where = i
        elif tt == TokenType.RETURNING and c.returning < 0:
            c.returning = i
            break
        prev = tt
    if c.set_lo >= 0 and c.set_hi < 0:
        c.set_hi = c.returning if c.returning >= 0 else n
    if c.where >= 0:
        c.where_hi = c.returning if c.returning >= 0 else n
    return c
