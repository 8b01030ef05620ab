"""Planning a checked MERGE: one whose ON condition pins the target's key by equality to a
literal or parameter (`MERGE INTO t USING (SELECT 1) s ON t.id = $1 ...`), so the one target
row it may touch is known. Any other MERGE that updates or deletes is a bulk write (`merge`);
it still bumps the version of a version table.

The guard is one more WHEN clause, first, so every clause of the client's runs as written:

    MERGE INTO t USING ... ON t.id = 1
    WHEN MATCHED AND NOT ((<checks>) OR pg_temp.optimist_modified(<info>, <state>))
      THEN DO NOTHING                                  -- raises 40001, or not reached
    <the client's WHEN clauses, each UPDATE SET with the version bump>

Under READ COMMITTED a MERGE whose row was changed meanwhile re-evaluates its WHEN clauses
from the first on the row's newest version, so the check always sees what it overwrites.
PostgreSQL forbids subqueries in WHEN conditions: nothing here may use one.

A row deleted meanwhile is not matched, as PostgreSQL has it: the client's WHEN NOT MATCHED
clauses say what to do (an INSERT re-creates it, as an upsert does), and without one the MERGE
does nothing (`MERGE 0`): nothing of another session's is overwritten. (A presence check cannot
go in: a WHEN NOT MATCHED ... DO NOTHING clause is dropped by the planner, and an INSERT action
would need INSERT privilege.)

MERGE ... RETURNING exists only from PostgreSQL 17 on, so the proxy learns nothing from a
MERGE: the pinned rows are forgotten once it completes (WritePlan.forget_pinned)."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.tokens import TokenType

from proxy.rewrite.clauses import Clauses
from proxy.rewrite.guards import Edit, GuardBuilder, bump_edits, splice
from proxy.rewrite.pins import (
    Pin,
    SetItem,
    Target,
    Value,
    column_checks,
    matches,
    pin_of,
    set_items,
    target_of,
    where_conjuncts,
)
from proxy.rewrite.planner import (
    Unverified,
    WritePlan,
    _key_ref,
    _parse,
    _version_bumps,
    _write_plan,
)
from proxy.rewrite.tokens import SqlText
from proxy.rules.protected import ProtectedTable

__all__ = ["plan_merge"]

# one UPDATE action of the client's: where its SET items are, and the bump it gets
_Action = tuple[Clauses, list[SetItem], str | None, str | None]


class MergeGuardBuilder(GuardBuilder):
    """The checked MERGE for one mask (whether the pinned row was read)."""

    # a WHEN condition may not name a system column (xmin): no side-effect excuse in a MERGE
    excuses_own_changes = False

    def __init__(
        self,
        *,
        actions: list[_Action],
        first_when: int,
        **kw: object,
    ) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]  # GuardBuilder's own keywords
        self.actions = actions
        self.first_when = first_when  # character offset of the client's first WHEN

    def build(self, mask: tuple[bool, ...]) -> tuple[object, ...]:
        text = self.text
        edits: list[Edit] = []
        for c, items, bump, version_bump in self.actions:
            by_column = {it.column: it for it in items}
            edits += bump_edits(text, c, by_column, bump, version_bump, self.table)
        if self.guarded and mask and mask[0]:
            check = self.row_checks(0)
            if check is not None:
                guard = ("WHEN MATCHED AND NOT ", *check, " THEN DO NOTHING ")
                edits.append(Edit(self.first_when, self.first_when, guard))
        return splice(text, edits)

    def returns(self, checked: bool) -> bool:
        return False  # MERGE ... RETURNING needs PostgreSQL 17: learn nothing, forget the row


def plan_merge(
    template_sql: str, table: ProtectedTable, n_params: int = 0
) -> WritePlan | Unverified:
    """Plan a MERGE of `table` that updates or deletes (the INSERT-only one needs no plan)."""
    try:
        return _plan_merge(template_sql, table)
    except Exception as exc:  # a planner bug must cost one unchecked write, not the session
        return Unverified("merge", f"planner error: {type(exc).__name__}: {exc}")


def _plan_merge(template_sql: str, table: ProtectedTable) -> WritePlan | Unverified:
    tree, text, error = _parse(template_sql)
    if tree is None:
        return Unverified("parse_error", error)
    assert text is not None  # parsed, so lexed
    if not isinstance(tree, exp.Merge):
        return Unverified("not_target_table")
    target = target_of(tree.this)
    if target is None or not matches(target, table):
        return Unverified("not_target_table")
    whens_node = tree.args.get("whens")
    whens = list(whens_node.expressions) if whens_node is not None else []
    actions = {id(w.args.get("then")) for w in whens}
    for node in tree.find_all(exp.Update, exp.Delete, exp.Insert, exp.Merge):
        if node is not tree and id(node) not in actions:
            return Unverified("unsupported", "a write inside the MERGE's source")
    found = _clauses(text, len(whens))
    if found is None:
        return Unverified("merge", "could not locate the clauses")
    on, first_when, bounds = found
    # every UPDATE action gets the version bump, whether the row can be checked or not
    parsed: list[_Action] = []
    all_items: list[SetItem] = []
    deletes = False
    for when, (lo, hi) in zip(whens, bounds):
        then = when.args.get("then")
        if not when.args.get("matched") and not when.args.get("source"):
            continue  # WHEN NOT MATCHED [BY TARGET]: inserts
        if isinstance(then, exp.Update):
            action = _update_action(text, then, lo, hi, table, target)
            if isinstance(action, Unverified):
                return action
            parsed.append(action)
            all_items += action[1]
        elif isinstance(then, exp.Var) and then.name.upper() == "DELETE":
            deletes = True
    if any(w.args.get("source") for w in whens):
        return _unpinned(text, table, target, parsed, "WHEN NOT MATCHED BY SOURCE: any row")
    on_node = tree.args.get("on")
    conjuncts = (
        where_conjuncts(on_node, on + 1, first_when, text)
        if isinstance(on_node, exp.Expression)
        else None
    )
    if conjuncts is None:
        return _unpinned(text, table, target, parsed, "ON is not an AND chain we can read")
    pins: dict[str, Pin] = {}
    for node, lo, hi in conjuncts:
        pin = pin_of(node, lo, hi, text, target, table)
        if pin is not None and pin.column not in pins:
            pins[pin.column] = pin
    if any(k not in pins for k in table.key):
        return _unpinned(text, table, target, parsed, "ON does not pin the target's key")
    ordered = [pins[k] for k in table.key]
    if any(p.is_in for p in ordered):
        return _unpinned(text, table, target, parsed, "ON pins several rows")
    if any(it.column in table.key for it in all_items):
        return _unpinned(text, table, target, parsed, "an UPDATE action moves the key")
    row = [p.values[0] for p in ordered]
    checks, _ = column_checks(table, "update", all_items)
    if deletes:
        checks.update(column_checks(table, "delete", [])[0])
    # a column written by several actions has no one new value: compared as read
    checks = {col: "plain" for col in table.columns if col in checks}
    builder = _builder(
        text,
        table,
        target,
        parsed,
        pins=ordered,
        rows=[row],
        checks=checks,
        first_when=first_when,
    )
    pinned = (tuple(_key_ref(k, v) for k, v in zip(table.key, row)),)
    checked_columns = tuple(checks)
    return _write_plan(
        "merge",
        table,
        pinned,
        all_items,
        checked_columns,
        Clauses(main=0),
        builder,
        learns=False,
        forget_pinned=True,
    )


def _unpinned(
    text: SqlText, table: ProtectedTable, target: Target, actions: list[_Action], detail: str
) -> WritePlan | Unverified:
    """A MERGE no row of which can be checked (a bulk write, `merge`): its UPDATE actions still
    bump the version, so every other session's check sees the change."""
    if not any(a[2] is not None or a[3] is not None for a in actions):
        return Unverified("merge", detail)
    builder = _builder(text, table, target, actions, pins=[], rows=[], checks={})
    return _write_plan(
        "merge",
        table,
        (),
        [],
        (),
        Clauses(main=0),
        builder,
        learns=False,
        unpinned="merge",
        forgets_tables=(table,),
    )


def _builder(
    text: SqlText,
    table: ProtectedTable,
    target: Target,
    actions: list[_Action],
    *,
    pins: list[Pin],
    rows: list[list[Value]],
    checks: dict[str, str],
    first_when: int = 0,
) -> MergeGuardBuilder:
    return MergeGuardBuilder(
        actions=actions,
        first_when=text.toks[first_when].start if pins else 0,
        text=text,
        table=table,
        kind="merge",
        clauses=Clauses(main=0),
        target=target,
        pins=pins,
        rows=rows,
        items=[],
        checks=checks,
        sparse=[],
        bump=None,
        wrap_where=False,
    )


def _clauses(text: SqlText, n_whens: int) -> tuple[int, int, list[tuple[int, int]]] | None:
    """Token indexes of the MERGE's ON, of its first WHEN, and each WHEN clause's range."""
    n = len(text.toks)
    top = list(text.top(0, n, 0))
    using = next((i for i, t in top if t.token_type == TokenType.USING), None)
    if using is None:
        return None
    end = next((i for i, t in top if t.token_type == TokenType.RETURNING), n)
    whens = [i for i, t in top if using < i < end and t.token_type == TokenType.WHEN]
    if not whens or len(whens) != n_whens:
        return None
    # the last top-level ON before the first WHEN: a joined source has ONs of its own
    ons = [i for i, t in top if using < i < whens[0] and t.token_type == TokenType.ON]
    if not ons or ons[-1] + 1 >= whens[0]:
        return None
    bounds = list(zip(whens, whens[1:] + [end]))
    return ons[-1], whens[0], bounds


def _update_action(
    text: SqlText, node: exp.Update, lo: int, hi: int, table: ProtectedTable, target: Target
) -> _Action | Unverified:
    """`WHEN MATCHED ... THEN UPDATE SET <items>` in tokens[lo:hi]: its items and bump."""
    toks = text.toks
    then = next((i for i, t in text.top(lo, hi) if t.token_type == TokenType.THEN), None)
    if (
        then is None
        or then + 3 >= hi
        or toks[then + 1].token_type != TokenType.UPDATE
        or toks[then + 2].token_type != TokenType.SET
    ):
        return Unverified("merge", "could not locate an UPDATE action")
    c = Clauses(main=0, set_lo=then + 3, set_hi=hi)
    items = set_items(node, text, c)
    if items is None:
        return Unverified("merge", "SET list")
    bumps = _version_bumps(table, "update", target, items)
    if isinstance(bumps, Unverified):
        return Unverified("merge", bumps.detail)
    return c, items, bumps[0], bumps[1]
