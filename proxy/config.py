"""Settings: command line over environment (OPTIMIST_*) over config file (TOML) over defaults."""

from __future__ import annotations

import errno
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlparse


class ConfigError(Exception):
    pass


@dataclass
class Endpoint:
    host: str
    port: int
    unix_socket: str | None = None  # a directory holding .s.PGSQL.<port>

    def __str__(self) -> str:
        return (
            self.unix_socket
            and f"{self.unix_socket}/.s.PGSQL.{self.port}"
            or f"{self.host}:{self.port}"
        )


def cannot_listen(endpoint: Endpoint, exc: OSError, option: str) -> ConfigError:
    """A bind failure as one line saying what to do (not asyncio's traceback)."""
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    hint = (
        f"is another optimist running? use {option}"
        if exc.errno == errno.EADDRINUSE
        else f"use {option}"
    )
    return ConfigError(f"cannot listen on {endpoint}: {reason} ({hint})")


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def parse_hostport(value: str, default_port: int) -> Endpoint:
    """`host:port`, `[v6]:port`, a bare `port` (on 127.0.0.1, as PgBouncer's listen_port),
    a Unix socket directory, or a postgresql:// URL."""
    value = value.strip()
    if "://" in value and not value.startswith(POSTGRES_SCHEMES):
        scheme = value.split("://", 1)[0]
        raise ConfigError(
            f"{value!r}: the URL scheme must be postgresql:// or postgres://, not {scheme}://"
        )
    if value.isdigit():
        return Endpoint("127.0.0.1", int(value))
    if value.startswith(POSTGRES_SCHEMES):
        url = urlparse(value)
        host = unquote(url.hostname or "127.0.0.1")
        try:
            port = url.port or default_port
        except ValueError:
            raise ConfigError(f"invalid port in {value!r}") from None
        if host.startswith("/"):
            return Endpoint(host, port, unix_socket=host)
        return Endpoint(host, port)
    if value.startswith("/"):
        return Endpoint(value, default_port, unix_socket=value)
    host, sep, port = value.rpartition(":")  # type: ignore[assignment]  # text: the URL branch returned
    if not sep:
        return Endpoint(value, default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        return Endpoint(host, int(port))
    except ValueError:
        raise ConfigError(f"invalid port in {value!r}") from None


@dataclass
class Settings:
    listen: str = "127.0.0.1:6432"
    upstream: str | None = None
    rules: list[str] = field(default_factory=list)
    metrics: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    drain_timeout: float = 30.0
    conflict_sqlstate: str = "40001"
    # "transaction": a transaction pooler sits between optimist and PostgreSQL, so nothing
    # lives on a server connection beyond one transaction (no pg_temp guards, the checked
    # form of an extended-protocol write prepared at each Bind)
    pooler_mode: str = "session"
    # where `optimist install` puts the guard functions; used instead of pg_temp when there
    guard_schema: str = "optimist"
    snapshot_rows_per_session: int = 10000
    snapshot_rows_total: int = 1000000
    rewrite_cache_size: int = 10000
    # seconds between checks that the protected tables' catalog did not change under DDL run
    # elsewhere (DDL through this proxy is seen at once); 0 turns the check off
    catalog_check_interval: float = 10.0
    data_dir: str | None = None
    workers: int = 1
    # TLS toward clients: a certificate enables it; client_tls "require" refuses plaintext
    tls_cert: str | None = None
    tls_key: str | None = None
    client_tls: str = "allow"
    # TLS toward PostgreSQL, as libpq's sslmode
    upstream_tls: str = "disable"
    upstream_tls_ca: str | None = None
    # limits (0 = off where PostgreSQL has no such limit either)
    max_client_connections: int = 1000
    max_message_size: int = 1 << 30
    auth_timeout: float = 60.0
    idle_timeout: float = 0.0
    query_timeout: float = 0.0
    # the admin console: roles that may connect to `admin_database` (empty: disabled);
    # PostgreSQL authenticates them against `admin_auth_database`
    admin_users: list[str] = field(default_factory=list)
    admin_database: str = "optimist"
    admin_auth_database: str = "postgres"

    @property
    def listen_endpoint(self) -> Endpoint:
        return parse_hostport(self.listen, 6432)

    @property
    def upstream_endpoint(self) -> Endpoint | None:
        return parse_hostport(self.upstream, 5432) if self.upstream else None


_LIST_FIELDS = {"rules", "admin_users"}
# how a list is written in one string (environment, command line)
_LIST_SEPARATORS = {"rules": os.pathsep, "admin_users": ","}


def _coerce(name: str, raw):
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if name in _LIST_FIELDS:
        if isinstance(raw, str):
            raw = raw.split(_LIST_SEPARATORS[name])
        elif name == "admin_users":  # --admin-users a,b --admin-users c
            raw = [part for item in raw for part in str(item).split(",")]
        return [str(p).strip() for p in raw if str(p).strip()]
    try:
        if "float" in str(kind):
            return float(raw)
        if "int" in str(kind) and "str" not in str(kind):
            return int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    return None if raw is None else str(raw)


def load_settings(cli: dict, environ=os.environ) -> Settings:
    """Merge the config file (`--config`/OPTIMIST_CONFIG), OPTIMIST_* variables and flags."""
    settings = Settings()
    names = {f.name for f in fields(Settings)}
    config_path = cli.get("config") or environ.get("OPTIMIST_CONFIG")
    if config_path:
        try:
            data = tomllib.loads(Path(config_path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: {exc}") from None
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"{config_path}: unknown setting {key!r}")
            setattr(settings, name, _coerce(name, value))
    for name in names:
        value = environ.get(f"OPTIMIST_{name.upper()}")
        if value not in (None, ""):
            setattr(settings, name, _coerce(name, value))
    for name, value in cli.items():
        if name in names and value not in (None, [], ()):
            setattr(settings, name, _coerce(name, value))
    if settings.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    if settings.pooler_mode not in ("session", "transaction"):
        raise ConfigError("pooler_mode must be 'session' or 'transaction'")
    if not settings.guard_schema or settings.guard_schema == "pg_temp":
        raise ConfigError("guard_schema must name a schema of its own (not pg_temp)")
    if settings.client_tls not in ("disable", "allow", "require"):
        raise ConfigError("client_tls must be disable, allow or require")
    if settings.client_tls == "require" and not settings.tls_cert:
        raise ConfigError("client_tls require needs tls_cert and tls_key")
    # bad addresses are refused now, in one line, not when something first connects
    for name, default_port in (("listen", 6432), ("upstream", 5432), ("metrics", 9187)):
        value = getattr(settings, name)
        if value:
            try:
                parse_hostport(value, default_port)
            except ConfigError as exc:
                raise ConfigError(f"--{name}: {exc}") from None
    return settings


def upstream_dsn(value: str) -> str:
    """A connection string for the tools (check, explain) from any --upstream form serve
    accepts; the host:port forms connect as user postgres to database postgres."""
    if value.startswith(POSTGRES_SCHEMES) or "=" in value:
        return value
    endpoint = parse_hostport(value, 5432)
    if endpoint.unix_socket:
        return f"postgresql://postgres@/postgres?host={endpoint.unix_socket}&port={endpoint.port}"
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"postgresql://postgres@{host}:{endpoint.port}/postgres"
