"""Rewritten SQL laid out for reading: the text itself is kept, only line breaks are added
(before WHERE and RETURNING, before every AND/OR, indented by parenthesis depth, and after a
comma once a line grows past `width`)."""

from __future__ import annotations

_CLAUSES = (" WHERE ", " RETURNING ")
_JOINS = (" AND ", " OR ")


def format_sql(sql: str, indent: str = "  ", width: int = 100) -> list[str]:
    lines: list[str] = []
    current: list[str] = []
    depth, quote, i = 0, "", 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
            i += 1
            continue
        breaks = (_CLAUSES if depth == 0 else ()) + _JOINS
        word = next((w for w in breaks if sql.startswith(w, i)), None)
        if word is not None:
            lines.append("".join(current))
            level = 0 if word in _CLAUSES else depth + 1
            current = [indent * level, word.strip(), " "]
            i += len(word)
            continue
        if ch == "," and sql.startswith(" ", i + 1) and sum(map(len, current)) > width:
            current.append(ch)
            lines.append("".join(current))
            current = [indent * (depth + 1)]
            i += 2
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        current.append(ch)
        i += 1
    lines.append("".join(current))
    return [line.rstrip() for line in lines if line.strip()]
