"""A fresh database with a schema for optimistic-locking tests, and a proxy with given rules."""

from __future__ import annotations

import textwrap
import uuid

from tests.support.pgutil import connect

SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(14,2) NOT NULL,
                       version int NOT NULL DEFAULT 1);
CREATE TABLE customers (id int PRIMARY KEY, salutation text, first_name text, last_name text,
                        credit_limit numeric(12,2), credit_score int, notes text);
CREATE TABLE reports (id int PRIMARY KEY, title text, status text, approved_by text);
CREATE TABLE items (id int PRIMARY KEY, name text, qty int,
                    modified_at timestamptz NOT NULL DEFAULT '2000-01-01');
CREATE TABLE docs (id int PRIMARY KEY, body text, rev int NOT NULL DEFAULT 1);
CREATE FUNCTION docs_rev() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.rev := OLD.rev + 1; RETURN NEW; END $$;
CREATE TRIGGER docs_rev BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION docs_rev();
CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL, version int NOT NULL DEFAULT 1);
CREATE TABLE pairs (a int, b text, v int NOT NULL DEFAULT 1, payload text, PRIMARY KEY (a, b));
INSERT INTO accounts VALUES (1, 'Sue', 100, 1), (2, 'Lou', 200, 1), (3, 'Ann', 300, 1);
INSERT INTO customers VALUES (1, 'Ms', 'Sue', 'Smith', 5000, 700, 'vip'),
                             (2, 'Mr', 'Lou', 'Jones', 2000, 600, NULL);
INSERT INTO reports VALUES (1, 'Lyon', 'submitted', NULL);
INSERT INTO items VALUES (1, 'mug', 10), (2, 'cup', 5);
INSERT INTO docs VALUES (1, 'draft', 1);
INSERT INTO counters SELECT g, 0, 1 FROM generate_series(1, 4) g;
INSERT INTO pairs VALUES (1, 'x', 1, 'p'), (1, 'y', 1, 'q');
"""

VERSION_RULES = """
version: 1
tables:
  - table: accounts
    strategy: version
    version_column: version
  - table: counters
    strategy: version
    version_column: version
  - table: pairs
    strategy: version
    version_column: v
"""


def make_database(admin_dsn: str, schema: str = SCHEMA) -> str:
    """A new database loaded with `schema`; returns its name."""
    name = "lock_" + uuid.uuid4().hex[:10]
    with connect(admin_dsn) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    with connect(dsn) as c:
        c.execute(schema)
    return name


def write_rules(tmp_path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path
