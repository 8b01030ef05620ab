"""A read value is compared, at the write, in the domain it was read in: never a conflict for
a row written back unchanged whatever the settings did in between, always one for a real
change, even one a lossy equality (citext) would miss. Through the real proxy, read in text
(simple and extended protocol) and binary, written in both protocols."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.integration.test_locking_core import Locking

SCHEMA = """
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
"""

# name -> (SQL type, initial value, a different value)
TYPES = {
    "float8": ("float8", "0.1::float8 + 0.2::float8", "0.5"),
    "float8max": ("float8", "'1.7976931348623157e+308'", "1"),
    "float4": ("float4", "'0.1'", "0.2"),
    "numeric": ("numeric", "'1.23456789012345678901234567890123456789'", "1"),
    "timestamp": ("timestamp", "'2024-02-01 10:11:12.5'", "'2024-01-02 10:11:12.5'"),
    "timestamptz": ("timestamptz", "'2024-02-01 10:11:12+00'", "'2024-02-01 10:11:13+00'"),
    "date": ("date", "'2024-02-01'", "'2024-01-02'"),
    "time": ("time", "'10:11:12.25'", "'10:11:13'"),
    "timetz": ("timetz", "'10:11:12+05:30'", "'10:11:12+00'"),
    "interval": ("interval", "'-1 mon 2 days -00:00:03'", "'1 mon -2 days'"),
    "money": ("money", "'12.34'", "'12.35'"),
    "bytea": ("bytea", "'\\x00ff5c27'::bytea", "'\\x00'::bytea"),
    "text": ("text", "'héllo'", "'hello'"),
    "citext": ("citext", "'alice'", "'Alice'"),
    "varchar": ("varchar(20)", "'abc'", "'abd'"),
    "uuid": ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "gen_random_uuid()"),
    "jsonb": ("jsonb", '\'{"a": [1, 2.50]}\'', '\'{"a": [1, 2.5, 3]}\''),
    "tstz_array": (
        "timestamptz[]",
        "ARRAY['2024-02-01 10:00+00', '2024-03-01 00:00+00']::timestamptz[]",
        "ARRAY['2024-02-01 10:00+00']::timestamptz[]",
    ),
    "float_array": ("float8[]", "ARRAY[0.1::float8 + 0.2::float8, 1e300]", "ARRAY[0.3]"),
    "enum": ("mood", "'ok'", "'happy'"),
    "domain": ("posint", "7", "8"),
    "range": ("tstzrange", "'[2024-02-01 00:00+00, 2024-02-02 00:00+00)'", "'empty'"),
}

RULES = "version: 1\ntables:\n" + "".join(
    f"  - table: v_{name}\n    strategy: columns\n    check: any\n    columns:\n      note: never\n"
    for name in TYPES
)

SETTINGS = {
    "DateStyle": ["ISO, MDY", "SQL, DMY", "Postgres, MDY", "German", "SQL, MDY"],
    "IntervalStyle": ["postgres", "sql_standard", "iso_8601", "postgres_verbose"],
    "TimeZone": ["UTC", "Asia/Kolkata", "America/New_York", "Australia/Lord_Howe"],
    "extra_float_digits": ["-15", "0", "1", "3"],
    "bytea_output": ["hex", "escape"],
    "standard_conforming_strings": ["on", "off"],
    "client_encoding": ["UTF8", "LATIN1"],
    # the OS must have these locales (.ci/run generates them): lc_monetary is checked at SET
    "lc_monetary": ["C", "en_US.UTF-8", "de_DE.UTF-8"],
}


def _setup(locking):
    with psycopg.connect(locking.direct, autocommit=True) as c:
        c.execute(SCHEMA)
        for name, (sql_type, initial, _) in TYPES.items():
            c.execute(f"CREATE TABLE v_{name} (id int PRIMARY KEY, v {sql_type}, note text)")
            c.execute(f"INSERT INTO v_{name} VALUES (1, {initial}, '')")
    locking.start(RULES)


@pytest.fixture(scope="module")
def values_locking(pg, session_proxy_factory, tmp_path_factory):
    locking = Locking(pg, session_proxy_factory, tmp_path_factory.mktemp("values"))
    _setup(locking)
    return locking


def _set(conn, setting: dict[str, str]) -> None:
    for name, value in setting.items():
        conn.execute(f"SET {name} = '{value}'")


def _reset(direct: str, name: str) -> None:
    _, initial, _ = TYPES[name]
    with psycopg.connect(direct, autocommit=True) as c:
        c.execute(f"UPDATE v_{name} SET v = {initial}, note = '' WHERE id = 1")


def scenario(
    dsn: str,
    direct: str,
    name: str,
    read: str,
    write: str,
    at_read: dict[str, str],
    at_write: dict[str, str],
    change: bool,
) -> str:
    """Read v_<name> row 1 (read: 'simple', 'extended' or 'binary') under `at_read`, switch to
    `at_write`, let another session change the value (`change`), write the row's note
    (write: 'simple' or 'extended'): 'ok' or 'conflict'."""
    _reset(direct, name)
    with psycopg.connect(dsn, autocommit=True) as a:
        _set(a, at_read)
        if read == "simple":
            cur = psycopg.ClientCursor(a)
        else:
            cur = a.cursor(binary=read == "binary")
        # psycopg sends a statement without parameters as a simple Query: the parameter makes
        # it an extended-protocol one (the ClientCursor inlines it: a simple Query)
        cur.execute(f"SELECT id, v, note FROM v_{name} WHERE id = %s", (1,))
        assert cur.rowcount == 1  # rows not decoded: the client may not read them all
        _set(a, at_write)
        if change:
            with psycopg.connect(direct, autocommit=True) as b:
                b.execute(f"UPDATE v_{name} SET v = {TYPES[name][2]} WHERE id = 1")
        writer = psycopg.ClientCursor(a) if write == "simple" else a.cursor()
        try:
            writer.execute(f"UPDATE v_{name} SET note = 'w' WHERE id = %s", (1,))
        except psycopg.errors.SerializationFailure:
            return "conflict"
        return "ok"


# types with no exact text form of their binary values: read in binary, written in a simple
# query, they are counted unverified (binary_read), not compared
NO_BINARY_TEXT = {"money", "timetz", "citext", "tstz_array", "float_array", "enum", "range"}


def expected_on_change(name: str, read: str, write: str) -> str:
    if read == "binary" and write == "simple" and name in NO_BINARY_TEXT:
        return "ok"
    return "conflict"


MODES = [(r, w) for r in ("simple", "extended", "binary") for w in ("simple", "extended")]

# each reported case of issue "No false conflict", item 2 and 3
CASES = [
    ("float8", {"extra_float_digits": "0"}, {"extra_float_digits": "1"}),
    ("float8max", {"extra_float_digits": "0"}, {}),
    ("timestamptz", {"TimeZone": "Asia/Kolkata", "DateStyle": "SQL, MDY"}, {}),
    ("timestamptz", {"TimeZone": "Asia/Kolkata", "DateStyle": "Postgres, MDY"}, {}),
    ("date", {"DateStyle": "SQL, DMY"}, {"DateStyle": "ISO, MDY"}),
    ("date", {"DateStyle": "German"}, {"DateStyle": "ISO, MDY"}),
    ("interval", {"IntervalStyle": "sql_standard"}, {"IntervalStyle": "postgres"}),
    ("numeric", {}, {}),
    ("citext", {}, {}),
    # read as $12.34, checked while the session prints 12,34 € (and back)
    ("money", {"lc_monetary": "en_US.UTF-8"}, {"lc_monetary": "de_DE.UTF-8"}),
    ("money", {"lc_monetary": "de_DE.UTF-8"}, {"lc_monetary": "en_US.UTF-8"}),
    ("money", {"lc_monetary": "de_DE.UTF-8"}, {}),
]


@pytest.mark.parametrize("read,write", MODES)
@pytest.mark.parametrize("name,at_read,at_write", CASES)
def test_unchanged_row_never_conflicts_and_a_change_always_does(
    values_locking, name, at_read, at_write, read, write
):
    loc = values_locking
    assert scenario(loc.dsn, loc.direct, name, read, write, at_read, at_write, False) == "ok"
    assert scenario(
        loc.dsn, loc.direct, name, read, write, at_read, at_write, True
    ) == expected_on_change(name, read, write)


def test_the_monetary_locales_exist(values_locking):
    """The lc_monetary cases need the OS's en_US and de_DE locales (PostgreSQL checks the
    name at SET): `.ci/run` generates them; elsewhere `localedef -i de_DE -f UTF-8 de_DE.UTF-8`."""
    with psycopg.connect(values_locking.direct, autocommit=True) as c:
        for locale, shown in (("en_US.UTF-8", "$1,234.50"), ("de_DE.UTF-8", "1.234,50 €")):
            c.execute(f"SET lc_monetary = '{locale}'")
            assert c.execute("SELECT 1234.5::money::text").fetchone() == (shown,)


def test_citext_case_change_is_a_lost_update_without_the_proxy(values_locking):
    """The same race directly against PostgreSQL: nothing stops the write (the proxy must)."""
    loc = values_locking
    assert scenario(loc.direct, loc.direct, "citext", "simple", "simple", {}, {}, True) == "ok"
    assert scenario(loc.dsn, loc.direct, "citext", "simple", "simple", {}, {}, True) == ("conflict")


def test_set_config_makes_the_settings_unknown_not_guessed(values_locking):
    """A setting changed where the proxy cannot follow it: the write passes unverified
    (settings_unknown), it is not refused by guess."""
    loc = values_locking
    _reset(loc.direct, "float8")
    with psycopg.connect(loc.dsn, autocommit=True) as a:
        a.execute("SELECT set_config('extra_float_digits', '0', false)")
        a.execute("SELECT id, v, note FROM v_float8 WHERE id = 1").fetchall()
        a.execute("RESET extra_float_digits")
        a.execute("UPDATE v_float8 SET note = 'w' WHERE id = 1")  # no false conflict


setting_values = st.fixed_dictionaries(
    {}, optional={k: st.sampled_from(v) for k, v in SETTINGS.items()}
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(sorted(TYPES)),
    modes=st.sampled_from(MODES),
    at_read=setting_values,
    at_write=setting_values,
)
def test_property_written_back_unchanged_never_conflicts(
    values_locking, name, modes, at_read, at_write
):
    loc = values_locking
    read, write = modes
    # a money value printed with € under a LATIN1 client_encoding cannot reach the client:
    # PostgreSQL refuses the read (22P05), and the RETURNING items a checked write adds (to
    # learn the row) the same way, a known gap (the write itself would pass without them)
    assume(
        name != "money"
        or not any(
            s.get("client_encoding") == "LATIN1" and s.get("lc_monetary") == "de_DE.UTF-8"
            for s in (at_read, {**at_read, **at_write})
        )
    )
    assert scenario(loc.dsn, loc.direct, name, read, write, at_read, at_write, False) == "ok"
    assert scenario(
        loc.dsn, loc.direct, name, read, write, at_read, at_write, True
    ) == expected_on_change(name, read, write)
