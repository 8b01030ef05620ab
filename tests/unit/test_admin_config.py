"""The example configuration loads, and the admin settings parse from every source."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from proxy.config import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "optimist.toml"


def test_example_configuration_loads_and_names_every_setting():
    settings = load_settings({"config": str(EXAMPLE)}, environ={})
    assert settings.admin_users == ["postgres"]
    assert settings.upstream == "postgresql://127.0.0.1:5432"
    text = EXAMPLE.read_text()
    missing = [f.name for f in fields(Settings) if f.name not in text]
    assert not missing, f"deploy/optimist.toml does not mention {missing}"


def test_admin_users_from_flags_and_environment():
    cli = {"admin_users": ["ops, postgres", "dba"]}
    assert load_settings(cli, environ={}).admin_users == ["ops", "postgres", "dba"]
    env = {"OPTIMIST_ADMIN_USERS": "ops,dba"}
    assert load_settings({}, environ=env).admin_users == ["ops", "dba"]
    assert load_settings({}, environ={}).admin_users == []
