"""Prometheus metrics of one proxy process (served by proxy.http_endpoint).

Labels are bounded: table names come from the rule files, reasons and kinds from fixed sets;
no keys, values or SQL text ever become labels.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy import __version__, build


class Metrics:
    """Every metric of one proxy process.

    With `--workers N` each worker process keeps its own values in prometheus-client's
    multiprocess files and the supervisor serves their aggregate; gauges then say how they
    combine across processes.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.conflicts = Counter(
            "optimist_conflicts",
            "Writes refused because the row changed since this session read it",
            ["table", "kind"],
            registry=r,
        )
        self.audit_conflicts = Counter(
            "optimist_audit_conflicts",
            "Conflicts audit-mode rules let through",
            ["table", "kind"],
            registry=r,
        )
        self.checked_writes = Counter(
            "optimist_checked_writes", "Writes sent with an optimistic check", ["table"], registry=r
        )
        self.unverified_writes = Counter(
            "optimist_unverified_writes",
            "Writes to protected tables that passed without a check",
            ["table", "reason"],
            registry=r,
        )
        self.unparsed_statements = Counter(
            "optimist_unparsed_statements",
            "Statements that "
            "might write a protected table but could not be "
            "parsed: relayed untouched",
            registry=r,
        )
        self.unapplied_writes = Counter(
            "optimist_unapplied_writes",
            "Checked writes that matched "
            "no row without a conflict (a trigger or row-level "
            "security kept them out)",
            ["table"],
            registry=r,
        )
        self.client_connections = Gauge(
            "optimist_client_connections",
            "Open client connections",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.client_connections_total = Counter(
            "optimist_client_connections_opened", "Client connections accepted", registry=r
        )
        self.server_connections = Gauge(
            "optimist_server_connections",
            "Open connections to PostgreSQL",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.server_connections_total = Counter(
            "optimist_server_connections_opened", "Connections opened to PostgreSQL", registry=r
        )
        self.upstream_up = Gauge(
            "optimist_upstream_up",
            "1 if the last connection attempt to PostgreSQL succeeded",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.upstream_up.set(1)
        self.statements = Counter(
            "optimist_statements",
            "Statements by type (a prepared statement counts at each execution)",
            ["type"],
            registry=r,
        )
        self.bytes_total = Counter("optimist_bytes", "Bytes relayed", ["direction"], registry=r)
        self.rule_reloads = Counter(
            "optimist_rule_reloads", "Rule loads by result", ["result"], registry=r
        )
        # an info-style gauge (1 for the version in force) rather than Info, which
        # prometheus-client cannot aggregate across worker processes
        self.rules_version = Gauge(
            "optimist_rules_version_info",
            "The rules in force",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rules_loaded_at = Gauge(
            "optimist_rules_loaded_timestamp_seconds",
            "When the rules in force were loaded",
            registry=r,
            multiprocess_mode="livemax",
        )
        # 1 for this process's version and build ("compiled (mypyc)" or "pure Python")
        self.build_info = Gauge(
            "optimist_build_info",
            "The optimist version and how its hot path was installed",
            ["version", "build"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(__version__, build()).set(1)
        self.rules_count = Gauge(
            "optimist_rule_tables",
            "Number of table rules in force",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.snapshot_entries = Gauge(
            "optimist_snapshot_entries",
            "Row snapshots held",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.snapshot_evictions = Counter(
            "optimist_snapshot_evictions", "Row snapshots evicted by the memory bounds", registry=r
        )
        self.rewrite_cache = Counter(
            "optimist_rewrite_cache_lookups", "Rewrite cache lookups", ["result"], registry=r
        )
        self.catalog_refreshes = Counter(
            "optimist_catalog_refreshes",
            "Protected tables of a database learned again after its catalog changed, by how "
            "the change was found (ddl: through this proxy; check: the periodic check)",
            ["reason"],
            registry=r,
        )
        for reason in ("ddl", "check"):
            self.catalog_refreshes.labels(reason)
        self._version = None
        self._seen = {"evictions": 0, "hit": 0, "miss": 0}
        self.statement_tally: dict[str, int] = {}
        self.bytes_tally = {"client_to_server": 0, "server_to_client": 0}
        self.query_duration = Histogram(
            "optimist_query_duration_seconds",
            "Time from a client's request to the server's ReadyForQuery",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )

    # ---- called from the hot paths: keep them trivial

    def conflict(self, table: str, kind: str, audit: bool = False) -> None:
        (self.audit_conflicts if audit else self.conflicts).labels(table, kind).inc()

    def checked(self, table: str) -> None:
        self.checked_writes.labels(table).inc()

    def unverified(self, table: str, reason: str) -> None:
        self.unverified_writes.labels(table, reason).inc()

    def unparsed(self) -> None:
        self.unparsed_statements.inc()

    def unapplied(self, table: str) -> None:
        self.unapplied_writes.labels(table).inc()

    def catalog_refreshed(self, reason: str) -> None:
        self.catalog_refreshes.labels(reason).inc()

    def client_connected(self) -> None:
        self.client_connections.inc()
        self.client_connections_total.inc()

    def client_disconnected(self) -> None:
        self.client_connections.dec()

    def statement(self, kind: str) -> None:
        """Per statement: a plain dict increment; `publish()` moves the counts into metrics."""
        tally = self.statement_tally
        tally[kind] = tally.get(kind, 0) + 1

    def publish(self) -> None:
        """Hot-path tallies into Prometheus (a labelled inc costs ~1.5 us, an int += 0.08)."""
        for kind, count in self.statement_tally.items():
            if count:
                self.statements.labels(kind).inc(count)
        self.statement_tally.clear()
        for direction in ("client_to_server", "server_to_client"):
            count = self.bytes_tally[direction]
            if count:
                self.bytes_total.labels(direction).inc(count)
                self.bytes_tally[direction] = 0

    def rules_loaded(self, ruleset, ok: bool) -> None:
        # series exist from the start, so rate() sees their first increase
        for result in ("success", "failure"):
            self.rule_reloads.labels(result)
        self.rule_reloads.labels("success" if ok else "failure").inc()
        if ok and ruleset is not None:
            for rule in ruleset.rules:
                for kind in ("modified", "deleted"):
                    self.conflicts.labels(rule.qualified_name, kind)
                    self.audit_conflicts.labels(rule.qualified_name, kind)
                self.checked_writes.labels(rule.qualified_name)
        if ok and ruleset is not None:
            if self._version is not None and self._version != ruleset.version:
                self.rules_version.labels(self._version).set(0)
            self._version = ruleset.version
            self.rules_version.labels(ruleset.version).set(1)
            self.rules_loaded_at.set(ruleset.loaded_at or time.time())
            self.rules_count.set(len(ruleset.rules))

    def sample_state(self, budget, cache) -> None:
        """Copy the enforcement's own counters into metrics (called once a second)."""
        self.snapshot_entries.set(budget.used)
        seen = self._seen
        for key, now, counter in (
            ("evictions", budget.evictions, self.snapshot_evictions),
            ("hit", cache.hits, self.rewrite_cache.labels("hit")),
            ("miss", cache.misses, self.rewrite_cache.labels("miss")),
        ):
            if now > seen[key]:
                counter.inc(now - seen[key])
                seen[key] = now


def multiprocess_registry() -> CollectorRegistry:
    """The aggregate of every worker's metrics (PROMETHEUS_MULTIPROC_DIR must be set)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
