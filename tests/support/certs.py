"""Throw-away TLS material for tests: a CA and server certificates it signs, made with the
``openssl`` command line (the ``cryptography`` package is not a dependency of the project).

>>> ca = make_ca(tmp_path)                      # ca.cert, ca.key
>>> srv = make_server_cert(ca, tmp_path / "a")  # srv.cert, srv.key: SAN localhost, 127.0.0.1

Everything lives under the directory given; keys are unencrypted EC P-256 (fast to make)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "CA",
    "ServerCert",
    "make_ca",
    "make_server_cert",
    "openssl",
    "require_openssl",
    "der_of",
    "ssl_postgres_bin_dir",
    "install_server_cert",
]


def openssl() -> str | None:
    return shutil.which("openssl")


def require_openssl() -> str:
    path = openssl()
    if path is None:
        pytest.skip(
            "no openssl command line to make test certificates (and the cryptography "
            "package is not installed)"
        )
    return path


def _run(*args: str, cwd: Path) -> None:
    res = subprocess.run(
        [require_openssl(), *args],
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")


@dataclass
class CA:
    cert: Path
    key: Path
    subject: str


@dataclass
class ServerCert:
    cert: Path
    key: Path
    subject: str
    serial: int

    @property
    def der(self) -> bytes:
        return der_of(self.cert)


def make_ca(directory: Path, name: str = "optimist test CA") -> CA:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "ca.key", directory / "ca.crt"
    _run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "3",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return CA(cert, key, name)


def make_server_cert(
    ca: CA,
    directory: Path,
    common_name: str = "localhost",
    serial: int = 1001,
    sans: str = "DNS:localhost,IP:127.0.0.1",
) -> ServerCert:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(
        f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _run(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={common_name}",
        cwd=directory,
    )
    _run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-set_serial",
        str(serial),
        "-days",
        "3",
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
        cwd=directory,
    )
    key.chmod(0o600)
    return ServerCert(cert, key, common_name, serial)


def der_of(pem_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(pem_file).read_text())


# --------------------------------------------------------------------------- PostgreSQL with TLS


def _ssl_capable(bin_dir: Path) -> bool:
    """Was this ``postgres`` built with OpenSSL? (the embedded wheel's is not)"""
    postgres = bin_dir / "postgres"
    if not postgres.exists():
        return False
    try:
        out = subprocess.run(
            ["ldd", str(postgres)], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if "libssl" in out:
        return True
    try:
        return b"SSL is not supported by this build" not in postgres.read_bytes()
    except OSError:
        return False


def ssl_postgres_bin_dir() -> Path:
    """A PostgreSQL server installation built with SSL, or skip the test."""
    from proxy.embedded import _system_bin_dirs, find_bin_dir

    candidates = []
    if os.environ.get("OPTIMIST_PG_SSL_BIN"):
        candidates.append(Path(os.environ["OPTIMIST_PG_SSL_BIN"]))
    try:
        candidates.append(find_bin_dir())
    except Exception:
        pass
    candidates += _system_bin_dirs()
    for d in candidates:
        if _ssl_capable(d):
            return d
    pytest.skip(
        "no PostgreSQL server built with SSL on this machine (the embedded wheel's is "
        "not; install Debian's postgresql or set OPTIMIST_PG_SSL_BIN)"
    )


def install_server_cert(server, cert: ServerCert, extra: dict | None = None) -> None:
    """Copy `cert` into a (started) EmbeddedPostgres' data directory, owned like it, turn ssl
    on and restart it on the same port."""
    data = Path(server.data_dir)
    st = data.stat()
    for src, name in ((cert.cert, "server.crt"), (cert.key, "server.key")):
        dst = data / name
        shutil.copyfile(src, dst)
        os.chown(dst, st.st_uid, st.st_gid)
        dst.chmod(0o600)
    settings = {"ssl": True, "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}
    if isinstance(server.config, dict):
        settings = {**server.config, **settings}
    settings.update(extra or {})
    server.config = settings
    server.restart()
