"""SQL names and literals, spelled and folded exactly as PostgreSQL does (no dependencies).

One place for it because a name folded two ways is a rule silently never applied: PostgreSQL's
downcase_identifier() folds only ASCII A-Z in an unquoted name (`Ärzte` stays `Ärzte`), so
`str.lower()` is wrong for any non-ASCII letter.
"""

from __future__ import annotations

__all__ = [
    "fold_identifier",
    "identifier_value",
    "parse_identifier",
    "quote_e_literal",
    "quote_ident",
    "quote_literal",
    "quote_literal_any",
    "quote_qualified",
    "split_identifiers",
]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# pg_get_keywords() WHERE catcode <> 'U' on PostgreSQL 18: every keyword quote_identifier()
# quotes (reserved, type/function-name and column-name keywords). A newer server may add some:
# quoting more than needed is harmless, fewer is not.
KEYWORDS = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization between bigint binary
    bit boolean both case cast char character check coalesce collate collation column concurrently
    constraint create cross current_catalog current_date current_role current_schema current_time
    current_timestamp current_user dec decimal default deferrable desc distinct do else end except
    exists extract false fetch float for foreign freeze from full grant greatest group grouping
    having ilike in initially inner inout int integer intersect interval into is isnull join json
    json_array json_arrayagg json_exists json_object json_objectagg json_query json_scalar
    json_serialize json_table json_value lateral leading least left like limit localtime
    localtimestamp merge_action national natural nchar none normalize not notnull null nullif
    numeric offset on only or order out outer overlaps overlay placing position precision primary
    real references returning right row select session_user setof similar smallint some substring
    symmetric system_user table tablesample then time timestamp to trailing treat trim true union
    unique user using values varchar variadic verbose when where window with xmlattributes
    xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize
    xmltable""".split()
)

_SAFE_START = frozenset("abcdefghijklmnopqrstuvwxyz_")
_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_0123456789")


def fold_identifier(name: str) -> str:
    """An unquoted identifier as PostgreSQL stores it: ASCII A-Z lowered, nothing else
    (downcase_identifier() in a multibyte encoding such as UTF8)."""
    if name.isascii():
        return name.lower()
    return name.translate(_ASCII_LOWER)


def identifier_value(token: str) -> str:
    """One identifier token as written in SQL (`"Quoted"` or bare) -> the name it denotes.
    No validation: for tokens a lexer already delimited."""
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return fold_identifier(token)


def _is_plain_start(ch: str) -> bool:
    return ch == "_" or ch.isalpha()


def _is_plain_char(ch: str) -> bool:
    return ch in "_$" or ch.isalnum()


def split_identifiers(text: str) -> list[str]:
    """`Public."My Table"` -> ['public', 'My Table']; ValueError saying what is wrong.

    Unquoted names fold like fold_identifier(); quoted names are kept exactly.
    """
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise ValueError(f"unterminated quoted name in {text!r}")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            if not buf:
                raise ValueError(f'empty quoted name "" in {text!r}')
            parts.append("".join(buf))
            i = j + 1
        else:
            j = i
            if j < n and _is_plain_start(text[j]):
                j += 1
                while j < n and _is_plain_char(text[j]):
                    j += 1
            if j == i:
                raise ValueError(
                    f"{text!r} is not a valid name: use letters, digits and _, or quote it "
                    f"in double quotes (inside YAML quotes: '\"{text}\"')"
                )
            parts.append(fold_identifier(text[i:j]))
            i = j
        if i == n:
            return parts
        if text[i] != ".":
            raise ValueError(
                f"{text!r} is not a valid name: unexpected {text[i]!r}; quote it in double "
                f"quotes (inside YAML quotes: '\"{text}\"')"
            )
        i += 1


def parse_identifier(text: str) -> str:
    """One name (a column, a schema) as written: folded, ValueError if it is not one name."""
    parts = split_identifiers(text)
    if len(parts) != 1:
        raise ValueError(f"{text!r} must be a single name, not a dotted one")
    return parts[0]


def quote_ident(name: str) -> str:
    """`name` as PostgreSQL's quote_ident() writes it: bare only when it starts with a-z or _,
    has only a-z, 0-9 and _, and is not a keyword that would need quoting."""
    if name and name[0] in _SAFE_START and _SAFE_CHARS.issuperset(name) and name not in KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(schema: str | None, name: str) -> str:
    return quote_ident(name) if schema is None else quote_ident(schema) + "." + quote_ident(name)


def _no_nul(value: str) -> None:
    if "\x00" in value:
        raise ValueError("PostgreSQL text cannot contain NUL characters")


def quote_literal(value: str, standard_conforming_strings: bool = True) -> str:
    """A string literal for a session whose standard_conforming_strings is as given: '' quoting,
    or E'' with doubled backslashes when scs is off and the value has a backslash."""
    _no_nul(value)
    if standard_conforming_strings or "\\" not in value:
        return "'" + value.replace("'", "''") + "'"
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def quote_e_literal(value: str) -> str:
    """An E'' literal: reads the same whatever standard_conforming_strings is."""
    _no_nul(value)
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def quote_literal_any(value: str) -> str:
    """A literal that reads the same whatever standard_conforming_strings is, for text baked
    into cached SQL (names, JSON): '' quoting unless backslashes, then dollar quoting (keeps
    JSON's own backslashes readable)."""
    _no_nul(value)
    if "\\" not in value:
        return "'" + value.replace("'", "''") + "'"
    tag = "$o$"
    i = 0
    while (value + tag).find(tag) != len(value):  # the first closing tag must be ours
        i += 1
        tag = f"$o{i}$"
    return tag + value + tag
