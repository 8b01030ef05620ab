"""What console commands read of and do to one running proxy process (ProxyApp)."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from proxy import build
from proxy.admin.commands import CommandError

if TYPE_CHECKING:
    from proxy.config import Settings
    from proxy.locking import LockingService
    from proxy.metrics import Metrics
    from proxy.server import ProxyServer
    from proxy.server.relay import Relay


class RunningProxy(Protocol):
    """What the console needs of the process it runs in (ProxyApp has it), declared here so
    that the console does not depend on the wiring that creates it."""

    settings: Settings
    metrics: Metrics
    server: ProxyServer
    locking: LockingService | None


_STATUS = {b"I": "idle", b"T": "idle in transaction", b"E": "idle in transaction (aborted)"}


class ProxyOperations:
    def __init__(self, app: RunningProxy) -> None:
        self.app = app

    # ---------------------------------------------------------------- SHOW

    def rules(self) -> list[tuple]:
        locking = self.app.locking
        if locking is None:
            return []
        generation = locking.generation
        rows: list[tuple[Any, ...]] = []
        for rule in generation.ruleset.rules:
            if not generation.databases:
                rows.append(
                    (
                        generation.version,
                        None,
                        rule.qualified_name,
                        rule.mode,
                        rule.strategy,
                        "pending",
                        "resolved when a session first connects to a database",
                    )
                )
            for database, tables in sorted(generation.databases.items()):
                schema = rule.schema if rule.schema_explicit else None
                table = generation.table_for(tables, schema, rule.name)
                problems = [
                    p.message
                    for p in tables.problems
                    if (p.file, p.line) == (rule.source_file, rule.source_line)
                ]
                if rule.mode == "off":
                    state = "off"
                elif table is not None:
                    state = "protected"
                else:
                    state = "error"
                    problems = problems or ["not resolved"]
                rows.append(
                    (
                        generation.version,
                        database,
                        table.qualified_name if table is not None else rule.qualified_name,
                        rule.mode,
                        rule.strategy,
                        state,
                        "; ".join(problems) or None,
                    )
                )
        return rows

    def sessions(self) -> list[tuple]:
        now = time.monotonic()
        rows = [_session_row(relay, now) for relay in self.app.server.relays]
        return sorted(rows, key=lambda row: -row[-1])

    def conflicts(self) -> list[tuple]:
        locking = self.app.locking
        if locking is None:
            return []
        return [
            (
                datetime.fromtimestamp(c.at, UTC).isoformat(timespec="milliseconds"),
                c.conflict.table,
                json.dumps(c.conflict.key, default=str),
                c.conflict.kind,
                ", ".join(sorted(c.conflict.columns)),
                "yes" if c.conflict.audit else "no",
                c.client,
                c.user,
                c.database,
                c.application_name,
            )
            for c in reversed(locking.recent_conflicts)
        ]

    def stats(self) -> list[tuple]:
        """Per table, from this process's counters (the ones /metrics serves)."""
        tables: dict[str, dict] = {}

        def table(name: str) -> dict:
            return tables.setdefault(
                name,
                {"checked": 0, "reasons": {}, "conflicts": 0, "audit": 0, "unapplied": 0},
            )

        for family in self.app.metrics.registry.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total") or "table" not in sample.labels:
                    continue
                t = table(sample.labels["table"])
                value = int(sample.value)
                if family.name == "optimist_checked_writes":
                    t["checked"] += value
                elif family.name == "optimist_unverified_writes":
                    reason = sample.labels.get("reason", "")
                    t["reasons"][reason] = t["reasons"].get(reason, 0) + value
                elif family.name == "optimist_conflicts":
                    t["conflicts"] += value
                elif family.name == "optimist_audit_conflicts":
                    t["audit"] += value
                elif family.name == "optimist_unapplied_writes":
                    t["unapplied"] += value
        rows: list[tuple[Any, ...]] = []
        for name, t in sorted(tables.items()):
            reasons = {r: n for r, n in sorted(t["reasons"].items()) if n}
            rows.append(
                (
                    name,
                    t["checked"],
                    sum(reasons.values()),
                    ", ".join(f"{r}={n}" for r, n in reasons.items()) or None,
                    t["conflicts"],
                    t["audit"],
                    t["unapplied"],
                )
            )
        return rows

    def config(self) -> list[tuple]:
        settings = self.app.settings
        rows: list[tuple[Any, ...]] = []
        for f in fields(settings):
            value = getattr(settings, f.name)
            if isinstance(value, list):
                value = ",".join(map(str, value))
            rows.append((f.name, None if value is None else str(value)))
        rows.append(("build", build()))  # not a setting: how the hot path was installed
        return rows

    # ---------------------------------------------------------------- actions

    def reload(self) -> list[tuple]:
        app = self.app
        tls_ok = app.server.load_tls()
        locking = app.locking
        if locking is None:
            result = "no rules" + ("" if tls_ok else "; TLS certificates refused (see the log)")
            return [(None, result)]
        before = locking.generation.version
        if not locking.reload("admin console"):
            raise CommandError(
                "F0000",
                f"optimist: rules reload refused, keeping version {before}",
                detail=locking.last_reload_error,
            )
        after = locking.generation.version
        result = "reloaded" if after != before else "unchanged"
        if not tls_ok:
            result += "; TLS certificates refused, the old ones stay (see the log)"
        return [(after, result)]

    def pause(self) -> None:
        self.app.server.pause()

    def resume(self) -> None:
        self.app.server.resume()

    def shutdown(self) -> None:
        self.app.server.stopping.set()


def _session_row(relay: Relay, now: float) -> tuple:
    session = relay.session
    console = relay.console is not None or relay.console_pending
    info = session.info if session is not None else None
    if console:
        state = "console"
    elif session is None or not session.authenticated:
        state = "connecting"
    elif relay.paused_input:
        state = "paused"
    elif session.busy:
        state = "active"
    else:
        state = _STATUS.get(session.transaction_status, "idle")
    locking = session.locking if session is not None else None
    remembered = locking.remembered_rows() if locking is not None else 0
    admin = relay.proxy.admin
    database = admin.database if console and admin is not None else info and info.database
    return (
        relay.peer,
        info and info.user,
        database,
        info and info.application_name,
        state,
        remembered,
        int(now - relay.opened_at),
    )
