"""Binary values read by one protocol come back as text literals in another: every text form the
proxy derives from a binary value must mean the same value to PostgreSQL."""

import psycopg
import pytest

from proxy.values import binary_to_text

CASES = [
    ("'2026-11-22 01:02:03.456789+00'::timestamptz", "timestamptz"),
    ("'1970-01-01 00:00:00+00'::timestamptz", "timestamptz"),
    ("'infinity'::timestamptz", "timestamptz"),
    ("'2026-11-22 01:02:03'::timestamp", "timestamp"),
    ("'1999-12-31'::date", "date"),
    ("'13:14:15.5'::time", "time"),
    ("'1 mon 2 days 3.25 sec'::interval", "interval"),
    ("'\\xdeadbeef'::bytea", "bytea"),
    ("'{\"a\": [1, 2]}'::jsonb", "jsonb"),
    ("12345.678::numeric", "numeric"),
    ("(-0.5)::numeric", "numeric"),
    ("0::numeric", "numeric"),
    ("'NaN'::numeric", "numeric"),
    ("1e-20::numeric", "numeric"),
    ("true", "bool"),
    ("(-7)::int8", "int8"),
    ("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", "uuid"),
    ("3.5::float8", "float8"),
    ("'héllo'::text", "text"),
]


SEND = {
    "timestamptz": "timestamptz_send",
    "timestamp": "timestamp_send",
    "date": "date_send",
    "time": "time_send",
    "interval": "interval_send",
    "jsonb": "jsonb_send",
    "numeric": "numeric_send",
    "uuid": "uuid_send",
    "bytea": "byteasend",
    "bool": "boolsend",
    "int8": "int8send",
    "float8": "float8send",
    "text": "textsend",
}


@pytest.mark.parametrize("expr,type_name", CASES)
def test_text_form_of_binary_value_is_equal_in_sql(upstream_dsn, expr, type_name):
    with psycopg.connect(upstream_dsn, autocommit=True) as c:
        raw, oid = c.execute(
            f"SELECT {SEND[type_name]}({expr}), pg_typeof({expr})::oid::int"
        ).fetchone()
        text = binary_to_text(oid, bytes(raw))
        (same,) = c.execute(
            f"SELECT %s::{type_name} IS NOT DISTINCT FROM {expr}", (text,)
        ).fetchone()
    assert same, f"{expr}: binary -> {text!r} is not the same value"
