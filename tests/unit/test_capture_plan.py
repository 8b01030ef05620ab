"""plan_capture's shortcut for results that name no protected table: it must still see a
protected table among other columns, and a simple view over one."""

from __future__ import annotations

from proxy.catalog_views import SimpleView
from proxy.locking.capture import CapturePlan, plan_capture
from proxy.rules.protected import ProtectedTable
from proxy.wire.messages import Field

ACCOUNTS = ProtectedTable(
    schema="public",
    name="accounts",
    oid=100,
    columns=("id", "balance", "version"),
    column_types={"id": "integer", "balance": "integer", "version": "integer"},
    column_type_oids={"id": 23, "balance": 23, "version": 23},
    key=("id",),
    strategy="version",
    version_column="version",
)
PROTECTED = {100: ACCOUNTS}
ATTNAMES = {100: {1: "id", 2: "balance", 3: "version"}}
VIEW = SimpleView(
    200, "public", "v", 100, {1: "id", 2: "version"}, {"id": "id", "version": "version"}
)


def _f(table_oid: int, attnum: int) -> Field:
    return Field(b"c", table_oid, attnum, 23, 4, -1, 0)


def test_unprotected_and_computed_columns_plan_nothing():
    assert plan_capture([_f(300, 1), _f(0, 0)], PROTECTED, ATTNAMES, {200: VIEW}) is None
    assert plan_capture([], PROTECTED, ATTNAMES, None) is None


def test_protected_table_after_other_columns_is_captured():
    plan = plan_capture([_f(300, 1), _f(0, 0), _f(100, 1), _f(100, 3)], PROTECTED, ATTNAMES)
    assert isinstance(plan, CapturePlan)
    assert plan.tables[0].key_positions == (2,) and plan.tables[0].columns[0][:2] == ("version", 3)


def test_a_view_over_a_protected_table_is_captured():
    plan = plan_capture([_f(300, 1), _f(200, 1), _f(200, 2)], PROTECTED, ATTNAMES, {200: VIEW})
    assert isinstance(plan, CapturePlan) and plan.tables[0].key_positions == (1,)
