"""Driving the real Session and locking logic with the bytes PostgreSQL would send: no socket,
no server process. The catalog and the guard functions are answered as PostgreSQL answers the
proxy's own bootstrap query; everything else is given by the test, message by message."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

from proxy.catalog import CATALOG_COLUMNS
from proxy.config import Settings
from proxy.locking import LockingService
from proxy.locking.settings import INITIAL_SQL
from proxy.rules.loader import load_rules
from proxy.session import Session
from proxy.wire import messages as m
from proxy.wire.framing import frame
from proxy.wire.startup import parse_startup

# oid, name, [(column, type oid, type name, in primary key)]
TABLES = {
    "accounts": (
        16400,
        [
            ("id", 23, "integer", True),
            ("owner", 25, "text", False),
            ("balance", 1700, "numeric(14,2)", False),
            ("version", 23, "integer", False),
        ],
    ),
    "audited": (
        16410,
        [
            ("id", 23, "integer", True),
            ("note", 25, "text", False),
            ("version", 23, "integer", False),
        ],
    ),
    "strict": (
        16420,
        [
            ("id", 23, "integer", True),
            ("note", 25, "text", False),
            ("version", 23, "integer", False),
        ],
    ),
}

RULES = """\
version: 1
tables:
  - table: accounts
    strategy: version
    version_column: version
  - table: audited
    strategy: version
    version_column: version
    mode: audit
  - table: strict
    strategy: version
    version_column: version
    unknown_original: reject
"""


def catalog_rows(names=tuple(TABLES)) -> list[list[str]]:
    """catalog_query() rows, as PostgreSQL returns them, for the named tables."""
    rows = []
    for name in names:
        oid, columns = TABLES[name]
        for attnum, (column, type_oid, type_name, pk) in enumerate(columns, 1):
            rows.append(
                [
                    "public",
                    name,
                    str(oid),
                    str(attnum),
                    column,
                    str(type_oid),
                    type_name,
                    "t" if pk else "f",
                    "t",
                    "t",
                    str(type_oid),
                ]
            )
    return rows


def bootstrap_response(*, catalog: bool = True, guards: bool = True, status=b"I") -> bytes:
    """The server's answer to the proxy's bootstrap query (catalog and/or guard functions)."""
    out = b""
    if catalog:
        rows = catalog_rows()
        out += m.encode_row_description(
            [m.Field(n.encode(), 0, 0, 25, -1, -1, 0) for n in CATALOG_COLUMNS]
        )
        for row in rows:
            out += m.encode_data_row([v.encode() for v in row])
        out += complete(b"SELECT %d" % len(rows))
    if guards:
        out += complete(b"CREATE FUNCTION") * 4
    return out + ready(status)


class RecordingMetrics:
    """Our own metrics interface (proxy.metrics.Metrics), recording what it is told."""

    def __init__(self) -> None:
        self.counts: Counter[tuple] = Counter()

    def checked(self, table: str) -> None:
        self.counts["checked", table] += 1

    def unverified(self, table: str, reason: str) -> None:
        self.counts["unverified", table, reason] += 1

    def unparsed(self) -> None:
        self.counts["unparsed",] += 1

    def unapplied(self, table: str) -> None:
        self.counts["unapplied", table] += 1

    def conflict(self, table: str, kind: str, audit: bool = False) -> None:
        self.counts["conflict", table, kind, audit] += 1

    def rules_loaded(self, ruleset, ok: bool) -> None:
        self.counts["rules_loaded", ok] += 1

    def of(self, *what) -> int:
        return self.counts[what]


def write_rules(directory: Path, text: str = RULES) -> Path:
    path = directory / "rules.yaml"
    path.write_text(text)
    return path


def make_service(rules_path: Path, metrics: RecordingMetrics) -> LockingService:
    paths = [str(rules_path)]
    return LockingService(Settings(rules=paths), load_rules(paths), metrics=metrics)


# ---------------------------------------------------------------- server messages


def ready(status: bytes = b"I") -> bytes:
    return frame(b"Z", status)


def complete(tag: bytes) -> bytes:
    return frame(b"C", tag + b"\x00")


PARSE_COMPLETE = frame(b"1", b"")
BIND_COMPLETE = frame(b"2", b"")


def row_description(table: str, columns, fmt: int = 0) -> bytes:
    """A RowDescription of plain column references to `table`, as PostgreSQL describes them."""
    oid, all_columns = TABLES[table]
    by_name = {c[0]: (attnum, c[1]) for attnum, c in enumerate(all_columns, 1)}
    fields = []
    for name in columns:
        attnum, type_oid = by_name[name]
        fields.append(m.Field(name.encode(), oid, attnum, type_oid, -1, -1, fmt))
    return m.encode_row_description(fields)


def data_row(*values) -> bytes:
    return m.encode_data_row(list(values))


def int4(n: int) -> bytes:
    return struct.pack("!i", n)


def error_fields(severity: str = "ERROR", **fields: str) -> dict[str, str]:
    return {"S": severity, "V": severity, **fields}


def conflict_fields(table="public.accounts", key=1, read=3, current=4, *, audit=False) -> dict:
    """What the guard function raises (enforce: ErrorResponse; audit: NoticeResponse)."""
    detail = json.dumps(
        {
            "table": table,
            "key": {"id": key},
            "kind": "modified",
            "columns": {"version": {"read": read, "current": current, "attempted": None}},
        }
    )
    message = (
        f"optimistic lock conflict: row (id)=({key}) of {table} was modified by another session"
    )
    function = "optimist_modified_audit" if audit else "optimist_modified"
    severity = "NOTICE" if audit else "ERROR"
    return {
        "S": severity,
        "V": severity,
        "C": "00000" if audit else "40001",
        "M": ("optimist audit: " if audit else "") + message,
        "D": detail,
        "H": "Re-read the row and retry the transaction.",
        "W": f"PL/pgSQL function pg_temp_3.{function}(text,jsonb) line 27 at RAISE",
        "F": "pl_exec.c",
        "L": "3911",
        "R": "exec_stmt_raise",
    }


def error(fields: dict[str, str]) -> bytes:
    return m.encode_fields(b"E", fields)


def notice(fields: dict[str, str]) -> bytes:
    return m.encode_fields(b"N", fields)


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each message of a byte stream."""
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("!I", data[pos + 1 : pos + 5])
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


# ---------------------------------------------------------------- the session


def startup_packet(user: bytes = b"alice", database: bytes = b"shop") -> bytes:
    body = struct.pack("!I", 196608) + b"user\x00" + user + b"\x00database\x00" + database
    body += b"\x00\x00"
    return struct.pack("!I", len(body) + 4) + body


AUTH_OK = (
    frame(b"R", struct.pack("!i", 0))
    + frame(b"S", b"client_encoding\x00UTF8\x00")
    + frame(b"S", b"standard_conforming_strings\x00on\x00")
    + frame(b"K", struct.pack("!i", 77) + b"secr")
    + ready()
)


class Wire:
    """A Session with its locking logic, fed bytes from both sides."""

    def __init__(self, service: LockingService) -> None:
        self.service = service
        self.session = Session(parse_startup(startup_packet()), locking_for=service.locking_for)
        self.session.server_data(AUTH_OK)
        first = self.sent_to_server()
        if INITIAL_SQL.encode() in first[0][1]:
            # the printing settings PostgreSQL does not report, asked once per session
            fields = [m.Field(b"current_setting", 0, 0, 25, -1, -1, 0)] * 3
            self.session.server_data(
                m.encode_row_description(fields)
                + m.encode_data_row([b"1", b"hex", b"C"])
                + complete(b"SELECT 1")
                + ready()
            )
            first = self.sent_to_server()
        self.bootstrap_query = first
        self.server(bootstrap_response())

    @property
    def locking(self):
        return self.session.locking

    def sent_to_server(self) -> list[tuple[bytes, bytes]]:
        to_server, _ = self.session.take_output()
        return split_messages(b"".join(to_server))

    def client(self, *messages: bytes) -> list[tuple[bytes, bytes]]:
        """Feed client messages; returns what the proxy sent the server."""
        self.session.client_data(b"".join(messages))
        to_server, to_client = self.session.take_output()
        assert not to_client
        return split_messages(b"".join(to_server))

    def server(self, *messages: bytes) -> list[tuple[bytes, bytes]]:
        """Feed server messages; returns what the client was sent."""
        self.session.server_data(b"".join(messages))
        to_server, to_client = self.session.take_output()
        sent = split_messages(b"".join(to_server))
        tables = self.locking.tables
        views_sql = tables.views_sql() if tables is not None else None
        views = [
            (t, body)
            for t, body in sent
            if t == b"Q" and views_sql is not None and m.decode_query(body).decode() == views_sql
        ]
        if views:
            # after a new catalog, the proxy asks for the simple views over the protected
            # tables: there are none here
            self.session.server_data(m.encode_row_description([]) + complete(b"SELECT 0") + ready())
            more, more_client = self.session.take_output()
            sent = [x for x in sent if x not in views] + split_messages(b"".join(more))
            to_client += more_client
        self.pending_to_server = sent
        return split_messages(b"".join(to_client))

    def query(self, sql: str) -> str:
        """Send a simple Query; returns the SQL the server receives."""
        sent = self.client(m.encode_query(sql.encode()))
        assert [t for t, _ in sent] == [b"Q"], sent
        return m.decode_query(sent[0][1]).decode()

    def version_read(self, table: str, key: int):
        """The version the session remembers for a row (None: not known)."""
        tables = self.locking.tables
        protected = tables.by_name[("public", table)]
        row = self.locking.knowledge.store_for(protected).get((protected.oid, (key,)))
        return None if row is None else row["version"].as_text()

    def read(self, table: str, key: int, version: int) -> None:
        """A simple SELECT of one row answered by the server: the session reads it."""
        self.query(f"SELECT id, version FROM {table} WHERE id = {key}")
        got = self.server(
            row_description(table, ["id", "version"]),
            data_row(str(key).encode(), str(version).encode()),
            complete(b"SELECT 1"),
            ready(self.session.transaction_status),
        )
        assert [t for t, _ in got] == [b"T", b"D", b"C", b"Z"]
