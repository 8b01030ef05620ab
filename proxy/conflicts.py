"""The server-side guard functions, and recognising the conflicts they raise.

A guarded write calls two of these functions (see docs/ARCHITECTURE.md), created per server
connection in pg_temp, or installed once in a schema of their own by `optimist install`
(proxy.guards_installed; named ``<schema>.optimist_...`` then):

* ``pg_temp.optimist_present(existing jsonb[], wanted jsonb[], info text) -> boolean`` STABLE:
  ``existing`` holds the keys of the pinned rows that still exist (its InitPlan locked them),
  ``wanted`` the keys the session read (NULL entries are ignored: rows the session did not
  read). Raises ``deleted`` for the first wanted key that is gone. STABLE with constant/InitPlan
  arguments, so the planner evaluates it once as a One-Time Filter before the scan.
* ``pg_temp.optimist_modified(info text, state jsonb) -> boolean`` VOLATILE (default cost: a
  huge COST would trigger JIT compilation): only reached through ``<checks> OR ...`` when a
  pinned row's checked values differ from what was read. ``state`` is
  ``{"key": {...}, "columns": {col: [read, current, attempted, check passed]}, "own": ..,
  "xmin": ..}``. Raises ``modified`` listing the columns whose check failed (so, whose current
  value differs from the read one), unless the row version is the session's own transaction's
  and ``own`` says the proxy vouches for what was read (proxy.locking.side_effects).
* ``pg_temp.optimist_lock_verified(q text) -> int[]``: runs the proxy's SELECT ... FOR NO KEY
  UPDATE of rows read in this READ COMMITTED transaction that still hold what was read, before
  a write that fires user triggers; returns which (NULL on any error: never the client's).

``info`` is a JSON text literal
``{"table": "schema.name", "schema": .., "name": .., "key": [key columns], "op": ..}``.

The ``_audit`` variants report the same thing as a NOTICE (whatever client_min_messages the
client chose: the functions SET it locally) and return true, so the write goes through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.sqlnames import quote_ident, quote_literal_any

__all__ = [
    "AUDIT_MARKER",
    "CONFLICT_MESSAGE_PREFIX",
    "Conflict",
    "guard_functions_sql",
    "guard_schema_sql",
    "parse_conflict",
    "strip_internal_context",
]

CONFLICT_MESSAGE_PREFIX = "optimistic lock conflict: "
# Audit notices carry this prefix before the conflict message, so they cannot be mistaken for
# an application's own notices nor for an enforced conflict.
AUDIT_MARKER = "optimist audit: "
HINT = "Re-read the row and retry the transaction."

_FUNCTION_NAMES = (
    "optimist_modified",
    "optimist_present",
    "optimist_text",
    "optimist_value",
    "optimist_lock_verified",
)

_SQLSTATE = re.compile(r"[0-9A-Z]{5}\Z")

# Shared PL/pgSQL pieces. %(raise)s becomes the enforce or the audit RAISE statement.
# "(id, region)=(42, eu)" in the table's key order (info -> 'key' lists the key columns: jsonb
# objects do not keep their keys in order).
_KEY_TEXT = (
    "(SELECT '(' || string_agg(c.col, ', ' ORDER BY c.n) || ')=('"
    " || string_agg(coalesce(%s ->> c.col, 'null'), ', ' ORDER BY c.n) || ')'"
    " FROM jsonb_array_elements_text(i -> 'key') WITH ORDINALITY AS c(col, n))"
)

_MODIFIED = """
CREATE OR REPLACE FUNCTION %(schema)s.%(name)s(info text, state jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE %(set)s AS $optimist$
DECLARE
  i jsonb := info::jsonb;
  changed jsonb := '{}';
  col text;
  v jsonb;
  msg text;
  detail text;
  own text := state ->> 'own';
  top bigint;
  x bigint;
BEGIN
  -- the session's own side effect (a trigger of its own write): the row version is its own
  -- transaction's, and the proxy vouches that the row held what was read before that
  -- transaction changed it (proxy.locking.side_effects)
  IF own = 'locked' OR (own = 'read'
                        AND current_setting('transaction_isolation') <> 'read committed') THEN
    top := pg_current_xact_id_if_assigned()::text::bigint;
    x := (state ->> 'xmin')::bigint;
    IF top IS NOT NULL AND x > 2 THEN
      -- xmin is 32 bits: the full id nearest the top-level one (a subtransaction's is later)
      x := x + ((top >> 32) << 32);
      IF x > top + 2147483648 THEN
        x := x - 4294967296;
      ELSIF x < top - 2147483648 THEN
        x := x + 4294967296;
      END IF;
      -- a row version the statement sees whose xmin is in progress is this transaction's
      IF x > 0 AND pg_xact_status(x::text::xid8) = 'in progress' THEN
        RETURN true;
      END IF;
    END IF;
  END IF;
  FOR col, v IN SELECT * FROM jsonb_each(state -> 'columns') LOOP
    -- report the columns whose check failed (v -> 3); without that flag, those another
    -- session changed (read vs current)
    -- (no CASE here: PL/pgSQL ends an IF condition at the first THEN)
    IF (jsonb_array_length(v) > 3 AND (v ->> 3) = 'false')
       OR (jsonb_array_length(v) <= 3 AND (v -> 0) IS DISTINCT FROM (v -> 1)) THEN
      changed := changed || jsonb_build_object(col, jsonb_build_object(
        'read', v -> 0, 'current', v -> 1, 'attempted', v -> 2));
    END IF;
  END LOOP;
  msg := %(prefix)s || 'optimistic lock conflict: row ' || %(key_text)s || ' of '
         || (i ->> 'table') || ' was modified by another session';
  detail := jsonb_build_object('table', i ->> 'table', 'key', state -> 'key',
                               'kind', 'modified', 'columns', changed)::text;
  %(raise)s
END
$optimist$;
"""

_PRESENT = """
CREATE OR REPLACE FUNCTION %(schema)s.%(name)s(existing jsonb[], wanted jsonb[], info text)
RETURNS boolean LANGUAGE plpgsql STABLE %(set)s AS $optimist$
DECLARE
  i jsonb;
  missing jsonb;
  msg text;
  detail text;
BEGIN
  SELECT w INTO missing FROM unnest(wanted) AS w
   WHERE w IS NOT NULL AND NOT (w = ANY (coalesce(existing, '{}'))) LIMIT 1;
  IF missing IS NULL THEN
    RETURN true;
  END IF;
  i := info::jsonb;
  msg := %(prefix)s || 'optimistic lock conflict: row ' || %(key_text_missing)s || ' of '
         || (i ->> 'table') || ' was deleted by another session';
  detail := jsonb_build_object('table', i ->> 'table', 'key', missing,
                               'kind', 'deleted', 'columns', '{}'::jsonb)::text;
  %(raise)s
END
$optimist$;
"""

# Values compared in the domain they were read in (proxy.values.ReadSettings): `settings` is
# {name, value, ...}; each one that differs is set for the call only (set_config local, then
# the previous value back), so the text is exactly what the server printed under them.
_SETTINGS_ON = """
  FOR n IN 1 .. coalesce(array_length(settings, 1), 0) BY 2 LOOP
    IF current_setting(settings[n]) IS DISTINCT FROM settings[n + 1] THEN
      saved := saved || ARRAY[settings[n], current_setting(settings[n])];
      PERFORM set_config(settings[n], settings[n + 1], true);
    END IF;
  END LOOP;"""
_SETTINGS_OFF = """
  FOR n IN 1 .. coalesce(array_length(saved, 1), 0) BY 2 LOOP
    PERFORM set_config(saved[n], saved[n + 1], true);
  END LOOP;"""

# the text form of a value under the given settings (num_nulls: a row of NULLs is a value)
_TEXT = (
    """
CREATE OR REPLACE FUNCTION %(schema)s.optimist_text(v anyelement, settings text[])
RETURNS text LANGUAGE plpgsql VOLATILE AS $optimist$
DECLARE
  saved text[] := '{}';
  n int;
  t text;
BEGIN
  IF num_nulls(v) = 1 THEN
    RETURN NULL;
  END IF;"""
    + _SETTINGS_ON
    + """
  t := format('%%s', v);"""
    + _SETTINGS_OFF
    + """
  RETURN t;
END
$optimist$;
"""
)

# a text read back as a value of typ's type under the settings it was printed under
_VALUE = (
    """
CREATE OR REPLACE FUNCTION %(schema)s.optimist_value(t text, settings text[], typ anyelement)
RETURNS anyelement LANGUAGE plpgsql VOLATILE AS $optimist$
DECLARE
  saved text[] := '{}';
  n int;
  result ALIAS FOR $0;
BEGIN
  IF t IS NULL THEN
    RETURN NULL;
  END IF;"""
    + _SETTINGS_ON
    + """
  EXECUTE format('SELECT CAST(%%L AS %%s)', t, pg_typeof(typ)) INTO result;"""
    + _SETTINGS_OFF
    + """
  RETURN result;
END
$optimist$;
"""
)

# Lock the rows the session read in this READ COMMITTED transaction that still hold what it
# read (proxy.locking.side_effects): `q` is one SELECT of an int[] (which of them), built by
# the proxy. Never an error for the client's statement that follows: whatever fails (a lock
# timeout, a deadlock, a cast) rolls back this block's subtransaction, locks and all, and
# nothing is vouched for. Under REPEATABLE READ / SERIALIZABLE a read of the transaction is
# vouched for already: nothing to lock.
_LOCK_VERIFIED = """
CREATE OR REPLACE FUNCTION %(schema)s.optimist_lock_verified(q text) RETURNS int[]
LANGUAGE plpgsql VOLATILE AS $optimist$
DECLARE
  found int[];
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RETURN NULL;
  END IF;
  EXECUTE q INTO found;
  RETURN found;
EXCEPTION WHEN OTHERS THEN
  RETURN NULL;
END
$optimist$;
"""

_RAISE_ENFORCE = (
    "RAISE EXCEPTION USING ERRCODE = '%(sqlstate)s', MESSAGE = msg, DETAIL = detail, "
    "HINT = '" + HINT + "', SCHEMA = coalesce(i ->> 'schema', ''), "
    "TABLE = coalesce(i ->> 'name', '');"
)
_RAISE_AUDIT = (
    "RAISE NOTICE USING MESSAGE = msg, DETAIL = detail, HINT = '" + HINT + "';\n  RETURN true;"
)


def guard_schema_sql(schema: str) -> str:
    """The schema as written before a guard function's name (pg_temp, or the one `optimist
    install` created)."""
    return "pg_temp" if schema == "pg_temp" else quote_ident(schema)


def guard_functions_sql(sqlstate: str = "40001", schema: str = "pg_temp") -> str:
    """One simple-query string (re)creating the guard functions in `schema`: pg_temp, per
    server connection, or another one, installed once by `optimist install`."""
    if not _SQLSTATE.match(sqlstate):
        raise ValueError(f"not a SQLSTATE: {sqlstate!r}")
    where = {"schema": guard_schema_sql(schema)}
    parts = []
    for audit in (False, True):
        common = {
            **where,
            "set": "SET client_min_messages = notice" if audit else "",
            "prefix": f"'{AUDIT_MARKER}'" if audit else "''",
            "raise": _RAISE_AUDIT if audit else _RAISE_ENFORCE % {"sqlstate": sqlstate},
        }
        suffix = "_audit" if audit else ""
        parts.append(
            _MODIFIED
            % {
                **common,
                "name": "optimist_modified" + suffix,
                "key_text": _KEY_TEXT % "(state -> 'key')",
            }
        )
        parts.append(
            _PRESENT
            % {
                **common,
                "name": "optimist_present" + suffix,
                "key_text_missing": _KEY_TEXT % "missing",
            }
        )
    parts.append(_TEXT % where)
    parts.append(_VALUE % where)
    parts.append(_LOCK_VERIFIED % where)
    return "".join(parts).strip()


@dataclass(frozen=True)
class Conflict:
    table: str  # schema.name
    key: Mapping[str, Any]  # key column -> value (JSON-decoded)
    kind: str  # 'modified' | 'deleted'
    # column -> {"read": .., "current": .., "attempted": ..}: only the columns another
    # session changed (empty for 'deleted')
    columns: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    audit: bool = False


def parse_conflict(fields: Mapping[str, str]) -> Conflict | None:
    """Our conflict, from ErrorResponse/NoticeResponse fields keyed by one-letter field codes
    ('M' message, 'D' detail, ...); None for any other error or notice."""
    message = fields.get("M", "")
    audit = message.startswith(AUDIT_MARKER)
    if audit:
        message = message[len(AUDIT_MARKER) :]
    if not message.startswith(CONFLICT_MESSAGE_PREFIX):
        return None
    try:
        detail = json.loads(fields.get("D", ""))
    except ValueError:
        return None
    if not isinstance(detail, dict):
        return None
    kind = detail.get("kind")
    table = detail.get("table")
    key = detail.get("key")
    columns = detail.get("columns", {})
    if kind not in ("modified", "deleted") or not isinstance(table, str):
        return None
    if not isinstance(key, dict) or not isinstance(columns, dict):
        return None
    return Conflict(table=table, key=key, kind=kind, columns=columns, audit=audit)


def strip_internal_context(fields: Mapping[str, str]) -> dict[str, str]:
    """fields without the CONTEXT ('W') lines that show our pg_temp functions: the client must
    see the conflict as its own statement's error, not our plumbing."""
    out = dict(fields)
    context = out.get("W")
    if context is None:
        return out
    kept = [
        line for line in context.split("\n") if not any(name in line for name in _FUNCTION_NAMES)
    ]
    if kept:
        out["W"] = "\n".join(kept)
    else:
        del out["W"]
    return out


# SQLSTATE of a write refused because the session never read the row (unknown_original:
# reject): object_not_in_prerequisite_state -- reading first is the prerequisite.
REJECT_SQLSTATE = "55000"


_REFUSED_BECAUSE = {
    "not_read": "the session has not read the row it writes",
    "column_not_read": "the session has not read every column the check needs",
    "binary_read": "the row was read in binary, of a type with no known text form",
    "settings_unknown": "the row was read under settings the proxy could not follow "
    "(set_config(), or a SET inside a transaction)",
    "no_key_pin": "the statement does not pin the key by equality (a bulk write)",
    "key_array": "the key is pinned by = ANY(array), which is not checked",
    "upsert": "INSERT ... ON CONFLICT DO UPDATE is not checked",
    "merge": "MERGE ... WHEN MATCHED is not checked",
    "with_clause": "a write inside a WITH statement is checked only when it pins the key and "
    "is the statement's one write of a protected table",
    "sql_prepare": "an SQL EXECUTE of a prepared write is checked only when its key "
    "argument is a literal, in a simple query",
    "server_code": "DO, CALL and non-builtin functions run server-side code optimist cannot see into",
    "where_current_of": "WHERE CURRENT OF is not checked",
    "parse_error": "optimist cannot parse the statement",
    "unsupported": "optimist cannot check this statement",
    "guards_unavailable": "the check functions are unavailable on this connection",
}
_REFUSAL_HINTS = {
    "unknown_original": "SELECT the row (with the checked columns) in this session before changing it.",
    "unverified": "Write one row at a time, pinned by its key (UPDATE/DELETE ... WHERE key = ...), "
    "after selecting it.",
}


def reject_message(table: Any, reason: str, setting: str = "unknown_original") -> tuple[str, str]:
    """(message, hint) of the error refusing a write the rules will not let through unchecked:
    `reason` is its unverified reason, `setting` the rule that refuses it."""
    what = _REFUSED_BECAUSE.get(reason, reason)
    message = f"optimist: write to {table.qualified_name} refused: {what} ({setting}: reject)"
    return message, _REFUSAL_HINTS.get(setting, _REFUSAL_HINTS["unverified"])


def is_refusal(fields: Mapping[str, str]) -> bool:
    """The error of a statement `reject_sql` put in place of a refused write (both protocols
    refuse the same way: the server raises it in the client's own error flow)."""
    return fields.get("C") == REJECT_SQLSTATE and fields.get("M", "").startswith(
        "optimist: write to"
    )


def reject_sql(table: Any, reason: str, setting: str = "unknown_original") -> str:
    """A statement that fails with the reject error in place of the refused write, so it runs
    (and fails) in the client's transaction like the write would have."""
    message, hint = reject_message(table, reason, setting)
    return (
        "DO $optimist$ BEGIN RAISE EXCEPTION USING ERRCODE = '" + REJECT_SQLSTATE + "', "
        "MESSAGE = "
        + quote_literal_any(message)
        + ", HINT = "
        + quote_literal_any(hint)
        + ", SCHEMA = "
        + quote_literal_any(table.schema)
        + ", TABLE = "
        + quote_literal_any(table.name)
        + "; END $optimist$"
    )
