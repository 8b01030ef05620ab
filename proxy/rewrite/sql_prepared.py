"""SQL-level prepared statements: the name and body of `PREPARE name [(types)] AS stmt`, the
name of `EXECUTE name [(args)]` and `DEALLOCATE [PREPARE] name | ALL`, folded like
PostgreSQL folds them."""

from __future__ import annotations

from proxy.rewrite import lexer
from proxy.sqlnames import fold_identifier, identifier_value

__all__ = ["sql_prepare_body", "sql_prepared_name"]


def _name(kind: str, text: str) -> str | None:
    try:
        if kind == "ident":
            return fold_identifier(text)
        if kind == "qident" and text.startswith('"'):
            return identifier_value(text)
    except ValueError:
        pass
    return None


def sql_prepare_body(stmt: str, scs: bool = True) -> tuple[str, str] | None:
    """(name, the prepared statement's text) of a PREPARE; None for anything else (PREPARE
    TRANSACTION 'x', a PREPARE the lexer cannot read)."""
    toks = lexer._tokens(stmt, 0, scs)
    head = next(toks, None)
    if head is None or stmt[head.start : head.end].upper() != "PREPARE":
        return None
    tok = next(toks, None)
    name = _name(tok.kind, stmt[tok.start : tok.end]) if tok is not None else None
    if name is None:
        return None
    depth = 0
    for tok in toks:
        text = stmt[tok.start : tok.end]
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth == 0 and tok.kind == "ident" and text.upper() == "AS":
            return name, stmt[tok.end :].strip()
        elif depth == 0:
            return None
    return None


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
