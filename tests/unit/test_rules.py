"""Rule files: loading, error reporting with lines, round-trips, and resolving against a catalog."""

from __future__ import annotations

import re
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.catalog import Catalog
from proxy.rules import RuleError, load_rules, resolve, wanted_tables
from proxy.rules.model import RuleSet, TableRule, fold_identifier, quote_ident, split_identifiers

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems_of(*paths: Path) -> list:
    with pytest.raises(RuleError) as info:
        load_rules(paths)
    return info.value.problems


def marked_line(path: Path) -> int:
    """The 1-based line carrying the `#!` marker: where the test expects the problem."""
    lines = path.read_text().splitlines()
    hits = [i + 1 for i, line in enumerate(lines) if "#!" in line]
    assert len(hits) == 1, "each case marks exactly one line"
    return hits[0]


# --- every error path points at the right line ------------------------------------------

ERROR_CASES = {
    "unknown top-level key": (
        """
        version: 1
        tables: []
        tabels: []   #!
        """,
        r"unknown top-level key 'tabels' \(did you mean 'tables'\?\)",
    ),
    "unknown table setting": (
        """
        version: 1
        tables:
          - table: accounts
            version_column: version
            strategie: version   #!
        """,
        r"unknown setting 'strategie' \(did you mean 'strategy'\?\)",
    ),
    "unknown setting without a close match lists allowed ones": (
        """
        version: 1
        tables:
          - table: accounts
            flavour: red   #!
        """,
        r"unknown setting 'flavour'; allowed: table, key, strategy",
    ),
    "unknown defaults setting": (
        """
        version: 1
        defaults:
          sparse_updates: true   #!
        tables: []
        """,
        r"unknown setting 'sparse_updates' \(did you mean 'sparse_update'\?\)",
    ),
    "bad bump": (
        """
        version: 1
        tables:
          - table: accounts
            version_column: version
            bump: incremnt   #!
        """,
        r"bump must be one of increment, timestamp, none, not 'incremnt' \(did you mean 'increment'\?\)",
    ),
    "bad policy": (
        """
        version: 1
        tables:
          - table: customers
            columns:
              credit_score: anny   #!
        """,
        r"policy of column 'credit_score' must be one of any, changed, differing, never",
    ),
    "bad default check policy": (
        """
        version: 1
        tables:
          - table: customers
            check: always   #!
        """,
        r"check must be one of any, changed, differing, never, not 'always'",
    ),
    "bad mode": (
        """
        version: 1
        tables:
          - table: customers
            mode: enforced   #!
        """,
        r"mode must be one of enforce, audit, off, not 'enforced' \(did you mean 'enforce'\?\)",
    ),
    "bad strategy": (
        """
        version: 1
        tables:
          - table: customers
            strategy: column   #!
        """,
        r"strategy must be one of version, columns",
    ),
    "group of one column": (
        """
        version: 1
        tables:
          - table: customers
            groups:
              - [salutation]   #!
        """,
        r"groups\[0\] must be a list of at least two column names",
    ),
    "yes is not a boolean": (
        """
        version: 1
        tables:
          - table: customers
            sparse_update: yes   #!
        """,
        r"sparse_update must be true or false",
    ),
    "notify not an identifier": (
        """
        version: 1
        tables:
          - table: customers
            notify: 9lives   #!
        """,
        r"notify must be a channel name",
    ),
    "wrong version": (
        """
        version: 2   #!
        tables: []
        """,
        r"version must be 1",
    ),
    "missing tables": (
        """
        version: 1   #!
        """,
        r"the file is missing required key 'tables'",
    ),
    "table entry without table": (
        """
        version: 1
        tables:
          - table: a
          - strategy: columns   #!
            check: any
        """,
        r"the table entry is missing required key 'table'",
    ),
    "table entry not a mapping": (
        """
        version: 1
        tables:
          - accounts   #!
        """,
        r"the table entry must be a mapping",
    ),
    "key of wrong type": (
        """
        version: 1
        tables:
          - table: accounts
            key: 5   #!
        """,
        r"key must be a column name or a non-empty list of column names",
    ),
    "empty key list": (
        """
        version: 1
        tables:
          - table: accounts
            key: []   #!
        """,
        r"key must be a column name or a non-empty list",
    ),
    "tables not a list": (
        """
        version: 1
        tables:   #!
          accounts: {}
        """,
        r"tables must be a list",
    ),
    "search_path empty": (
        """
        version: 1
        search_path: []   #!
        tables: []
        """,
        r"search_path must be a non-empty list of schema names",
    ),
    "yaml syntax": (
        """
        version: 1
        tables:
          - table: accounts
            key: [id   #!
        """,
        r"YAML syntax",
    ),
    "yaml tab indentation": (
        """
        version: 1
        tables:
        \t- table: accounts   #!
        """,
        r"YAML syntax",
    ),
    "key set twice": (
        """
        version: 1
        tables:
          - table: accounts
            mode: audit
            mode: enforce   #!
        """,
        r"'mode' is set twice in the same mapping",
    ),
    "invalid table name": (
        """
        version: 1
        tables:
          - table: my table   #!
        """,
        r"'my table' is not a valid name.*quote it",
    ),
    "too many dots": (
        """
        version: 1
        tables:
          - table: db.public.accounts   #!
        """,
        r"too many dots",
    ),
    "unterminated quote": (
        """
        version: 1
        tables:
          - table: '"Accounts'   #!
        """,
        r"unterminated quoted name",
    ),
    "version strategy without version column": (
        """
        version: 1
        tables:
          - table: accounts   #!
            strategy: version
        """,
        r"strategy version needs version_column",
    ),
    "columns setting on a version table": (
        """
        version: 1
        tables:
          - table: accounts
            version_column: version
            check: any   #!
        """,
        r"check only applies to strategy columns; this table uses strategy version",
    ),
    "version setting on a columns table": (
        """
        version: 1
        tables:
          - table: accounts
            strategy: columns
            bump: none   #!
        """,
        r"bump only applies to strategy version",
    ),
    "version column in key": (
        """
        version: 1
        tables:
          - table: accounts
            version_column: version
            key: [id, version]   #!
        """,
        r"version column 'version' cannot also be part of the key",
    ),
    "comma-separated key": (
        """
        version: 1
        tables:
          - table: accounts
            key: region, id   #!
        """,
        r"write a list: \[region, id\]",
    ),
    "key column twice": (
        """
        version: 1
        tables:
          - table: accounts
            key:
              - id
              - ID   #!
        """,
        r"key column 'id' is listed twice",
    ),
    "two policies folding to one column": (
        """
        version: 1
        tables:
          - table: reports
            columns:
              status: differing
              Status: any   #!
        """,
        r"column 'status' has two policies",
    ),
    "policy on a key column": (
        """
        version: 1
        tables:
          - table: reports
            key: id
            columns:
              id: any   #!
        """,
        r"column 'id' is part of the key",
    ),
    "group column twice": (
        """
        version: 1
        tables:
          - table: customers
            groups:
              - [salutation, last_name, SALUTATION]   #!
        """,
        r"column 'salutation' appears twice in this group",
    ),
    "group with a key column": (
        """
        version: 1
        tables:
          - table: customers
            key: [id]
            groups:
              - [id, last_name]   #!
        """,
        r"column 'id' is part of the key; .* cannot be in a group",
    ),
    "column name that is not text": (
        """
        version: 1
        tables:
          - table: customers
            columns:
              2024: any   #!
        """,
        r"2024 in columns is not a column name; quote it as text",
    ),
    "bad column name in overrides": (
        """
        version: 1
        tables:
          - table: customers
            columns:
              "credit score": any   #!
        """,
        r"'credit score' is not a valid name",
    ),
    "duplicate table in one file": (
        """
        version: 1
        tables:
          - table: accounts
          - table: PUBLIC.Accounts   #!
        """,
        r"table public.accounts already has a rule at .*rules.yaml:3; one rule per table",
    ),
    "defaults problem is reported once": (
        """
        version: 1
        defaults:
          mode: loud   #!
        tables:
          - table: a
          - table: b
        """,
        r"mode must be one of enforce, audit, off",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_error_points_at_the_line_to_fix(tmp_path, case):
    text, message = ERROR_CASES[case]
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    [problem] = problems
    assert problem.file == str(path)
    assert problem.line == marked_line(path), problem
    assert re.search(message, problem.message), problem.message
    assert str(problem).startswith(f"{path}:{problem.line}: error: ")


def test_all_problems_of_all_files_are_reported_in_line_order(tmp_path):
    a = write(
        tmp_path,
        """
        version: 1
        tables:
          - table: a
            bump: x
          - table: b
            mode: y
        """,
        "a.yaml",
    )
    b = write(tmp_path, "version: 3\ntables: []\n", "b.yaml")
    problems = problems_of(a, b)
    assert [(Path(p.file).name, p.line) for p in problems] == [
        ("a.yaml", 4),
        ("a.yaml", 6),
        ("b.yaml", 1),
    ]


def test_duplicate_table_across_files_points_at_the_second(tmp_path):
    a = write(tmp_path, "version: 1\ntables:\n  - table: accounts\n", "a.yaml")
    b = write(
        tmp_path, "version: 1\ntables:\n  - table: other\n  - table: public.accounts\n", "b.yaml"
    )
    [problem] = problems_of(tmp_path)  # a directory: files in sorted order
    assert (problem.file, problem.line) == (str(b), 4)
    assert f"already has a rule at {a}:3" in problem.message


def test_search_paths_of_files_must_agree(tmp_path):
    write(tmp_path, "version: 1\nsearch_path: [app, public]\ntables: []\n", "a.yaml")
    b = write(tmp_path, "version: 1\nsearch_path: [public]\ntables: []\n", "b.yaml")
    [problem] = problems_of(tmp_path)
    assert (problem.file, problem.line) == (str(b), 2)
    assert "contradicts ['app', 'public']" in problem.message


def test_empty_file_missing_path_and_empty_directory(tmp_path):
    empty = write(tmp_path, "# nothing yet\n", "empty.yaml")
    (tmp_path / "nothing").mkdir()
    problems = problems_of(empty, tmp_path / "missing.yaml", tmp_path / "nothing")
    messages = {Path(p.file).name: p.message for p in problems}
    assert "the file is empty" in messages["empty.yaml"]
    assert messages["missing.yaml"] == "no such file or directory"
    assert "no *.yaml or *.yml rule files" in messages["nothing"]
    assert all(p.line is None for p in problems)
    missing = next(p for p in problems if p.file.endswith("missing.yaml"))
    assert str(missing) == f"{tmp_path / 'missing.yaml'}: error: no such file or directory"


# --- what valid files mean ----------------------------------------------------------------


def test_defaults_apply_unless_the_table_sets_its_own(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        defaults:
          version_column: version
          notify: conflicts
          mode: off
          check: any          # not used by version tables, used by columns tables
        tables:
          - table: accounts
          - table: ledger
            mode: audit
            bump: none
          - table: notes
            strategy: columns
        """,
    )
    rules = {r.name: r for r in load_rules([path]).rules}
    accounts, ledger, notes = rules["accounts"], rules["ledger"], rules["notes"]
    assert (accounts.strategy, accounts.version_column, accounts.bump) == (
        "version",
        "version",
        "increment",
    )
    assert (accounts.mode, accounts.notify) == ("off", "conflicts")
    assert (ledger.mode, ledger.bump) == ("audit", "none")
    assert (notes.strategy, notes.version_column, notes.check) == ("columns", None, "any")
    assert (accounts.source_file, accounts.source_line, ledger.source_line) == (str(path), 8, 9)


def test_settings_and_their_defaults(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        tables:
          - table: customers
          - table: app.reports
            key: id
            strategy: columns
            check: never
            columns: {status: differing, Credit_Score: any}
            groups: [[salutation, last_name]]
            sparse_update: true
            unknown_original: reject
            scope: user
            notify: report_conflicts
        """,
    )
    customers, reports = load_rules([path]).rules
    assert customers == TableRule(
        schema="public",
        name="customers",
        schema_explicit=False,
        strategy="columns",
        source_file=str(path),
        source_line=3,
    )
    assert customers.key is None and customers.check == "changed" and customers.mode == "enforce"
    assert (reports.schema, reports.name, reports.schema_explicit) == ("app", "reports", True)
    assert reports.key == ("id",)
    assert dict(reports.columns) == {"status": "differing", "credit_score": "any"}
    assert reports.groups == (("salutation", "last_name"),)
    assert (
        reports.check,
        reports.sparse_update,
        reports.unknown_original,
        reports.scope,
        reports.notify,
    ) == ("never", True, "reject", "user", "report_conflicts")


def test_off_on_yes_no_are_strings_not_booleans(tmp_path):
    # YAML 1.1 would read `mode: off` as False; rule files use YAML 1.2 booleans
    path = write(tmp_path, "version: 1\ntables:\n  - table: a\n    mode: off\n")
    assert load_rules([path]).rules[0].mode == "off"


def test_names_fold_like_sql_and_quotes_keep_case(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        search_path: [App, public]
        tables:
          - table: Accounts
            version_column: Version
          - table: '"Sales"."Q1 Orders"'
            key: ['"OrderID"']
            strategy: columns
        """,
    )
    ruleset = load_rules([path])
    accounts, orders = ruleset.rules
    assert ruleset.search_path == ("app", "public")
    assert (accounts.schema, accounts.name, accounts.version_column) == (
        "app",
        "accounts",
        "version",
    )
    assert (orders.schema, orders.name, orders.key) == ("Sales", "Q1 Orders", ("OrderID",))
    assert ruleset.lookup("app", "accounts") is accounts
    assert ruleset.lookup(None, "accounts") is accounts
    assert ruleset.lookup("Sales", "Q1 Orders") is orders
    assert ruleset.lookup("sales", "q1 orders") is None
    assert ruleset.lookup(None, "Q1 Orders") is None  # not on the search_path
    # `Accounts` was written unqualified: it may be the table in any search_path schema
    assert ruleset.lookup("public", "accounts") is accounts
    assert ruleset.lookup("other", "accounts") is None


def test_lookup_follows_search_path_order():
    first = TableRule(schema="app", name="t", schema_explicit=True, strategy="columns")
    second = TableRule(schema="public", name="t", schema_explicit=True, strategy="columns")
    ruleset = RuleSet(rules=(second, first), search_path=("app", "public"))
    assert ruleset.lookup(None, "t") is first
    assert ruleset.lookup("public", "t") is second
    assert ruleset.lookup("other", "t") is None
    unqualified = TableRule(schema="app", name="u", schema_explicit=False, strategy="columns")
    ruleset = RuleSet(rules=(unqualified,), search_path=("app", "public"))
    assert ruleset.lookup("public", "u") is unqualified  # resolve may have found it there
    assert ruleset.lookup(None, "u") is unqualified
    assert ruleset.lookup("other", "u") is None


def test_directory_loading_version_and_sources(tmp_path):
    write(tmp_path, "version: 1\ntables:\n  - table: b\n", "b.yml")
    write(tmp_path, "version: 1\ntables:\n  - table: a\n", "a.yaml")
    write(tmp_path, "not: rules\n", "ignored.txt")
    ruleset = load_rules([tmp_path])
    assert [r.name for r in ruleset.rules] == ["a", "b"]
    assert ruleset.sources == (str(tmp_path / "a.yaml"), str(tmp_path / "b.yml"))
    assert re.fullmatch(r"[0-9a-f]{12}", ruleset.version)
    assert ruleset.loaded_at > 1.7e9
    assert load_rules([tmp_path]).version == ruleset.version
    write(tmp_path, "version: 1\ntables:\n  - table: a\n    mode: audit\n", "a.yaml")
    assert load_rules([tmp_path]).version != ruleset.version


def test_no_paths_is_an_empty_rule_set():
    ruleset = load_rules([])
    assert ruleset.rules == () and ruleset.search_path == ("public",)


def test_shipped_example_is_valid():
    ruleset = load_rules([REPO / "rules" / "example.yaml"])
    assert {r.name for r in ruleset.rules} == {"customers", "reports", "accounts", "products"}


def test_identifier_helpers():
    assert split_identifiers('Public."My ""Big"" Table"') == ["public", 'My "Big" Table']
    assert fold_identifier("ÉtÉ_1$") == "ÉtÉ_1$"  # only ASCII letters fold, as in PostgreSQL
    for bad in ("", "1abc", "a.", ".a", "a b", '""', "a-b"):
        with pytest.raises(ValueError):
            split_identifiers(bad)
    with pytest.raises(ValueError):
        fold_identifier("a.b")
    for name in ("abc", "Abc", "a b", 'q"uote', "1x", "a.b", "é"):
        assert fold_identifier(quote_ident(name)) == name


# --- generated valid files round-trip -------------------------------------------------------

# names that need quoting (spaces, dots, quotes, capitals, leading digits) and plain ones
NAME = st.text(alphabet='abcXYZ_09 ."é$', min_size=1, max_size=8)


ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@st.composite
def spelled(draw):
    """(folded name, how a DBA may write it)"""
    name = draw(NAME)
    spelling = quote_ident(name)
    if spelling == name and draw(st.booleans()):
        spelling = name.translate(ASCII_UPPER)  # unquoted capitals fold back down
    return name, spelling


@st.composite
def table_entries(draw):
    tables, expected = [], []
    used_tables: set[tuple[str, str]] = set()
    for _ in range(draw(st.integers(1, 4))):
        schema, schema_spelled = draw(spelled())
        name, name_spelled = draw(spelled())
        qualified = draw(st.booleans())
        folded_table = (schema if qualified else "public", name)
        if folded_table in used_tables:
            continue
        used_tables.add(folded_table)
        columns = draw(st.lists(spelled(), min_size=1, max_size=6, unique_by=lambda x: x[0]))
        entry = {"table": f"{schema_spelled}.{name_spelled}" if qualified else name_spelled}
        want = {"schema": folded_table[0], "name": name, "schema_explicit": qualified}
        key_count = draw(st.integers(0, min(2, len(columns) - 1)))
        key, rest = columns[:key_count], columns[key_count:]
        if key:
            entry["key"] = [s for _, s in key] if len(key) > 1 or draw(st.booleans()) else key[0][1]
        want["key"] = tuple(n for n, _ in key) if key else None
        if draw(st.booleans()):
            want["strategy"] = entry["strategy"] = "version"
            entry["version_column"] = rest[0][1]
            want["version_column"] = rest[0][0]
            if draw(st.booleans()):
                want["bump"] = entry["bump"] = draw(
                    st.sampled_from(["increment", "timestamp", "none"])
                )
        else:
            want["strategy"] = entry["strategy"] = "columns"
            if draw(st.booleans()):
                want["check"] = entry["check"] = draw(
                    st.sampled_from(["any", "changed", "differing", "never"])
                )
            overrides = draw(st.lists(st.sampled_from(rest), unique_by=lambda x: x[0]))
            if overrides:
                policies = [
                    draw(st.sampled_from(["any", "changed", "differing", "never"]))
                    for _ in overrides
                ]
                entry["columns"] = {s: p for (_, s), p in zip(overrides, policies)}
                want["columns"] = {n: p for (n, _), p in zip(overrides, policies)}
            if len(rest) >= 2 and draw(st.booleans()):
                group = draw(st.lists(st.sampled_from(rest), min_size=2, unique_by=lambda x: x[0]))
                entry["groups"] = [[s for _, s in group]]
                want["groups"] = (tuple(n for n, _ in group),)
        for setting, values in (
            ("sparse_update", [True, False]),
            ("mode", ["enforce", "audit", "off"]),
            ("unknown_original", ["allow", "reject"]),
            ("unverified", ["allow", "reject"]),
            ("scope", ["session", "user"]),
            ("notify", ["chan", "Conflicts_2", "x$"]),
        ):
            if draw(st.booleans()):
                want[setting] = entry[setting] = draw(st.sampled_from(values))
        tables.append(entry)
        expected.append(want)
    return tables, expected


def _load_text(text: str) -> RuleSet:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(text)
        return load_rules([path])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table_entries())
def test_generated_valid_rules_load_and_round_trip(generated):
    tables, expected = generated
    ruleset = _load_text(yaml.safe_dump({"version": 1, "tables": tables}, sort_keys=False))
    assert len(ruleset.rules) == len(expected)
    for rule, want in zip(ruleset.rules, expected):
        for setting, value in want.items():
            got = getattr(rule, setting)
            assert (dict(got) if setting == "columns" else got) == value, setting
    again = _load_text(
        yaml.safe_dump(
            {"version": 1, "tables": [r.to_dict() for r in ruleset.rules]}, sort_keys=False
        )
    )
    strip = lambda r: {**r.__dict__, "source_file": None, "source_line": None}  # noqa: E731
    for a, b in zip(again.rules, ruleset.rules):
        assert strip(a) == strip(b)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table_entries(), st.data())
def test_generated_unknown_setting_is_reported_at_its_line(generated, data):
    tables, _ = generated
    victim = data.draw(st.integers(0, len(tables) - 1))
    tables[victim]["zz_unknown"] = 1
    text = yaml.safe_dump({"version": 1, "tables": tables}, sort_keys=False)
    expected_line = next(i + 1 for i, line in enumerate(text.splitlines()) if "zz_unknown" in line)
    with pytest.raises(RuleError) as info:
        _load_text(text)
    [problem] = info.value.problems
    assert problem.line == expected_line
    assert "unknown setting 'zz_unknown'" in problem.message


# --- resolve against a hand-built catalog ------------------------------------------------

INT, TEXT, NUMERIC, TSTZ, JSON, POINT = 23, 25, 1700, 1184, 114, 600
TYPE_NAMES = {
    INT: "integer",
    TEXT: "text",
    NUMERIC: "numeric(12,2)",
    TSTZ: "timestamp with time zone",
    JSON: "json",
    POINT: "point",
    90001: "posint",
}


def col(name, type_oid=TEXT, *, pk=False, not_null=False, base=None):
    comparable = (base or type_oid) not in (JSON, POINT)
    return (name, type_oid, comparable, not_null or pk, pk, base or type_oid)


def catalog(*tables) -> Catalog:
    """tables: (oid, schema, name, [col(...)]) -> Catalog via the text rows from_rows reads."""
    rows = []
    for oid, schema, name, cols in tables:
        for attnum, (cname, type_oid, comparable, not_null, pk, base) in enumerate(cols, 1):
            rows.append(
                [
                    schema,
                    name,
                    str(oid),
                    str(attnum),
                    cname,
                    str(type_oid),
                    TYPE_NAMES[type_oid],
                    "t" if pk else "f",
                    "t" if comparable else "f",
                    "t" if not_null else "f",
                    str(base),
                ]
            )
    return Catalog.from_rows(rows)


SHOP = catalog(
    (
        1001,
        "public",
        "customers",
        [
            col("id", INT, pk=True),
            col("salutation"),
            col("last_name"),
            col("credit_limit", NUMERIC),
            col("credit_score", INT),
            col("profile", JSON),
        ],
    ),
    (
        1002,
        "public",
        "accounts",
        [
            col("id", INT, pk=True),
            col("owner"),
            col("balance", NUMERIC),
            col("version", INT, not_null=True),
        ],
    ),
    (
        1003,
        "app",
        "ledger",
        [
            col("id", INT, pk=True),
            col("seq", 90001, not_null=True, base=INT),
            col("at", TSTZ, not_null=True),
        ],
    ),
    (1004, "public", "nokey", [col("a", INT), col("b")]),
    (1005, "public", "places", [col("where", POINT), col("name")]),
)


def ruleset_of(tmp_path, text) -> RuleSet:
    return load_rules([write(tmp_path, text)])


def messages(problems, severity="error"):
    return [(p.line, p.message) for p in problems if p.severity == severity]


def test_resolve_columns_strategy_builds_policies(tmp_path):
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        tables:
          - table: customers
            columns: {credit_score: any, profile: never}
            groups: [[salutation, last_name]]
            sparse_update: true
            scope: user
        """,
    )
    protected, problems = resolve(rules, SHOP)
    assert problems == []
    t = protected[1001]
    assert (t.schema, t.name, t.oid, t.key, t.strategy) == (
        "public",
        "customers",
        1001,
        ("id",),
        "columns",
    )
    assert t.columns == ("id", "salutation", "last_name", "credit_limit", "credit_score", "profile")
    assert (
        t.column_types["credit_limit"] == "numeric(12,2)" and t.column_type_oids["profile"] == JSON
    )
    assert dict(t.policies) == {
        "salutation": "changed",
        "last_name": "changed",
        "credit_limit": "changed",
        "credit_score": "any",
        "profile": "never",
    }
    assert t.groups == (frozenset({"salutation", "last_name"}),)
    assert (t.sparse_update, t.scope, t.version_column) == (True, "user", None)


def test_resolve_version_strategy_and_search_path(tmp_path):
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        search_path: [app, public]
        tables:
          - table: accounts
            version_column: version
            notify: money
            mode: audit
          - table: ledger
            version_column: seq
            key: [id]
        """,
    )
    assert wanted_tables(rules) == [
        ("app", "accounts"),
        ("app", "ledger"),
        ("public", "accounts"),
        ("public", "ledger"),
    ]
    protected, problems = resolve(rules, SHOP)
    assert problems == []
    accounts, ledger = protected[1002], protected[1003]
    assert accounts.qualified_name == "public.accounts"  # found in the second search_path schema
    assert (accounts.version_column, accounts.bump, dict(accounts.policies)) == (
        "version",
        "increment",
        {},
    )
    assert (accounts.mode, accounts.notify) == ("audit", "money")
    assert accounts.captured_columns == ("id", "version")
    assert ledger.qualified_name == "app.ledger" and ledger.key == ("id",)  # a domain over integer


def test_resolve_explicit_key_replaces_the_primary_key(tmp_path):
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        tables:
          - table: nokey
            key: [a]
            check: any
        """,
    )
    protected, problems = resolve(rules, SHOP)
    assert problems == [] and protected[1004].key == ("a",)
    assert dict(protected[1004].policies) == {"b": "any"}


def test_resolve_reports_every_problem_kind(tmp_path):
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        tables:
          - table: missing                      # 3
          - table: nokey                        # 4
          - table: customers                    # 5
            key: [id, nope]
            columns: {ghost: any, credit_score: any}
            groups: [[salutation, phantom]]
          - table: accounts                     # 9
            version_column: owner
          - table: app.ledger                   # 11
            version_column: seq
            bump: timestamp
          - table: public.places                # 14
            key: where
        """,
    )
    protected, problems = resolve(rules, SHOP)
    errors = messages(problems)
    expected = [
        (3, "table missing does not exist in search_path public"),
        (4, "public.nokey has no primary key: set key:"),
        (5, "key column 'nope' is not a column of public.customers"),
        (5, "column 'ghost' is not a column of public.customers"),
        (5, "group column 'phantom' is not a column of public.customers"),
        (
            5,
            "column public.customers.profile (json) has no equality operator and cannot be checked",
        ),
        (9, "version column public.accounts.owner (text) must be an integer or numeric type"),
        (11, "version column app.ledger.seq (posint) must be timestamp or timestamptz"),
        (14, "key column public.places.where (point) has no equality operator"),
    ]
    for line, text in expected:
        assert any(n == line and text in msg for n, msg in errors), (line, text, errors)
    assert len(errors) == len(expected), errors
    assert protected == {}


def test_resolve_off_rules_downgrade_errors_and_are_left_out(tmp_path):
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        tables:
          - table: missing
            mode: off
          - table: accounts
            version_column: version
            mode: off
        """,
    )
    protected, problems = resolve(rules, SHOP)
    assert protected == {}
    assert [(p.severity, p.line) for p in problems] == [("warning", 3)]
    assert problems[0].message.endswith("(rule is mode: off)")


def test_resolve_nullable_version_is_a_warning_and_json_never_is_fine(tmp_path):
    shop = catalog(
        (7, "public", "docs", [col("id", INT, pk=True), col("body", JSON), col("rev", INT)])
    )
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        tables:
          - table: docs
            version_column: rev
        """,
    )
    protected, problems = resolve(rules, shop)
    assert [p.severity for p in problems] == ["warning"] and "allows NULL" in problems[0].message
    assert str(problems[0]) == f"{tmp_path / 'rules.yaml'}:3: warning: {problems[0].message}"
    assert 7 in protected


def test_resolve_grouped_never_column_is_still_checked(tmp_path):
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        tables:
          - table: customers
            check: never
            groups: [[last_name, profile]]
        """,
    )
    protected, problems = resolve(rules, SHOP)
    assert [line for line, _ in messages(problems)] == [3]
    assert "customers.profile (json) has no equality operator" in problems[0].message
    assert protected == {}


def test_resolve_key_column_in_overrides_and_version_in_primary_key(tmp_path):
    shop = catalog(
        (
            8,
            "public",
            "t",
            [col("id", INT, pk=True), col("v", INT, pk=True, not_null=True), col("x")],
        )
    )
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        tables:
          - table: t
            columns: {id: any}
        """,
    )
    _, problems = resolve(rules, shop)
    assert [m for _, m in messages(problems)] == [
        "column 'id' is part of the key of public.t; key columns are never checked, remove it from columns"
    ]
    rules = ruleset_of(tmp_path, "version: 1\ntables:\n  - table: t\n    version_column: v\n")
    _, problems = resolve(rules, shop)
    assert [m for _, m in messages(problems)] == [
        "version column public.t.v (integer) is part of the key"
    ]


def test_resolve_same_table_through_two_names(tmp_path):
    rules = ruleset_of(
        tmp_path,
        """
        version: 1
        search_path: [public, app]
        tables:
          - table: ledger
            version_column: seq
          - table: app.ledger
            version_column: seq
        """,
    )
    protected, problems = resolve(rules, SHOP)
    assert messages(problems) == [
        (6, f"app.ledger already has a rule at {tmp_path / 'rules.yaml'}:4; one rule per table")
    ]
    assert list(protected) == [1003]


# --- whatever a file holds, the loader answers with rules or RuleError, never a crash ------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, width=16),
    st.sampled_from(["x", "id", "version", "any", "off", "a.b", '"Q"', "", "a b"]),
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "table",
            "key",
            "strategy",
            "version_column",
            "bump",
            "check",
            "columns",
            "groups",
            "sparse_update",
            "mode",
            "unknown_original",
            "unverified",
            "scope",
            "notify",
            "version",
            "tables",
            "defaults",
            "search_path",
            "id",
            "x",
        ]
    ),
    st.integers(0, 2),
    st.none(),
    st.booleans(),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)


ENTRIES = st.lists(
    st.builds(
        lambda name, rest: {"table": name, **rest},
        st.sampled_from(["a", "s.b", "A"]),
        st.dictionaries(KEYS, JUNK, max_size=4),
    ),
    max_size=3,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, JUNK, max_size=4), st.booleans(), st.one_of(st.none(), ENTRIES))
def test_any_document_gives_rules_or_rule_error(document, valid_header, entries):
    if valid_header:
        document = {**document, "version": 1}
    if entries is not None:
        document = {**document, "tables": entries}
    text = yaml.safe_dump(document, sort_keys=False)
    try:
        _load_text(text)
    except RuleError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
