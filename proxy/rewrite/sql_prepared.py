"""SQL-level prepared statements: the parts of `PREPARE name [(types)] AS stmt`, of
`EXECUTE name [(args)]` and the name of `DEALLOCATE [PREPARE] name | ALL`, folded like
PostgreSQL folds them."""

from __future__ import annotations

from typing import NamedTuple

from proxy.rewrite import lexer
from proxy.sqlnames import fold_identifier, identifier_value

__all__ = [
    "SqlExecute",
    "SqlPrepare",
    "literal_argument",
    "sql_execute_parts",
    "sql_prepare_body",
    "sql_prepare_parts",
    "sql_prepared_name",
]


class SqlPrepare(NamedTuple):
    name: str
    types: tuple[str, ...]  # the declared parameter types, as written
    body: str
    n_params: int  # how many arguments each EXECUTE passes: max(declared, highest $n)


class SqlExecute(NamedTuple):
    name: str
    args: tuple[str, ...]  # each argument expression, as written


def _name(kind: str, text: str) -> str | None:
    try:
        if kind == "ident":
            return fold_identifier(text)
        if kind == "qident" and text.startswith('"'):
            return identifier_value(text)
    except ValueError:
        pass
    return None


def _list(stmt: str, toks: list[lexer._Tok], i: int) -> tuple[list[str], int] | None:
    """The comma-separated items of the parenthesised list opening at toks[i], and the index
    after its closing parenthesis; None when it does not close."""
    items: list[str] = []
    depth = 0
    start = toks[i].end
    for j in range(i, len(toks)):
        text = stmt[toks[j].start : toks[j].end]
        if text in ("(", "["):
            depth += 1
        elif text in (")", "]"):
            depth -= 1
            if depth == 0:
                item = stmt[start : toks[j].start].strip()
                if item or items:
                    items.append(item)
                return items, j + 1
        elif text == "," and depth == 1:
            items.append(stmt[start : toks[j].start].strip())
            start = toks[j].end
    return None


def sql_prepare_parts(stmt: str, scs: bool = True) -> SqlPrepare | None:
    """The parts of a PREPARE; None for anything else (PREPARE TRANSACTION 'x', a PREPARE the
    lexer cannot read)."""
    toks = list(lexer._tokens(stmt, 0, scs))
    if len(toks) < 3 or stmt[toks[0].start : toks[0].end].upper() != "PREPARE":
        return None
    name = _name(toks[1].kind, stmt[toks[1].start : toks[1].end])
    if name is None:
        return None
    i = 2
    types: tuple[str, ...] = ()
    if stmt[toks[i].start : toks[i].end] == "(":
        found = _list(stmt, toks, i)
        if found is None or not found[0] or any(not t for t in found[0]):
            return None
        types, i = tuple(found[0]), found[1]
    if (
        i >= len(toks)
        or toks[i].kind != "ident"
        or stmt[toks[i].start : toks[i].end].upper() != "AS"
    ):
        return None
    body_toks = toks[i + 1 :]
    highest = max(
        (int(stmt[t.start + 1 : t.end]) for t in body_toks if t.kind == "param"), default=0
    )
    body = stmt[toks[i].end :].strip()
    return SqlPrepare(name, types, body, max(highest, len(types)))


def sql_prepare_body(stmt: str, scs: bool = True) -> tuple[str, str] | None:
    """(name, the prepared statement's text) of a PREPARE; None for anything else."""
    found = sql_prepare_parts(stmt, scs)
    return None if found is None else (found.name, found.body)


def sql_execute_parts(stmt: str, scs: bool = True) -> SqlExecute | None:
    """The name and arguments of `EXECUTE name [(args)]`; None when it has anything else."""
    toks = list(lexer._tokens(stmt, 0, scs))
    if len(toks) < 2 or stmt[toks[0].start : toks[0].end].upper() != "EXECUTE":
        return None
    name = _name(toks[1].kind, stmt[toks[1].start : toks[1].end])
    if name is None:
        return None
    args: tuple[str, ...] = ()
    i = 2
    if i < len(toks) and stmt[toks[i].start : toks[i].end] == "(":
        found = _list(stmt, toks, i)
        if found is None or any(not a for a in found[0]):
            return None
        args, i = tuple(found[0]), found[1]
    while i < len(toks) and stmt[toks[i].start : toks[i].end] == ";":
        i += 1
    return SqlExecute(name, args) if i == len(toks) else None


def literal_argument(arg: str, scs: bool = True) -> str | None:
    """The value, as text, of an EXECUTE argument that is a plain string or numeric literal
    (a sign allowed): the key it pins is then known. None for any other expression (a cast
    may change the value: `'1.6'::numeric` into an int parameter is 2)."""
    toks = list(lexer._tokens(arg, 0, scs))
    if not toks or toks[-1].kind not in ("string", "estring", "dollar", "number"):
        return None
    if len(toks) == 2 and not (toks[0].kind == "op" and arg[toks[0].start] in "+-"):
        return None
    if len(toks) > 2 or (len(toks) == 2 and toks[1].kind != "number"):
        return None
    return lexer.literal_text(arg.strip(), scs)


def sql_prepared_name(stmt: str, scs: bool = True) -> str | None:
    """The statement name of an EXECUTE or DEALLOCATE ('all' for DEALLOCATE ALL)."""
    toks = lexer._tokens(stmt, 0, scs)
    head = next(toks, None)
    if head is None:
        return None
    for tok in toks:
        text = stmt[tok.start : tok.end]
        if tok.kind == "ident" and text.upper() == "PREPARE":
            continue  # DEALLOCATE PREPARE name
        return _name(tok.kind, text)
    return None
