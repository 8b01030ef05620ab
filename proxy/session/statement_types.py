"""A bounded label per statement for the statements-by-type metric: its first keyword's family."""

from __future__ import annotations

_TYPES = {
    b"SELECT": "select",
    b"VALUES": "select",
    b"TABLE": "select",
    b"SHOW": "select",
    b"INSERT": "insert",
    b"UPDATE": "update",
    b"DELETE": "delete",
    b"MERGE": "merge",
    b"WITH": "with",
    b"COPY": "copy",
    b"BEGIN": "transaction",
    b"START": "transaction",
    b"COMMIT": "transaction",
    b"END": "transaction",
    b"ROLLBACK": "transaction",
    b"ABORT": "transaction",
    b"SAVEPOINT": "transaction",
    b"RELEASE": "transaction",
    b"PREPARE": "transaction",
    b"CREATE": "ddl",
    b"ALTER": "ddl",
    b"DROP": "ddl",
    b"TRUNCATE": "ddl",
    b"COMMENT": "ddl",
    b"GRANT": "ddl",
    b"REVOKE": "ddl",
    b"SET": "set",
    b"RESET": "set",
}


def statement_type(buf: bytes | bytearray | memoryview, start: int) -> str:
    """The label of the statement starting at buf[start]."""
    head = bytes(buf[start : start + 24]).lstrip(b" \t\r\n(")
    word = head.split(None, 1)[0].rstrip(b";").upper() if head else b""
    return _TYPES.get(word, "other")
