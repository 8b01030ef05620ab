"""TLS contexts: toward clients (answering SSLRequest with 'S') and toward PostgreSQL."""

from __future__ import annotations

import logging
import ssl

from proxy.config import ConfigError

log = logging.getLogger("optimist.tls")

CLIENT_MODES = ("disable", "allow", "require")
UPSTREAM_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


def client_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The context offered to clients, or None when no certificate is configured."""
    if not cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert}: {exc}") from None
    return ctx


def upstream_context(mode: str, ca_file: str | None) -> ssl.SSLContext | None:
    """libpq's sslmode semantics: prefer/require encrypt without verifying; verify-ca checks
    the chain; verify-full also the host name."""
    if mode not in UPSTREAM_MODES:
        raise ConfigError(f"upstream_tls must be one of {', '.join(UPSTREAM_MODES)}")
    if mode == "disable":
        return None
    if mode in ("prefer", "require"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if not ca_file:
        raise ConfigError(f"upstream_tls {mode} needs upstream_tls_ca (a CA certificate file)")
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA file {ca_file}: {exc}") from None
    ctx.check_hostname = mode == "verify-full"
    return ctx
