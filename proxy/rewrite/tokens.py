"""Token geometry of a statement template: sqlglot's tokens with offsets in the client's text,
nesting depth, matching brackets, the placeholders, and splitting on top-level separators.

sqlglot's parse tells the planner what a statement *means*; these tokens tell it *where* things
are, so additions can be spliced into the client's own text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import NamedTuple

from sqlglot.dialects.postgres import Postgres
from sqlglot.tokens import TokenType

from proxy.rewrite.lexer import PLACEHOLDER_BASE
from proxy.rewrite.lexer import _tokens as _lexer_tokens
from proxy.rewrite.render import Lit

__all__ = ["SqlText", "SqlToken"]

_OPEN = {TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.CASE}
_CLOSE = {TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.END}
_TOKENIZER = Postgres().tokenizer_class


class SqlToken(NamedTuple):
    token_type: TokenType
    text: str
    start: int  # offsets in the template (inclusive, like sqlglot's)
    end: int


class SqlText:
    """The template, its tokens with nesting depth, and where the placeholders are.

    sqlglot's tokenizer fails on parameters followed directly by another '$' ("$1,$2": it
    tries a $tag$ there), so sqlglot reads `parse_sql`, a copy with a space after every $n;
    token offsets are mapped back to the template.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        inserted: list[int] = []  # template offsets where parse_sql has an extra space
        parts: list[str] = []
        last = 0
        for tok in _lexer_tokens(sql):
            if tok.kind == "param" and tok.end < len(sql) and not sql[tok.end].isspace():
                parts.append(sql[last : tok.end])
                parts.append(" ")
                last = tok.end
                inserted.append(tok.end)
        parts.append(sql[last:])
        self.parse_sql = "".join(parts)
        # the k-th extra space sits at parse offset inserted[k] + k
        self._inserted_at = [at + k for k, at in enumerate(inserted)]
        toks = [
            SqlToken(t.token_type, t.text, self.orig(t.start), self.orig(t.end))
            for t in _TOKENIZER().tokenize(self.parse_sql)
        ]
        while toks and toks[-1].token_type == TokenType.SEMICOLON:
            toks.pop()
        self.toks = toks
        depth: list[int] = []
        match: dict[int, int] = {}
        stack: list[int] = []
        d = 0
        for i, t in enumerate(toks):
            tt = t.token_type
            if tt in _CLOSE and stack:
                d -= 1
                match[stack.pop()] = i
            depth.append(d)
            if tt in _OPEN:
                d += 1
                stack.append(i)
        self.depth = depth
        self.match = match
        # placeholders ($90001...) are PARAMETER + NUMBER token pairs
        holes: list[tuple[int, int, int]] = []
        max_param = 0
        for i in range(len(toks) - 1):
            if (
                toks[i].token_type == TokenType.PARAMETER
                and toks[i + 1].token_type == TokenType.NUMBER
                and toks[i + 1].start == toks[i].end + 1
                and toks[i + 1].text.isdigit()
            ):
                n = int(toks[i + 1].text)
                if n >= PLACEHOLDER_BASE:
                    holes.append((toks[i].start, toks[i + 1].end + 1, n - PLACEHOLDER_BASE))
                else:
                    max_param = max(max_param, n)
        self.holes = holes
        self._hole_starts = [h[0] for h in holes]
        self.max_param = max_param
        self.end = toks[-1].end + 1 if toks else 0

    def orig(self, parse_pos: int) -> int:
        """A parse_sql offset as a template offset."""
        return parse_pos - bisect_left(self._inserted_at, parse_pos)

    def start_of(self, i: int) -> int:
        return self.toks[i].start if i < len(self.toks) else self.end

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Character span of tokens[lo:hi] (hi exclusive)."""
        return self.toks[lo].start, self.toks[hi - 1].end + 1

    def pieces(self, start: int, end: int) -> list[object]:
        """The client's text[start:end] with placeholders as Lit holes."""
        out: list[object] = []
        pos = start
        for hs, he, slot in self.holes[bisect_left(self._hole_starts, start) :]:
            if hs >= end:
                break
            out.append(self.sql[pos:hs])
            out.append(Lit(slot))
            pos = he
        out.append(self.sql[pos:end])
        return out

    def top(self, lo: int, hi: int, base: int | None = None) -> Iterator[tuple[int, SqlToken]]:
        """(index, token) of tokens[lo:hi] at the nesting depth of tokens[lo]."""
        if lo >= hi:
            return
        base = self.depth[lo] if base is None else base
        depth = self.depth
        for i in range(lo, hi):
            if depth[i] == base:
                yield i, self.toks[i]

    def split(self, lo: int, hi: int, sep: TokenType) -> list[tuple[int, int]]:
        """Split tokens[lo:hi] on top-level separators (ANDs of BETWEEN x AND y excluded)."""
        chunks = []
        start = lo
        between = False
        for i, t in self.top(lo, hi):
            tt = t.token_type
            if tt == TokenType.BETWEEN:
                between = True
            elif tt == sep:
                if sep == TokenType.AND and between:
                    between = False
                    continue
                chunks.append((start, i))
                start = i + 1
        chunks.append((start, hi))
        return chunks
