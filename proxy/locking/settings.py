"""The printing settings of a session, as the values it reads are printed under them.

A text value is compared, at the write, in the domain it was read in: what the server prints
now for the row's value under the settings of the read (proxy.values.ReadSettings). The
reported settings come from ParameterStatus (always exact: the server reports every change,
rollbacks included). extra_float_digits, bytea_output and lc_monetary are not reported: their
values at the start come from the bootstrap query, and the session's own SET / RESET are
followed. What the proxy cannot follow makes a setting unknown (then the writes of rows read
under it are counted unverified, `settings_unknown`, never compared by guess):

* a SET inside a transaction block, or SET LOCAL: a rollback (to a savepoint) may undo it;
* set_config() anywhere in a statement.

A later plain SET or RESET outside a transaction makes the setting known again. Behind a
transaction pooler (pooled) a session-level SET lands on one server connection only (the
next transaction may run on another): it makes the setting unknown too, RESET known again.
"""

from __future__ import annotations

import re

from proxy.session.info import SessionInfo
from proxy.values import REPORTED_SETTINGS, TRACKED_SETTINGS, ReadSettings

INITIAL_SQL = "SELECT " + ", ".join(f"current_setting('{name}')" for name in TRACKED_SETTINGS)

_TRACKED = {name.lower(): name for name in TRACKED_SETTINGS}
# SET [SESSION | LOCAL] name {TO | =} value | RESET name | RESET ALL
_SET = re.compile(
    r"\s*(?:(set)\s+(?:(session)\s+|(local)\s+)?(\w+)\s*(?:to|=)\s*(.*?)\s*;?\s*"
    r"|(reset)\s+(\w+)\s*;?\s*)\Z",
    re.I | re.S,
)
_SET_CONFIG = re.compile(r"set_config", re.I)
_MENTIONS = re.compile("|".join(TRACKED_SETTINGS) + r"|\ball\b|discard", re.I)


class SessionSettings:
    def __init__(self, info: SessionInfo, *, pooled: bool = False) -> None:
        self.info = info
        self.pooled = pooled
        # tracked setting -> its value, None while unknown (all unknown until bootstrap)
        self.tracked: dict[str, str | None] = dict.fromkeys(TRACKED_SETTINGS)
        self.initial: dict[str, str | None] = dict(self.tracked)
        # before the current request's own SETs: a failed request (its implicit transaction
        # rolled back) undoes them
        self._before: dict[str, str | None] | None = None
        self._current: ReadSettings | None = None
        self._current_key: tuple[object, ...] = ()

    def learned_initial(self, values: list[str | None]) -> None:
        """The bootstrap's answer to INITIAL_SQL (also what RESET returns to)."""
        for name, value in zip(TRACKED_SETTINGS, values):
            self.tracked[name] = self.initial[name] = value
        self._current = None

    def current(self) -> ReadSettings:
        """The settings of this moment, one shared object while they do not change."""
        params = self.info.parameters
        key = (
            *(params.get(n) for n in REPORTED_SETTINGS),
            self.info.encoding,
            *self.tracked.values(),
        )
        if self._current is None or key != self._current_key:
            known = [(n, params[n]) for n in REPORTED_SETTINGS if n in params]
            known += [(n, v) for n, v in self.tracked.items() if v is not None]
            unknown = {n for n in REPORTED_SETTINGS if n not in params}
            unknown.update(n for n, v in self.tracked.items() if v is None)
            self._current = ReadSettings(tuple(known), frozenset(unknown), self.info.encoding)
            self._current_key = key
        return self._current

    def statement(self, sql: str, in_transaction: bool) -> None:
        """A statement the session sent (completed): follow what it does to the settings."""
        if not _MENTIONS.search(sql):
            return
        if _SET_CONFIG.search(sql):
            # set_config(name, ...) with a name we may not be able to read: any tracked one
            for name in TRACKED_SETTINGS:
                if name in sql.lower() or not _literal_only(sql):
                    self.tracked[name] = None
            return
        words = sql.strip().rstrip(";").split()
        if [w.lower() for w in words] in (["reset", "all"], ["discard", "all"]):
            if in_transaction:
                self._unknown(TRACKED_SETTINGS)
            else:
                for name in TRACKED_SETTINGS:
                    self._set(name, self.initial[name])
            return
        found = _SET.match(sql)
        if found is None:
            return
        tracked = _TRACKED.get((found.group(4) or found.group(7) or "").lower())
        if tracked is None:
            return
        name = tracked
        if in_transaction or found.group(3):
            self._unknown((name,))
            return
        value = found.group(5)
        if found.group(6) or value.lower() == "default":
            self._set(name, self.initial[name])
        elif self.pooled:
            self._set(name, None)
        else:
            self._set(name, _setting_value(value))

    def ready(self, failed: bool) -> None:
        """ReadyForQuery 'I': the request's implicit transaction committed, or not."""
        if self._before is not None:
            if failed:
                self.tracked.update(self._before)
            self._before = None

    def _unknown(self, names: tuple[str, ...]) -> None:
        for name in names:
            self.tracked[name] = None

    def _set(self, name: str, value: str | None) -> None:
        if self._before is None:
            self._before = dict(self.tracked)
        self.tracked[name] = value


def _literal_only(sql: str) -> bool:
    """set_config('name', ...) spelled with a literal name (else any setting may change)."""
    return re.search(r"set_config\s*\(\s*'", sql, re.I) is not None


def _setting_value(text: str) -> str | None:
    """The value of `SET x TO <text>` as set_config() takes it back; None when it is not a
    single plain word, number or string (a list, an escape string: not ours to guess)."""
    if re.fullmatch(r"[+-]?[\w.]+", text):
        return text
    if re.fullmatch(r"'(?:[^'\\]|'')*'", text):
        return text[1:-1].replace("''", "'")
    return None
