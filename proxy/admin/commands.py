"""The console's commands: their grammar, their (stable, documented) columns, and how each
is answered by an `Operations` object (proxy.admin.operations)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from proxy.admin.results import Column, ResultSet, count, text


class CommandError(Exception):
    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


class Operations(Protocol):
    """What the console may read of and do to the running proxy."""

    def rules(self) -> list[tuple]: ...
    def sessions(self) -> list[tuple]: ...
    def conflicts(self) -> list[tuple]: ...
    def stats(self) -> list[tuple]: ...
    def config(self) -> list[tuple]: ...
    def reload(self) -> list[tuple]: ...  # raises CommandError when the rules are refused
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # as listed by SHOW HELP: "SHOW RULES"
    columns: tuple[Column, ...]
    summary: str

    def run(self, ops: Operations) -> ResultSet:
        verb = self.name.split()[-1].lower()
        if self.name == "SHOW HELP":
            return ResultSet(self.columns, [(c.name, c.summary) for c in COMMANDS.values()])
        if self.name.startswith("SHOW "):
            return ResultSet(self.columns, getattr(ops, verb)())
        if self.columns:
            return ResultSet(self.columns, getattr(ops, verb)(), tag=self.name)
        getattr(ops, verb)()
        return ResultSet((), tag=self.name)


def _command(name: str, summary: str, *columns: Column) -> Command:
    return Command(name, tuple(columns), summary)


# Column names and order are an interface (README "Admin console"): add, never rename.
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        _command("SHOW HELP", "this list", text("command"), text("description")),
        _command(
            "SHOW RULES",
            "rules version and each table's state per database",
            text("version"),
            text("database"),
            text("table"),
            text("mode"),
            text("strategy"),
            text("state"),
            text("reason"),
        ),
        _command(
            "SHOW SESSIONS",
            "client connections of this process",
            text("client"),
            text("user"),
            text("database"),
            text("application"),
            text("state"),
            count("rows_remembered"),
            count("connected_seconds"),
        ),
        _command(
            "SHOW CONFLICTS",
            "the most recent conflicts, newest first",
            text("time"),
            text("table"),
            text("key"),
            text("kind"),
            text("columns"),
            text("audit"),
            text("client"),
            text("user"),
            text("database"),
            text("application"),
        ),
        _command(
            "SHOW STATS",
            "writes per table: checked, unverified by reason, conflicts",
            text("table"),
            count("checked"),
            count("unverified"),
            text("unverified_reasons"),
            count("conflicts"),
            count("audit_conflicts"),
            count("unapplied"),
        ),
        _command("SHOW CONFIG", "settings in force", text("setting"), text("value")),
        _command(
            "RELOAD",
            "reload rule files and TLS certificates",
            text("rules_version"),
            text("result"),
        ),
        _command("PAUSE", "hold new transactions until RESUME"),
        _command("RESUME", "let held transactions go"),
        _command("SHUTDOWN", "drain and stop, as SIGTERM"),
    )
}

_SPACES = re.compile(r"\s+")


def parse_command(sql: str) -> Command | None:
    """The command one statement names (case and spacing free, a trailing ';' allowed);
    None for an empty statement; CommandError for anything else."""
    words = _SPACES.sub(" ", sql.strip().rstrip(";").strip()).upper()
    if not words:
        return None
    found = COMMANDS.get(words)
    if found is None:
        shown = sql.strip()
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise CommandError(
            "42601",
            f"optimist console: unknown command: {shown}",
            detail="Commands: " + ", ".join(COMMANDS) + ".",
        )
    return found


def split_statements(sql: str) -> list[str]:
    """A simple Query's statements (console commands hold no quotes or semicolons)."""
    parts = [p for p in sql.split(";")]
    if len(parts) > 1 and not parts[-1].strip():
        parts.pop()
    return parts
