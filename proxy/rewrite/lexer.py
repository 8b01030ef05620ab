"""Hot-path SQL lexing: splitting, classifying, write prefiltering and literal normalisation.

Pure-Python regular expressions only (no sqlglot): every simple query goes through
`split_statements`, `classify` and `write_target`, so these must cost microseconds. The lexing
rules follow PostgreSQL's scanner (scan.l): '...' strings with '' escapes (and backslash escapes
when standard_conforming_strings is off), E'...' strings, "identifiers", $tag$...$tag$ dollar
quotes, -- line comments and nested /* */ block comments.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

# quote_* are re-exported: callers imported them from here before proxy.sqlnames existed
from proxy.sqlnames import (
    fold_identifier,
    identifier_value,
    quote_ident,
    quote_literal,
    quote_literal_any,
)

__all__ = [
    "MUST_PARSE",
    "PLACEHOLDER_BASE",
    "Statement",
    "classify",
    "classify_uncached",
    "denormalize",
    "literal_text",
    "normalize",
    "normalize_uncached",
    "quote_ident",
    "quote_literal",
    "quote_literal_any",
    "split_statements",
    "write_target",
]

# normalize() replaces the i-th literal by $<PLACEHOLDER_BASE + i>. The protocol caps client
# parameters at 65535 ($n is Int16-counted in Bind), so these can never clash with a client's $n.
PLACEHOLDER_BASE = 90001

# write_target() sentinel: a WITH statement may write anywhere; only a parse can tell.
MUST_PARSE: tuple[str, str] = ("*", "*")

_IDENT_START = r"[^\W\d]"  # letters (any script) and underscore
_IDENT_CHAR = r"[\w$]"

# --------------------------------------------------------------------------------------------
# Token scanner shared by normalize/classify (one token per call: precise but ~0.3 us/token)
# --------------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")
_LINE_COMMENT = re.compile(r"--[^\n]*")
_BLOCK_DELIM = re.compile(r"/\*|\*/")
_STD_STRING = re.compile(r"'(?:[^']|'')*(?:'|\Z)")
_STD_STRING_BACKSLASH = re.compile(r"'(?:[^'\\]|\\.|'')*(?:'|\Z)", re.S)
_E_STRING = re.compile(r"[eE]'(?:[^'\\]|\\.|'')*(?:'|\Z)", re.S)
_PREFIXED_STRING = re.compile(r"(?:[bBxXnN]|[uU]&)'(?:[^']|'')*(?:'|\Z)")
_QUOTED_IDENT = re.compile(r'(?:[uU]&)?"(?:[^"]|"")*(?:"|\Z)')
_DOLLAR_OPEN = re.compile(r"\$(?:" + _IDENT_START + r"[\w]*)?\$")
_PARAM = re.compile(r"\$\d+")
_NUMBER = re.compile(
    r"0[xX][0-9A-Fa-f_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:\d[\d_]*(?:\.(?!\.)[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?"
)
_WORD = re.compile(_IDENT_START + _IDENT_CHAR + "*")
_OPERATOR_CHARS = frozenset("+-*/<>=~!@#%^&|`?")


class _Tok(NamedTuple):
    kind: (
        str  # 'string' 'estring' 'dollar' 'xstring' 'ident' 'qident' 'param' 'number' 'op' 'punct'
    )
    start: int
    end: int


def _block_comment_end(sql: str, pos: int) -> int:
    """End of the (nested) block comment opening at pos; len(sql) if unterminated."""
    depth = 0
    for m in _BLOCK_DELIM.finditer(sql, pos):
        if m.group() == "/*":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return m.end()
    return len(sql)


def _dollar_end(sql: str, open_end: int, tag: str) -> int:
    close = sql.find(tag, open_end)
    return len(sql) if close < 0 else close + len(tag)


def _tokens(sql: str, pos: int = 0, scs: bool = True) -> Iterator[_Tok]:
    """Significant tokens (comments and whitespace skipped) from pos."""
    n = len(sql)
    std_string = _STD_STRING if scs else _STD_STRING_BACKSLASH
    while pos < n:
        c = sql[pos]
        if c.isspace():
            pos = _WS.match(sql, pos).end()  # type: ignore[union-attr]  # matches at this character
            continue
        if c == "-" and sql.startswith("--", pos):
            pos = _LINE_COMMENT.match(sql, pos).end()  # type: ignore[union-attr]  # matches at this character
            continue
        if c == "/" and sql.startswith("/*", pos):
            pos = _block_comment_end(sql, pos)
            continue
        if c == "'":
            end = std_string.match(sql, pos).end()  # type: ignore[union-attr]  # matches at this character
            yield _Tok("string", pos, end)
        elif c in "eE" and sql.startswith("'", pos + 1):
            end = _E_STRING.match(sql, pos).end()  # type: ignore[union-attr]  # matches at this character
            yield _Tok("estring", pos, end)
        elif c in "bBxXnNuU" and (m := _PREFIXED_STRING.match(sql, pos)):
            end = m.end()
            yield _Tok("xstring", pos, end)
        elif c == '"' or (c in "uU" and sql.startswith('&"', pos + 1)):
            end = _QUOTED_IDENT.match(sql, pos).end()  # type: ignore[union-attr]  # matches at this character
            yield _Tok("qident", pos, end)
        elif c == "$":
            m = _PARAM.match(sql, pos)
            if m:
                end = m.end()
                yield _Tok("param", pos, end)
            elif m := _DOLLAR_OPEN.match(sql, pos):
                end = _dollar_end(sql, m.end(), m.group())
                yield _Tok("dollar", pos, end)
            else:
                end = pos + 1
                yield _Tok("punct", pos, end)
        elif c.isdigit() or (c == "." and pos + 1 < n and sql[pos + 1].isdigit()):
            end = _NUMBER.match(sql, pos).end()  # type: ignore[union-attr]  # matches at this character
            yield _Tok("number", pos, end)
        elif m := _WORD.match(sql, pos):
            end = m.end()
            yield _Tok("ident", pos, end)
        elif c == ":" and sql.startswith("::", pos):
            end = pos + 2
            yield _Tok("punct", pos, end)
        elif c in _OPERATOR_CHARS:
            end = pos + 1  # one char at a time: enough to know "an operator came before"
            yield _Tok("op", pos, end)
        else:
            end = pos + 1
            yield _Tok("punct", pos, end)
        pos = end


# --------------------------------------------------------------------------------------------
# split_statements
# --------------------------------------------------------------------------------------------

# Characters where something can start that hides a ';' (quotes, comments, dollar quotes).
# Searching for one of them lets C skip everything else.
_SPLIT_STOP = re.compile(r"""[;'"$/-]""")
_DQ_IDENT_BODY = re.compile(r'"(?:[^"]|"")*(?:"|\Z)')
_E_BODY = re.compile(r"'(?:[^'\\]|\\.|'')*(?:'|\Z)", re.S)
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*|\(+)+")
_TRIVIA = re.compile(r"(?:\s+|--[^\n]*)+")
_CREATE_ROUTINE = re.compile(r"create\s+(?:or\s+replace\s+)?(?:function|procedure)\b", re.I)
_BEGIN_ATOMIC = re.compile(r"\bbegin\s+atomic\b", re.I)


def _is_ident_char(c: str) -> bool:
    return c in _IDENT_CHARS or (c > "\x7f" and (c.isalnum() or c == "_"))


def split_statements(sql: str, standard_conforming_strings: bool = True) -> list[str]:
    """Split a simple-query string on top-level ';'. Empty statements (only whitespace or
    comments) are dropped; each statement keeps its comments and loses surrounding whitespace.

    Re-join with ';\\n' (not ';'): a statement may end with a -- comment.
    """
    if ";" not in sql:  # the common single-statement case
        return [sql.strip()] if _has_content(sql) else []
    out: list[str] = []
    std_string = _STD_STRING if standard_conforming_strings else _STD_STRING_BACKSLASH
    n = len(sql)
    start = pos = 0
    search = _SPLIT_STOP.search
    while True:
        m = search(sql, pos)
        if m is None:
            _append_statement(out, sql[start:])
            return out
        i = m.start()
        c = sql[i]
        if c == ";":
            piece = sql[start:i]
            if _CREATE_ROUTINE.match(_skip_noise(piece)) and _BEGIN_ATOMIC.search(piece):
                # SQL-standard routine body: ';' inside BEGIN ATOMIC ... END does not end it
                end = _atomic_body_end(sql, start, standard_conforming_strings)
                if end >= n and not sql.endswith(";"):
                    _append_statement(out, sql[start:])
                    return out
                if end > i + 1:
                    pos = end - 1  # resume at the ';' that really ends the statement
                    continue
            _append_statement(out, piece)
            start = pos = i + 1
        elif c == "'":
            e_string = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _is_ident_char(sql[i - 2]))
            pos = (_E_BODY if e_string else std_string).match(sql, i).end()  # type: ignore[union-attr]  # matches at this character
        elif c == '"':
            pos = _DQ_IDENT_BODY.match(sql, i).end()  # type: ignore[union-attr]  # matches at this character
        elif c == "-":
            if sql.startswith("--", i):
                nl = sql.find("\n", i)
                pos = n if nl < 0 else nl
            else:
                pos = i + 1
        elif c == "/":
            pos = _block_comment_end(sql, i) if sql.startswith("/*", i) else i + 1
        else:  # '$': a dollar quote unless inside an identifier or a $n parameter
            dm = None if i > 0 and _is_ident_char(sql[i - 1]) else _DOLLAR_OPEN.match(sql, i)
            pos = _dollar_end(sql, dm.end(), dm.group()) if dm else i + 1


def _skip_noise(piece: str) -> str:
    i = 0
    n = len(piece)
    while i < n:
        m = _LEADING_NOISE.match(piece, i)
        if m:
            i = m.end()
        elif piece.startswith("/*", i):
            i = _block_comment_end(piece, i)
        else:
            break
    return piece[i:]


def _has_content(piece: str) -> bool:
    """Anything but whitespace and comments?"""
    i = 0
    n = len(piece)
    while i < n:
        m = _TRIVIA.match(piece, i)
        if m:
            i = m.end()
        elif piece.startswith("/*", i):
            i = _block_comment_end(piece, i)
        else:
            return True
    return False


def _append_statement(out: list[str], piece: str) -> None:
    if _has_content(piece):
        out.append(piece.strip())


def _atomic_body_end(sql: str, start: int, scs: bool) -> int:
    """Position just after the ';' that ends a CREATE FUNCTION ... BEGIN ATOMIC ... END statement
    (psql's rule: BEGIN opens, CASE opens inside a body, END closes)."""
    depth = 0
    for tok in _tokens(sql, start, scs):
        if tok.kind == "ident":
            word = sql[tok.start : tok.end].lower()
            if word == "begin":
                depth += 1
            elif word == "case" and depth > 0:
                depth += 1
            elif word == "end" and depth > 0:
                depth -= 1
        elif tok.kind == "punct" and depth == 0 and sql[tok.start] == ";":
            return tok.end
    return len(sql)


# --------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------


class Statement(NamedTuple):
    keyword: str  # first keyword upper-cased ('' for an empty statement)
    savepoint: str | None = None  # SAVEPOINT / RELEASE / ROLLBACK TO: the folded name
    rollback_to: bool = False  # ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name
    discard: str | None = None  # DISCARD ALL|TEMP|PLANS|SEQUENCES (TEMPORARY -> TEMP)
    chain: bool = False  # COMMIT/END/ROLLBACK/ABORT AND CHAIN: a new transaction starts at once
    prepared: bool = False  # PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED (2PC)


_FIRST_WORD = re.compile(r"\s*([A-Za-z_]+)")
_NEEDS_DETAIL = frozenset(
    {"SAVEPOINT", "RELEASE", "ROLLBACK", "ABORT", "COMMIT", "END", "DISCARD", "PREPARE"}
)


def classify_uncached(stmt: str, standard_conforming_strings: bool = True) -> Statement:
    m = _FIRST_WORD.match(stmt)
    if m and (m.end() == len(stmt) or not _IDENT_CHAR_RE.match(stmt, m.end())):
        keyword = m.group(1).upper()
        if keyword not in _NEEDS_DETAIL:
            return Statement(keyword)
        toks = _tokens(stmt, m.end(), standard_conforming_strings)
    else:
        toks = _tokens(stmt, 0, standard_conforming_strings)
        keyword = ""
        for tok in toks:
            if tok.kind == "punct" and stmt[tok.start] == "(":
                continue
            keyword = stmt[tok.start : tok.end].upper() if tok.kind == "ident" else ""
            break
        if keyword not in _NEEDS_DETAIL:
            return Statement(keyword)
    rest = [(t.kind, stmt[t.start : t.end]) for t in toks]
    return _classify_detail(keyword, rest)


_IDENT_CHAR_RE = re.compile(_IDENT_CHAR)


def _classify_detail(keyword: str, rest: list[tuple[str, str]]) -> Statement:
    words = [text.upper() if kind == "ident" else "" for kind, text in rest]
    if keyword == "SAVEPOINT":
        return Statement(keyword, savepoint=_ident_value(rest, 0))
    if keyword == "RELEASE":
        i = 1 if words[:1] == ["SAVEPOINT"] and len(rest) > 1 else 0
        return Statement(keyword, savepoint=_ident_value(rest, i))
    if keyword == "DISCARD":
        target = words[0] if words else None
        return Statement(keyword, discard="TEMP" if target == "TEMPORARY" else target)
    if keyword == "PREPARE":
        return Statement(keyword, prepared=words[:1] == ["TRANSACTION"])
    # COMMIT / END / ROLLBACK / ABORT
    i = 1 if words[:1] in (["WORK"], ["TRANSACTION"]) else 0
    if keyword in ("COMMIT", "ROLLBACK") and words[:1] == ["PREPARED"]:
        return Statement(keyword, prepared=True)
    if keyword == "ROLLBACK" and words[i : i + 1] == ["TO"]:
        i += 1
        if words[i : i + 1] == ["SAVEPOINT"] and len(rest) > i + 1:
            i += 1
        return Statement(keyword, savepoint=_ident_value(rest, i), rollback_to=True)
    chain = words[i : i + 2] == ["AND", "CHAIN"]
    return Statement(keyword, chain=chain)


def _ident_value(rest: list[tuple[str, str]], i: int) -> str | None:
    if i >= len(rest):
        return None
    kind, text = rest[i]
    if kind == "ident":
        return fold_identifier(text)
    if kind == "qident" and text.startswith('"'):
        return identifier_value(text)
    return None


# --------------------------------------------------------------------------------------------
# write_target
# --------------------------------------------------------------------------------------------

_NAME = r'(?:"(?:[^"]|"")*"|' + _IDENT_START + _IDENT_CHAR + "*)"
_WRITE_HEAD = re.compile(
    r"\s*(?:"
    r"(?:update|merge\s+into)\s+(?:only\s+)?"
    r"|delete\s+from\s+(?:only\s+)?"
    r"|insert\s+into\s+"
    r")(" + _NAME + r")(?:\s*\.\s*(" + _NAME + r"))?(?=[\s(*;]|--|/\*|\Z)",
    re.I,
)
_WITH_HEAD = re.compile(r"\s*with(?![\w$])", re.I)
_WRITE_WORD = re.compile(r"\s*(?:update|delete|insert|merge|with)(?![\w$])", re.I)


def write_target(stmt: str) -> tuple[str | None, str] | None:
    """(schema or None, table) written by an UPDATE / DELETE / INSERT / MERGE statement, folded
    like PostgreSQL; MUST_PARSE for WITH statements (or heads this regex cannot read); None for
    everything else."""
    m = _WRITE_HEAD.match(stmt)
    if m:
        first, second = m.group(1), m.group(2)
        if second is None:
            return None, identifier_value(first)
        return identifier_value(first), identifier_value(second)
    if _WITH_HEAD.match(stmt):
        return MUST_PARSE
    c = stmt[:1]
    if c and (c.isspace() or c in "(-/"):
        # leading comments / parentheses: slow path on the stripped head
        head = _skip_noise(stmt)
        if len(head) != len(stmt):
            return write_target(head) if head else None
    if _WRITE_WORD.match(stmt):
        return MUST_PARSE  # a write whose target we could not read (U&"..", catalog.schema.t)
    return None


# --------------------------------------------------------------------------------------------
# normalize
# --------------------------------------------------------------------------------------------

# A literal is replaced only where a parameter could stand instead: after these keywords, after
# an operator, '(' ',' '[' -- never after a type name (DATE '...', INTERVAL '1' DAY).
_LITERAL_CONTEXT_WORDS = frozenset(
    {
        "IN",
        "VALUES",
        "SET",
        "THEN",
        "ELSE",
        "WHEN",
        "AND",
        "OR",
        "NOT",
        "BY",
        "LIMIT",
        "OFFSET",
        "WHERE",
        "BETWEEN",
        "LIKE",
        "ILIKE",
        "RETURNING",
        "SELECT",
        "FROM",
        "CASE",
        "ON",
    }
)
# '(' after these opens a type modifier list (varchar(20), numeric(10,2)): keep its numbers.
_TYPEMOD_WORDS = frozenset(
    {
        "varchar",
        "char",
        "character",
        "varying",
        "nchar",
        "numeric",
        "decimal",
        "dec",
        "bit",
        "varbit",
        "timestamp",
        "timestamptz",
        "time",
        "timetz",
        "interval",
        "float",
        "precision",
    }
)
_LITERAL_KINDS = frozenset({"number", "string", "estring", "dollar"})


_NUMBER_RE = (
    r"0[xX][0-9A-Fa-f_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:\d[\d_]*(?:\.(?!\.)[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?"
)


def _norm_regex(string_body: str) -> re.Pattern[str]:
    # One match = leading whitespace/-- comments + one significant token, so finditer visits
    # each token once, in C. Branches in order of frequency (a failing branch still costs);
    # words must not swallow the prefix of E'', B'', X'', N'', U&'' strings. Block comments
    # (they nest) send normalize to its slow path.
    return re.compile(
        r"\s*(?:--[^\n]*\s*)*(?:"
        r"(?P<ident>(?![eEbBxXnN]'|[uU]&)[^\W\d][\w$]*)"
        r"|(?P<op>[-+*/<>=~!@#%^&|`?])(?!\*)"
        r"|(?P<punct>[(),;\[\]])"
        r"|(?P<number>" + _NUMBER_RE + r")"
        r"|(?P<string>" + string_body + r")"
        r"|(?P<param>\$\d+)"
        r"|(?P<dcolon>::)"
        r"|(?P<estring>[eE]'(?:[^'\\]|\\.|'')*(?:'|\Z))"
        r"|(?P<xstring>(?:[bBxXnN]|[uU]&)'(?:[^']|'')*(?:'|\Z))"
        r'|(?P<qident>(?:[uU]&)?"(?:[^"]|"")*(?:"|\Z))'
        r"|(?P<dollar>\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z))"
        r"|(?P<bc>/\*)"
        r"|(?P<other>.))",
        re.S,
    )


_NORM = _norm_regex(r"'(?:[^']|'')*(?:'|\Z)")
_NORM_BACKSLASH = _norm_regex(r"'(?:[^'\\]|\\.|'')*(?:'|\Z)")
_MAY_HAVE_LITERAL = re.compile(r"[\d'$]")
_LITERAL_GROUPS = frozenset({"number", "string", "estring", "dollar"})
_UPPER_CONTEXT_WORDS = _LITERAL_CONTEXT_WORDS


def normalize_uncached(
    stmt: str, standard_conforming_strings: bool = True
) -> tuple[str, tuple[str, ...]]:
    """Replace literals by $90001, $90002, ... placeholders: (template, literal texts in order).

    `denormalize(template, literals)` gives stmt back exactly. A unary minus directly before a
    number belongs to the literal ('id = -5' -> 'id = $90001', literal '-5').
    """
    if not _MAY_HAVE_LITERAL.search(stmt):
        return stmt, ()
    rx = _NORM if standard_conforming_strings else _NORM_BACKSLASH
    parts: list[str] = []
    literals: list[str] = []
    last = 0
    ctx = False  # may a parameter stand after the previous token?
    prev_word = ""  # the previous token when it is a word, lower-cased
    minus_at = -1  # position of a '-' just before, when it is a unary minus
    pending = -1  # a literal out of context, replaced only if '::' follows
    pending_end = 0
    typemod: list[bool] = []
    in_typemod = False
    for m in rx.finditer(stmt):
        kind = m.lastgroup
        start = m.start(kind)  # type: ignore[arg-type]  # every alternative is a named group
        if kind == "bc":
            return _normalize_slow(stmt, standard_conforming_strings)
        if pending >= 0:
            if kind == "dcolon":
                parts.append(stmt[last:pending])
                parts.append("$" + str(PLACEHOLDER_BASE + len(literals)))
                literals.append(stmt[pending:pending_end])
                last = pending_end
            pending = -1
        if kind in _LITERAL_GROUPS:
            end = m.end()
            if not in_typemod:
                if ctx:
                    if kind == "number" and minus_at == start - 1:
                        start = minus_at
                    parts.append(stmt[last:start])
                    parts.append("$" + str(PLACEHOLDER_BASE + len(literals)))
                    literals.append(stmt[start:end])
                    last = end
                else:
                    pending, pending_end = start, end
            ctx = False
            prev_word = ""
            minus_at = -1
            continue
        if kind == "op":
            minus_at = start if stmt[start] == "-" and ctx else -1
            ctx = True
            prev_word = ""
            continue
        minus_at = -1
        if kind == "ident":
            word = stmt[start : m.end()]
            ctx = word.upper() in _UPPER_CONTEXT_WORDS
            prev_word = word.lower()
            continue
        if kind == "punct":
            c = stmt[start]
            if c == "(":
                in_typemod = prev_word in _TYPEMOD_WORDS
                typemod.append(in_typemod)
                ctx = True
            elif c == ")":
                if typemod:
                    typemod.pop()
                in_typemod = typemod[-1] if typemod else False
                ctx = False
            else:
                ctx = c in ",["
        else:
            ctx = False
        prev_word = ""
    if not literals:
        return stmt, ()
    parts.append(stmt[last:])
    return "".join(parts), tuple(literals)


def _normalize_slow(
    stmt: str, standard_conforming_strings: bool = True
) -> tuple[str, tuple[str, ...]]:
    """normalize() for statements with block comments, one token at a time."""
    parts: list[str] = []
    literals: list[str] = []
    last = 0
    prev_kind = ""  # kind of the previous significant token
    prev_text = ""
    prev2_kind = ""
    prev2_text = ""
    pending_minus = -1  # start of a '-' that may be a unary minus
    typemod_stack: list[bool] = []
    toks = list(_tokens(stmt, 0, standard_conforming_strings))
    for idx, tok in enumerate(toks):
        kind = tok.kind
        if kind in _LITERAL_KINDS and not (typemod_stack and typemod_stack[-1]):
            nxt = toks[idx + 1] if idx + 1 < len(toks) else None
            followed_by_cast = nxt is not None and stmt.startswith("::", nxt.start)
            if _literal_context(prev_kind, prev_text) or followed_by_cast:
                start = tok.start
                if (
                    kind == "number"
                    and prev_kind == "op"
                    and prev_text == "-"
                    and pending_minus == tok.start - 1
                    and _unary_context(prev2_kind, prev2_text)
                ):
                    start = pending_minus
                parts.append(stmt[last:start])
                parts.append("$" + str(PLACEHOLDER_BASE + len(literals)))
                literals.append(stmt[start : tok.end])
                last = tok.end
        text = stmt[tok.start : tok.end]
        if kind == "punct":
            if text == "(":
                typemod_stack.append(prev_kind == "ident" and prev_text.lower() in _TYPEMOD_WORDS)
            elif text == ")" and typemod_stack:
                typemod_stack.pop()
        pending_minus = tok.start if kind == "op" and text == "-" else -1
        prev2_kind, prev2_text = prev_kind, prev_text
        prev_kind, prev_text = kind, text
    if not literals:
        return stmt, ()
    parts.append(stmt[last:])
    return "".join(parts), tuple(literals)


def _literal_context(prev_kind: str, prev_text: str) -> bool:
    if prev_kind == "op":
        return True
    if prev_kind == "punct":
        return prev_text in ("(", ",", "[")
    if prev_kind == "ident":
        return prev_text.upper() in _LITERAL_CONTEXT_WORDS
    return False


def _unary_context(kind: str, text: str) -> bool:
    return kind == "op" or _literal_context(kind, text)


_PLACEHOLDER = re.compile(r"\$(\d+)")


def denormalize(template: str, literals: tuple[str, ...] | list[str]) -> str:
    """Put normalize()'s literals back (placeholders outside strings and comments only)."""
    if not literals:
        return template
    parts: list[str] = []
    last = 0
    for tok in _tokens(template):
        if tok.kind == "param":
            n = int(template[tok.start + 1 : tok.end])
            if n >= PLACEHOLDER_BASE:
                parts.append(template[last : tok.start])
                parts.append(literals[n - PLACEHOLDER_BASE])
                last = tok.end
    parts.append(template[last:])
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# literal values and quoting
# --------------------------------------------------------------------------------------------

_E_BODY_TOKEN = re.compile(
    r"\\(?:x([0-9A-Fa-f]{1,2})|([0-7]{1,3})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))|('')", re.S
)
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape_backslashes(body: str) -> str:
    """Body of an E'' string (or of a '' string when standard_conforming_strings is off)."""

    def repl(m: re.Match[str]) -> str:
        hx, octal, u4, u8, other, quotes = m.groups()
        if quotes is not None:
            return "'"
        if hx is not None:
            return chr(int(hx, 16))
        if octal is not None:
            return chr(int(octal, 8) & 0xFF)
        if u4 is not None:
            return chr(int(u4, 16))
        if u8 is not None:
            return chr(int(u8, 16))
        return _SIMPLE_ESCAPES.get(other, other)

    return _E_BODY_TOKEN.sub(repl, body)


def literal_text(literal: str, standard_conforming_strings: bool = True) -> str | None:
    """The value, as text, of a numeric or string literal as written in SQL; None for anything
    else (bit strings, U&'' strings, unterminated strings)."""
    if not literal:
        return None
    c = literal[0]
    if c == "'":
        if len(literal) < 2 or literal[-1] != "'":
            return None
        body = literal[1:-1]
        if standard_conforming_strings:
            return body.replace("''", "'")
        return _unescape_backslashes(body)
    if c in "eE" and literal[1:2] == "'":
        if len(literal) < 3 or literal[-1] != "'":
            return None
        return _unescape_backslashes(literal[2:-1])
    if c == "$":
        m = _DOLLAR_OPEN.match(literal)
        if not m or not literal.endswith(m.group()) or len(literal) < 2 * len(m.group()):
            return None
        return literal[m.end() : len(literal) - len(m.group())]
    sign = ""
    if c in "+-":
        sign, literal = ("-" if c == "-" else ""), literal[1:].lstrip()
    if _NUMBER.fullmatch(literal):
        if literal[:2].lower() in ("0x", "0o", "0b"):
            return sign + str(int(literal.replace("_", ""), 0))
        return sign + literal.replace("_", "")
    return None


# One pass each; proxy.rewrite.scan caches both per statement (the hot path uses that).
normalize = normalize_uncached
classify = classify_uncached
