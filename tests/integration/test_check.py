"""`optimist check` against a real database: the shipped example passes, and every kind of
problem a rule can have with the database is reported at its rule's line."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from proxy.check import EXIT_OK, EXIT_PROBLEMS, EXIT_UPSTREAM, check

REPO = Path(__file__).resolve().parents[2]

# what the problem rules below are checked against (next to the example schema)
PROBLEM_SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.no_key (a integer, b text);
CREATE TABLE shop.docs (id integer PRIMARY KEY, body json, title text, rev integer);
CREATE TABLE shop.text_version (id integer PRIMARY KEY, version text NOT NULL);
CREATE TABLE shop.int_stamp (id integer PRIMARY KEY, changed integer NOT NULL);
CREATE TABLE shop.places (spot point, name text);
CREATE VIEW shop.a_view AS SELECT 1 AS id;
"""


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


@pytest.fixture(scope="module")
def db(upstream_dsn):
    """A database of its own holding the example schema (in public) and the shop schema."""
    name = f"optimist_check_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(upstream_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(upstream_dsn, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((REPO / "rules" / "example-schema.sql").read_text())
            conn.execute(PROBLEM_SCHEMA)
        yield dsn
    finally:
        with psycopg.connect(upstream_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_example_rules_fit_the_example_schema(db):
    code, lines = check([REPO / "rules" / "example.yaml"], db)
    assert code == EXIT_OK, lines
    assert lines == [lines[-1]] and lines[-1].startswith(
        "rules fit the database: 4 protected tables, 0 errors, 0 warnings"
    )


def test_example_rules_do_not_fit_an_empty_database(upstream_dsn, tmp_path):
    rules = write(tmp_path, "version: 1\nsearch_path: [nowhere]\ntables:\n  - table: accounts\n")
    code, lines = check([rules], upstream_dsn)
    assert code == EXIT_PROBLEMS
    assert lines[0] == (
        f"{rules}:4: error: table accounts does not exist in search_path "
        "nowhere (only tables can be protected, not views)"
    )


PROBLEM_RULES = """
version: 1
search_path: [shop]
tables:
  - table: missing                       # 4
  - table: a_view                        # 5
  - table: no_key                        # 6
  - table: docs                          # 7
    key: [id, ghost_key]
    columns: {ghost: any}
    groups: [[title, phantom]]
  - table: docs_v                        # 11
    strategy: version
    version_column: nope
  - table: text_version                  # 14
    version_column: version
  - table: int_stamp                     # 16
    version_column: changed
    bump: timestamp
  - table: places                        # 19
    key: spot
  - table: public.customers              # 21
    check: never
    groups: [[first_name, last_name]]
    columns: {id: any}
  - table: public.reports                # 25
    check: any                           # the json attachment would be checked
  - table: public.products               # 27
    strategy: columns
    mode: off
    columns: {nothing: never}
"""

# (line, severity, message fragment): one per problem kind
EXPECTED = [
    (4, "error", "table missing does not exist in search_path shop"),
    (5, "error", "table a_view does not exist in search_path shop (only tables can be protected"),
    (6, "error", "shop.no_key has no primary key: set key:"),
    (7, "error", "key column 'ghost_key' is not a column of shop.docs"),
    (7, "error", "column 'ghost' is not a column of shop.docs"),
    (7, "error", "group column 'phantom' is not a column of shop.docs"),
    (7, "error", "column shop.docs.body (json) has no equality operator and cannot be checked"),
    (11, "error", "table docs_v does not exist"),
    (
        14,
        "error",
        "version column shop.text_version.version (text) must be an integer or numeric type",
    ),
    (
        16,
        "error",
        "version column shop.int_stamp.changed (integer) must be timestamp or timestamptz",
    ),
    (19, "error", "key column shop.places.spot (point) has no equality operator"),
    (21, "error", "column 'id' is part of the key of public.customers"),
    (25, "error", "column public.reports.attachment (json) has no equality operator"),
    (27, "warning", "column 'nothing' is not a column of public.products (rule is mode: off)"),
]


def test_every_problem_kind_is_reported_at_its_rule(db, tmp_path):
    rules = write(tmp_path, PROBLEM_RULES)
    code, lines = check([rules], db)
    assert code == EXIT_PROBLEMS
    *problems, summary = lines
    for line, severity, fragment in EXPECTED:
        prefix = f"{rules}:{line}: {severity}: "
        assert any(p.startswith(prefix) and fragment in p for p in problems), (
            prefix,
            fragment,
            lines,
        )
    assert len(problems) == len(EXPECTED), lines
    assert summary.startswith(
        f"rules do not fit the database: {len(EXPECTED) - 1} errors, 1 warning"
    )


def test_nullable_version_is_only_a_warning(db, tmp_path):
    rules = write(
        tmp_path,
        """
        version: 1
        tables:
          - table: shop.docs
            version_column: rev
            bump: none
        """,
    )
    code, lines = check([rules], db)
    assert code == EXIT_OK, lines
    assert lines[0].startswith(
        f"{rules}:3: warning: version column shop.docs.rev (integer) allows NULL"
    )
    assert lines[1].startswith("rules fit the database: 1 protected table, 0 errors, 1 warning")


def test_invalid_files_fail_before_the_database_is_asked(tmp_path):
    rules = write(
        tmp_path,
        """
        version: 1
        tables:
          - table: accounts
            stratgy: version
        """,
    )
    # the upstream is unreachable, yet the answer is about the file: it is checked first
    code, lines = check([rules], "postgresql://postgres@127.0.0.1:1/none")
    assert code == EXIT_PROBLEMS
    assert lines == [
        f"{rules}:4: error: unknown setting 'stratgy' (did you mean 'strategy'?)",
        "rules are invalid: 1 error",
    ]


def test_without_upstream_only_the_files_are_checked():
    code, lines = check([REPO / "rules" / "example.yaml"], None)
    assert code == EXIT_OK
    assert lines[0].startswith("rules are valid: 4 table rules in 1 file (rules version ")


def test_unreachable_upstream_is_its_own_exit_code():
    code, lines = check([REPO / "rules" / "example.yaml"], "postgresql://postgres@127.0.0.1:1/none")
    assert code == EXIT_UPSTREAM
    assert lines[0].startswith("error: cannot read the catalog from the upstream:")
