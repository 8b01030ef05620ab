"""One console connection after its startup, sans-IO: fed the client's bytes, it returns the
proxy's answers (simple Query, and the extended protocol's Parse/Bind/Describe/Execute/Sync
for drivers; statements may be named, none takes parameters)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from proxy.admin import results as r
from proxy.admin.commands import Command, CommandError, Operations, parse_command, split_statements
from proxy.wire import messages as m
from proxy.wire.framing import FRONTEND_TYPES, MessageReader, ProtocolViolation

log = logging.getLogger("optimist.admin")

# the console's requests are a few bytes; anything larger is not a console command
MAX_CONSOLE_MESSAGE = 1 << 20


@dataclass(slots=True)
class _Portal:
    command: Command | None  # None: an empty statement
    formats: list[int]


class Console:
    def __init__(self, ops: Operations, encoding: str = "utf-8") -> None:
        self.ops = ops
        self.encoding = encoding
        self.reader = MessageReader(MAX_CONSOLE_MESSAGE, FRONTEND_TYPES)
        self.statements: dict[bytes, Command | None] = {}
        self.portals: dict[bytes, _Portal] = {}
        # after an error in the extended protocol, messages up to Sync are skipped
        self.skipping = False
        self.closing = False  # the client sent Terminate

    def feed(self, data: bytes) -> list[bytes]:
        """Raises ProtocolViolation on a malformed stream (the relay closes with 08P01)."""
        reader = self.reader
        reader.feed(data)
        out: list[bytes] = []
        pos = 0
        for mtype, start, end in reader.messages():
            body = bytes(reader.buffer[start:end])
            pos = end
            if mtype == b"X":
                self.closing = True
                break
            if mtype == b"Q":
                self._query(body, out)
            elif mtype == b"S":
                self.skipping = False
                self.portals.pop(b"", None)
                out.append(m.ready_for_query(b"I"))
            elif not self.skipping:
                try:
                    self._extended(mtype, body, out)
                except CommandError as exc:
                    self.skipping = True
                    out.append(_error(exc))
        reader.consume(pos)
        return out

    # ---------------------------------------------------------------- simple protocol

    def _query(self, body: bytes, out: list[bytes]) -> None:
        sql = m.decode_query(body).decode(self.encoding, "replace")
        self.skipping = False
        try:
            statements = split_statements(sql)
            if not any(s.strip() for s in statements):
                out.append(r.EMPTY_QUERY)
            for statement in statements:
                command = parse_command(statement)
                if command is None:
                    continue
                result = self._run(command)
                if result.columns:
                    out.append(r.row_description(result.columns))
                out.extend(r.data_rows(result, [], self.encoding))
                out.append(r.command_complete(result.command_tag()))
        except CommandError as exc:
            out.append(_error(exc))
        out.append(m.ready_for_query(b"I"))

    # ---------------------------------------------------------------- extended protocol

    def _extended(self, mtype: bytes, body: bytes, out: list[bytes]) -> None:
        if mtype == b"P":
            parse = m.decode_parse(body)
            self.statements[parse.name] = parse_command(
                parse.query.decode(self.encoding, "replace")
            )
            out.append(r.PARSE_COMPLETE)
        elif mtype == b"B":
            bind = m.decode_bind(body)
            if bind.statement not in self.statements:
                raise _missing("prepared statement", bind.statement)
            if bind.params:
                raise CommandError("08P01", "optimist console: commands take no parameters")
            self.portals[bind.portal] = _Portal(
                self.statements[bind.statement], bind.result_formats
            )
            out.append(r.BIND_COMPLETE)
        elif mtype == b"D":
            kind, name = m.decode_describe_or_close(body)
            if kind == b"S":
                if name not in self.statements:
                    raise _missing("prepared statement", name)
                command, formats = self.statements[name], []
                out.append(r.NO_PARAMETERS)
            else:
                portal = self._portal(name)
                command, formats = portal.command, portal.formats
            if command is not None and command.columns:
                out.append(r.row_description(command.columns, formats))
            else:
                out.append(m.NO_DATA)
        elif mtype == b"E":
            portal_name, _ = m.decode_execute(body)
            portal = self._portal(portal_name)
            if portal.command is None:
                out.append(r.EMPTY_QUERY)
                return
            result = self._run(portal.command)
            out.extend(r.data_rows(result, portal.formats, self.encoding))
            out.append(r.command_complete(result.command_tag()))
        elif mtype == b"C":
            kind, name = m.decode_describe_or_close(body)
            (self.statements if kind == b"S" else self.portals).pop(name, None)
            out.append(r.CLOSE_COMPLETE)
        elif mtype == b"H":
            pass  # every answer is already written
        else:  # FunctionCall, COPY data: nothing here to call or copy into
            raise CommandError("0A000", "optimist console: only console commands are supported")

    def _portal(self, name: bytes) -> _Portal:
        portal = self.portals.get(name)
        if portal is None:
            raise _missing("portal", name)
        return portal

    def _run(self, command: Command):
        try:
            return command.run(self.ops)
        except CommandError:
            raise
        except Exception:
            log.exception("console command %s failed", command.name)
            raise CommandError("XX000", f"optimist console: {command.name} failed") from None


def _missing(what: str, name: bytes) -> CommandError:
    shown = name.decode("utf-8", "replace")
    if not shown:
        return CommandError("26000", f"unnamed {what} does not exist")
    return CommandError(
        "26000" if "statement" in what else "34000", f'{what} "{shown}" does not exist'
    )


def _error(exc: CommandError) -> bytes:
    return m.error_response(exc.sqlstate, exc.message, detail=exc.detail)


__all__ = ["Console", "ProtocolViolation"]
