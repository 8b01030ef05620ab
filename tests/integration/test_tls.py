"""TLS on both hops: clients -> optimist (--tls-cert/--tls-key, --client-tls) and optimist ->
PostgreSQL (--upstream-tls, libpq's sslmode semantics), certificate reloads on SIGHUP, and
SCRAM-SHA-256 through a proxy that terminates TLS.

Certificates: a throw-away CA and server certificates for localhost/127.0.0.1 made with the
openssl command line in the test's temporary directory (tests/support/certs.py).

The upstream TLS tests need a PostgreSQL server built with SSL: the embedded wheel's is not, so
they use the system's (Debian's postgresql package) and skip with a reason when there is none.

SCRAM through the proxy, what clients must set
----------------------------------------------
optimist never sees passwords: the SCRAM exchange is relayed between the client and
PostgreSQL. When *both* hops use TLS, PostgreSQL offers SCRAM-SHA-256-PLUS (channel binding to
*its* TLS certificate, tls-server-end-point). A libpq client connected over TLS to the proxy
then picks the -PLUS variant (channel_binding=prefer, the default) and binds to the *proxy's*
certificate, which can never match the server's: authentication fails ("SCRAM channel binding
check failed"). Such clients must set ``channel_binding=disable`` (libpq connection string
parameter / PGCHANNELBINDING). ``channel_binding=require`` cannot work through a TLS-terminating
proxy at all. With a plaintext upstream hop the server offers no -PLUS variant and the default
works. asyncpg implements SCRAM-SHA-256 without channel binding and needs nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import time

import asyncpg
import psycopg
import pytest

from tests.support import RawClient, connect, psql_with_ssl, run_psql, wait_until
from tests.support.certs import install_server_cert, make_ca, make_server_cert, ssl_postgres_bin_dir
from tests.support.rawpg import query, ssl_request, startup_packet

pytestmark = pytest.mark.timeout(180)


# --------------------------------------------------------------------------- fixtures / helpers


class TLSFiles:
    def __init__(self, root):
        self.root = root
        self.ca = make_ca(root / "ca")
        self.server = make_server_cert(self.ca, root / "server", serial=1001)
        # what the proxy is started with: copies, so a test can replace them in place
        self.live = root / "live"
        self.live.mkdir()
        self.cert = self.live / "proxy.crt"
        self.key = self.live / "proxy.key"
        shutil.copyfile(self.server.cert, self.cert)
        shutil.copyfile(self.server.key, self.key)

    def args(self, *more: str) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key), *more)


@pytest.fixture(scope="module")
def tls_module(tmp_path_factory):
    return TLSFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls(tmp_path):
    return TLSFiles(tmp_path)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("other-ca"), name="some other CA")


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_cert_der(host: str, port: int, timeout: float = 10.0) -> bytes:
    """SSLRequest, 'S', a TLS handshake on a raw socket: the certificate the proxy presents."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(ssl_request())
        answer = sock.recv(1)
        assert answer == b"S", f"SSLRequest answered {answer!r}"
        # not at once: a ClientHello arriving right after the 'S' may be swallowed by the
        # proxy (see test_tls_handshake_right_after_s); this helper tests other things
        time.sleep(0.2)
        with _client_ctx().wrap_socket(sock, server_hostname="localhost") as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
    assert der
    return der


def eager_handshake(host: str, port: int, timeout: float) -> bytes:
    """Like a fast client: the ClientHello is ready before connecting and sent the moment the
    'S' arrives. Returns the peer certificate (DER)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_obj = _client_ctx().wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls_obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(ssl_request())
        assert sock.recv(1) == b"S"
        sock.sendall(hello)
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)  # socket.timeout when the handshake stalls
            if not data:
                raise EOFError("closed during the TLS handshake")
            incoming.write(data)
            try:
                tls_obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            out = outgoing.read()
            if out:
                sock.sendall(out)
            if done:
                return tls_obj.getpeercert(binary_form=True)


def error_fields(data: bytes) -> list[dict[str, str]]:
    """The fields of every ErrorResponse in a backend byte stream."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        kind = data[pos : pos + 1]
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        body = data[pos + 5 : pos + 1 + length]
        if kind == b"E":
            out.append({chr(p[0]): p[1:].decode(errors="replace") for p in body.split(b"\0") if p})
        pos += 1 + length
    return out


def startup_errors(p, user: str = "postgres") -> list[dict[str, str]]:
    """A plaintext StartupMessage on a raw socket: the ErrorResponses received until close."""
    with RawClient(p.host, p.port) as raw:
        raw.send(startup_packet(user=user))
        data, how = raw.read_until_close(10)
    assert how in ("eof", "reset"), f"connection left open: {data[:100]!r}"
    return error_fields(data)


def assert_serving(p) -> None:
    assert p.alive, p.describe()
    with connect(p.dsn) as c:
        assert c.execute("select 'still serving'").fetchone() == ("still serving",)


def ssl_dsn(p, tls_files, mode="verify-full", host=None, **params) -> str:
    params = {"sslmode": mode, "sslrootcert": str(tls_files.ca.cert), **params}
    dsn = p.dsn_for("postgres", **params)
    if host:
        dsn = dsn.replace(f"@{p.host}:", f"@{host}:")
    return dsn


# --------------------------------------------------------------------------- clients -> proxy


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_psycopg_tls_to_proxy(proxy_factory, tls_module, mode):
    p = proxy_factory(*tls_module.args())
    with psycopg.connect(ssl_dsn(p, tls_module, mode), connect_timeout=10, autocommit=True) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("select 40 + 2").fetchone() == (42,)
        # the server side of the hop is plaintext: TLS is the proxy's doing
        assert c.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (
            False,
        )
    assert_serving(p)


def test_psycopg_verify_full_by_host_name_and_wrong_ca(proxy_factory, tls_module, other_ca):
    p = proxy_factory(*tls_module.args())
    with psycopg.connect(
        ssl_dsn(p, tls_module, host="localhost"), connect_timeout=10, autocommit=True
    ) as c:
        assert c.pgconn.ssl_in_use and c.execute("select 1").fetchone() == (1,)
    wrong = p.dsn_for("postgres", sslmode="verify-full", sslrootcert=str(other_ca.cert))
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(wrong, connect_timeout=10)
    assert "certificate verify failed" in str(err.value)
    assert_serving(p)


def test_asyncpg_tls_to_proxy(proxy_factory, tls_module, other_ca):
    p = proxy_factory(*tls_module.args())

    async def scenario():
        out = []
        for mode in ("require", "verify-full"):
            conn = await asyncpg.connect(ssl_dsn(p, tls_module, mode), timeout=10)
            try:
                assert conn._transport.get_extra_info("ssl_object") is not None
                out.append(await conn.fetchval("select $1::int * 2", 21))
            finally:
                await conn.close()
        ctx = ssl.create_default_context(cafile=str(tls_module.ca.cert))
        conn = await asyncpg.connect(p.dsn, ssl=ctx, timeout=10)
        try:
            out.append(await conn.fetchval("select 'ctx ok'"))
        finally:
            await conn.close()
        wrong = ssl.create_default_context(cafile=str(other_ca.cert))
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncpg.connect(p.dsn, ssl=wrong, timeout=10)
        return out

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == [42, 42, "ctx ok"]
    assert_serving(p)


def test_psql_tls_to_proxy(proxy_factory, tls_module):
    psql = psql_with_ssl()
    if psql is None:
        pytest.skip(
            "no psql built with SSL support on this machine (the embedded wheel's "
            "libpq has none; install Debian's postgresql-client)"
        )
    p = proxy_factory(*tls_module.args())
    for mode in ("require", "verify-full"):
        res = run_psql(
            ssl_dsn(p, tls_module, mode), "-c", r"\conninfo", "-Atc", "select 'psql ok'", psql=psql
        )
        assert res.returncode == 0, res.stderr
        assert "SSL connection" in res.stdout, res.stdout
        assert res.stdout.strip().endswith("psql ok")
    assert_serving(p)


def test_client_tls_require_refuses_plaintext(proxy_factory, tls_module):
    p = proxy_factory(*tls_module.args("--client-tls", "require"))
    # libpq without TLS: refused with 28000 and a message saying what to do
    # (psycopg exposes no SQLSTATE for connection failures: the raw check below has it)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(p.dsn_for("postgres", sslmode="disable"), connect_timeout=10)
    assert "accepts TLS connections only" in str(err.value), err.value
    # the same on the wire: one FATAL ErrorResponse, then the connection is closed
    with RawClient(p.host, p.port) as raw:
        raw.send(startup_packet())
        data, how = raw.read_until_close(10)
    assert how in ("eof", "reset")
    errors = error_fields(data)
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "28000")], data
    assert data[:1] == b"E" and b"R\0\0\0\x08" not in data  # never reached authentication
    # TLS clients work; sslmode=prefer negotiates TLS
    with psycopg.connect(ssl_dsn(p, tls_module), connect_timeout=10, autocommit=True) as c:
        assert c.execute("select 'tls ok'").fetchone() == ("tls ok",)
    with psycopg.connect(p.dsn_for("postgres", sslmode="prefer"), connect_timeout=10) as c:
        assert c.pgconn.ssl_in_use
    assert p.alive


def test_plaintext_after_ssl_request_is_refused(proxy_factory, tls_module):
    p = proxy_factory(*tls_module.args())
    # 1. the startup packet in the same write as the SSLRequest (CVE-2021-23214 shape): it
    #    would be read as if it had come through TLS. Refused before any 'S'.
    with RawClient(p.host, p.port) as raw:
        raw.send(ssl_request() + startup_packet() + query("select 'smuggled'"))
        data, how = raw.read_until_close(10)
    assert how in ("eof", "reset")
    assert data[:1] == b"E", f"expected an ErrorResponse, got {data[:40]!r}"
    assert [e["C"] for e in error_fields(data)] == ["08P01"]
    assert b"smuggled" not in data
    # 2. 'S' received, then plaintext instead of a TLS ClientHello: the handshake fails and
    #    nothing is executed
    with RawClient(p.host, p.port) as raw:
        raw.send(ssl_request())
        assert raw.recv_byte() == b"S"
        raw.send(startup_packet() + query("select 'smuggled'"))
        data, how = raw.read_until_close(10)
    assert how in ("eof", "reset"), "connection left open after a failed TLS handshake"
    assert b"smuggled" not in data and b"Z\0\0\0\x05" not in data
    # 3. both of those with --client-tls require too, and TLS still works
    assert_serving(p)
    with psycopg.connect(ssl_dsn(p, tls_module), connect_timeout=10) as c:
        assert c.pgconn.ssl_in_use


def test_tls_handshake_right_after_s(proxy_factory, tls_module):
    """A client whose ClientHello follows the 'S' immediately (any fast client: asyncpg, a
    pooler, a JDBC driver on a warm JVM) must get its handshake. 30 attempts, 3 s each."""
    p = proxy_factory(*tls_module.args())
    expected = tls_module.server.der
    for attempt in range(30):
        try:
            der = eager_handshake(p.host, p.port, timeout=3)
        except (TimeoutError, EOFError, ssl.SSLError) as exc:
            pytest.fail(
                f"TLS handshake {attempt + 1}/30 with the ClientHello sent right after "
                f"the 'S' never completed: {exc!r}\n{p.stderr_text()[-2000:]}"
            )
        assert der == expected
    assert_serving(p)


def test_tls_handshake_never_started_is_closed_by_auth_timeout(proxy_factory, tls_module):
    p = proxy_factory(*tls_module.args("--auth-timeout", "1"))
    with RawClient(p.host, p.port) as raw:
        raw.send(ssl_request())
        assert raw.recv_byte() == b"S"
        t0 = time.monotonic()
        data, how = raw.read_until_close(8)
    assert how in ("eof", "reset"), "a client that never starts its handshake is kept forever"
    assert time.monotonic() - t0 < 4
    assert_serving(p)


def test_certificate_reload_on_sighup(proxy_factory, tls):
    p = proxy_factory(*tls.args())
    first = tls.server.der
    assert peer_cert_der(p.host, p.port) == first
    # a new certificate (other serial and subject, same SANs) replaces the files in place
    second = make_server_cert(tls.ca, tls.root / "second", common_name="localhost-2", serial=2002)
    assert second.der != first
    shutil.copyfile(second.key, tls.key)
    shutil.copyfile(second.cert, tls.cert)
    p.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: peer_cert_der(p.host, p.port) == second.der,
        timeout=10,
        what="new connections to see the new certificate",
    )
    with psycopg.connect(ssl_dsn(p, tls), connect_timeout=10, autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)
    # a broken replacement is refused and the certificate in force stays
    tls.cert.write_text(
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    )
    p.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: "TLS reload refused" in p.stderr_text(),
        timeout=10,
        what="the refused reload to be logged",
    )
    assert peer_cert_der(p.host, p.port) == second.der
    # a key that does not match the certificate: refused as well
    third = make_server_cert(tls.ca, tls.root / "third", common_name="localhost-3", serial=3003)
    shutil.copyfile(third.cert, tls.cert)  # but the key stays the second one's
    p.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: p.stderr_text().count("TLS reload refused") >= 2,
        timeout=10,
        what="the second refused reload to be logged",
    )
    assert peer_cert_der(p.host, p.port) == second.der
    with psycopg.connect(ssl_dsn(p, tls), connect_timeout=10, autocommit=True) as c:
        assert c.execute("select 'after refused reloads'").fetchone() == ("after refused reloads",)
    assert_serving(p)


def test_open_tls_sessions_survive_a_reload(proxy_factory, tls):
    p = proxy_factory(*tls.args())
    with psycopg.connect(ssl_dsn(p, tls), connect_timeout=10, autocommit=True) as c:
        second = make_server_cert(
            tls.ca, tls.root / "second", common_name="localhost-2", serial=2002
        )
        shutil.copyfile(second.key, tls.key)
        shutil.copyfile(second.cert, tls.cert)
        p.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: peer_cert_der(p.host, p.port) == second.der, timeout=10, what="the reload"
        )
        assert c.execute("select 'same session'").fetchone() == ("same session",)


# --------------------------------------------------------------------------- proxy -> PostgreSQL


@pytest.fixture(scope="module")
def upstream_tls_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream-tls")
    ca = make_ca(root / "ca", name="upstream CA")
    return ca, make_server_cert(ca, root / "server", serial=4004)


@pytest.fixture
def ssl_server(pg_factory, upstream_tls_files):
    bin_dir = ssl_postgres_bin_dir()
    server = pg_factory(bin_dir=bin_dir)
    install_server_cert(server, upstream_tls_files[1])
    return server


def server_ssl(dsn: str) -> bool:
    with connect(dsn) as c:
        return c.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_upstream_tls(proxy_factory, ssl_server, upstream_tls_files, mode):
    ca, _ = upstream_tls_files
    args = ["--upstream-tls", mode]
    if mode.startswith("verify"):
        args += ["--upstream-tls-ca", str(ca.cert)]
    p = proxy_factory(*args, upstream=(ssl_server.host, ssl_server.port))
    assert server_ssl(p.dsn) is True
    with connect(p.dsn) as c:
        c.execute("create temp table t (id int primary key, v text)")
        c.execute("insert into t select g, repeat('x', 1000) from generate_series(1, 2000) g")
        assert c.execute("select count(*), sum(length(v)) from t").fetchone() == (2000, 2000000)
    # a direct plaintext connection still sees ssl=false: the proxy really encrypts
    assert server_ssl(ssl_server.dsn) is False
    assert_serving(p)


def test_upstream_verify_full_with_wrong_ca_fails_cleanly(proxy_factory, ssl_server, other_ca):
    p = proxy_factory(
        "--upstream-tls",
        "verify-full",
        "--upstream-tls-ca",
        str(other_ca.cert),
        upstream=(ssl_server.host, ssl_server.port),
    )
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as err:
        connect(p.dsn)
    assert time.monotonic() - t0 < 10
    # the client is told why (the proxy's log says it too)
    assert "TLS to the PostgreSQL server failed" in str(err.value), err.value
    assert [(e["S"], e["C"]) for e in startup_errors(p)] == [("FATAL", "08006")]
    assert p.alive


def test_upstream_tls_require_against_plaintext_server_fails_cleanly(proxy_factory, pg):
    if getattr(pg, "external", False):
        pytest.skip("needs the embedded (non-SSL) server")
    p = proxy_factory("--upstream-tls", "require")
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as err:
            connect(p.dsn)
        assert time.monotonic() - t0 < 10
        assert "does not accept TLS" in str(err.value), err.value
    assert [(e["S"], e["C"]) for e in startup_errors(p)] == [("FATAL", "08006")]
    assert p.alive
    # prefer falls back to plaintext against the same server
    q = proxy_factory("--upstream-tls", "prefer")
    assert server_ssl(q.dsn) is False


def test_upstream_tls_prefer_uses_tls_when_offered(proxy_factory, ssl_server):
    p = proxy_factory("--upstream-tls", "prefer", upstream=(ssl_server.host, ssl_server.port))
    assert server_ssl(p.dsn) is True


def test_both_hops_tls_with_rules_and_conflict(
    proxy_factory, ssl_server, upstream_tls_files, tls_module, tmp_path
):
    """Locking works unchanged over TLS on both hops (conflicts are raised by the server)."""
    from tests.support.locking import VERSION_RULES, make_database, write_rules

    db = make_database(ssl_server.dsn)
    ca, _ = upstream_tls_files
    p = proxy_factory(
        *tls_module.args("--upstream-tls", "verify-full", "--upstream-tls-ca", str(ca.cert)),
        rules=write_rules(tmp_path, VERSION_RULES),
        upstream=(ssl_server.host, ssl_server.port),
    )
    dsn = p.dsn_for(db, sslmode="verify-full", sslrootcert=str(tls_module.ca.cert))
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        assert a.pgconn.ssl_in_use
        assert a.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (
            True,
        )
        a.execute("select * from accounts where id = 1").fetchall()
        b.execute("select * from accounts where id = 1").fetchall()
        a.execute("update accounts set balance = 1 where id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            b.execute("update accounts set balance = 2 where id = 1")


# --------------------------------------------------------------------------- SCRAM-SHA-256


SCRAM_USER, SCRAM_PASSWORD = "scram_alice", "s3cret-Pa55"


@pytest.fixture
def scram_server(ssl_server):
    """The SSL server, with host connections of every role but postgres needing SCRAM."""
    hba = ssl_server.data_dir / "pg_hba.conf"
    st = hba.stat()
    hba.write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    os.chown(hba, st.st_uid, st.st_gid)
    with connect(ssl_server.dsn) as c:
        c.execute("set password_encryption = 'scram-sha-256'")
        c.execute(f"create role {SCRAM_USER} login password '{SCRAM_PASSWORD}'")
        assert c.execute("select pg_reload_conf()").fetchone() == (True,)
        assert c.execute(
            "select rolpassword like 'SCRAM-SHA-256$%%' from pg_authid where rolname = %s",
            [SCRAM_USER],
        ).fetchone() == (True,)
        wait_until(
            lambda: (
                c.execute(
                    "select count(*) from pg_hba_file_rules where 'scram-sha-256' = auth_method"
                ).fetchone()[0]
                == 1
            ),
            timeout=5,
            what="the new pg_hba.conf",
        )
    # direct: a password is required now
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            ssl_server.dsn.replace("postgres@", f"{SCRAM_USER}@"),
            connect_timeout=10,
            sslmode="disable",
        )
    return ssl_server


def scram_dsn(p, tls_files, **params) -> str:
    params = {
        "sslmode": "verify-full",
        "sslrootcert": str(tls_files.ca.cert),
        "password": SCRAM_PASSWORD,
        **params,
    }
    return p.dsn_for("postgres", user=SCRAM_USER, **params)


def test_scram_through_proxy_with_tls_on_both_hops(
    proxy_factory, scram_server, upstream_tls_files, tls_module
):
    ca, _ = upstream_tls_files
    p = proxy_factory(
        *tls_module.args("--upstream-tls", "verify-full", "--upstream-tls-ca", str(ca.cert)),
        upstream=(scram_server.host, scram_server.port),
    )
    # what clients must set: channel_binding=disable (see the module docstring)
    with psycopg.connect(
        scram_dsn(p, tls_module, channel_binding="disable"), connect_timeout=10, autocommit=True
    ) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute(
            "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()"
        ).fetchone() == (SCRAM_USER, True)
    # a wrong password is the server's refusal, relayed
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(
            scram_dsn(p, tls_module, channel_binding="disable", password="wrong"),
            connect_timeout=10,
        )
    assert "password authentication failed" in str(err.value), err.value
    # libpq's default (prefer) picks SCRAM-SHA-256-PLUS and binds to the proxy's certificate:
    # the server cannot accept that binding
    for binding in ("prefer", "require"):
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(scram_dsn(p, tls_module, channel_binding=binding), connect_timeout=10)
        assert "channel binding" in str(err.value), err.value

    # asyncpg speaks SCRAM-SHA-256 without channel binding: nothing to set
    async def with_asyncpg():
        conn = await asyncpg.connect(scram_dsn(p, tls_module), timeout=10)
        try:
            return await conn.fetchrow(
                "select current_user as u, ssl from pg_stat_ssl where pid = pg_backend_pid()"
            )
        finally:
            await conn.close()

    row = asyncio.run(asyncio.wait_for(with_asyncpg(), 30))
    assert (row["u"], row["ssl"]) == (SCRAM_USER, True)
    assert_serving(p)


def test_scram_with_plaintext_upstream_needs_no_setting(proxy_factory, scram_server, tls_module):
    """Only a TLS upstream hop makes the server offer -PLUS: without it libpq's default works."""
    p = proxy_factory(*tls_module.args(), upstream=(scram_server.host, scram_server.port))
    with psycopg.connect(scram_dsn(p, tls_module), connect_timeout=10, autocommit=True) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("select current_user").fetchone() == (SCRAM_USER,)
