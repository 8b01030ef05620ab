"""Shared fixtures.

* ``pg`` (session): a private PostgreSQL (``proxy.embedded.EmbeddedPostgres``) on a free port,
  or, when ``OPTIMIST_TEST_DSN`` is set, a lightweight handle on that server (never
  started/stopped by the tests).  ``upstream_dsn``: ``pg.dsn``.
* ``pg_factory``: fresh private servers for tests that kill/restart their server.
* ``proxy_factory`` / ``session_proxy_factory``: start ``python -m proxy serve --listen ...
  --upstream ...`` subprocesses; teardown sends SIGTERM and requires exit code 0.
* ``proxy`` (session): the default proxy, no rules.  After every test that used it, it must
  still be alive; if it died the test errors (with the proxy's stderr) and a fresh proxy on
  the same port is started for the following tests.

``OPTIMIST_TEST_PROXY=relay`` replaces the proxy by ``tests.support.relay`` (a dumb byte
relay) -- only for developing the harness.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from proxy.embedded import EmbeddedPostgres, find_bin_dir
from tests.support import ProxyProcess

# --------------------------------------------------------------------------- reporting


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    if os.environ.get("OPTIMIST_TEST_DSN"):
        lines.append(f"optimist: upstream OPTIMIST_TEST_DSN={os.environ['OPTIMIST_TEST_DSN']}")
    else:
        try:
            lines.append(f"optimist: embedded PostgreSQL binaries {find_bin_dir()}")
        except Exception as exc:  # pragma: no cover
            lines.append(f"optimist: no PostgreSQL binaries: {exc}")
    if os.environ.get("OPTIMIST_TEST_PROXY") == "relay":
        lines.append("optimist: OPTIMIST_TEST_PROXY=relay -- testing a dumb relay, not the proxy")
    return lines


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class ExternalPostgres:
    """An already running server given by ``OPTIMIST_TEST_DSN``."""

    dsn: str
    external: bool = True

    @property
    def host(self) -> str:
        return urlsplit(self.dsn).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.dsn).port or 5432


def _new_embedded(**kwargs) -> EmbeddedPostgres:
    # directly under the temp dir: /tmp is traversable by the server's system user when
    # running as root, pytest's 0700 basetemp is not.
    data = os.path.join(tempfile.mkdtemp(prefix="optimist-test-pg-"), "data")
    kwargs.setdefault("fast", True)
    kwargs.setdefault("die_with_parent", True)
    return EmbeddedPostgres(data, **kwargs)


def _discard(pg: EmbeddedPostgres) -> None:
    try:
        pg.stop(timeout=10)
    finally:
        shutil.rmtree(pg.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres | ExternalPostgres]:
    dsn = os.environ.get("OPTIMIST_TEST_DSN")
    if dsn:
        yield ExternalPostgres(dsn)
        return
    # prepared transactions on: the two-phase-commit tests need them (PostgreSQL's default is 0)
    server = _new_embedded(config={"max_prepared_transactions": 10})
    server.start()
    server.external = False  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        _discard(server)


@pytest.fixture(scope="session")
def upstream_dsn(pg) -> str:
    return pg.dsn


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., EmbeddedPostgres]]:
    """``pg_factory(**EmbeddedPostgres kwargs)`` -> a started private server, discarded after
    the test. For tests that kill or restart the server."""
    made: list[EmbeddedPostgres] = []

    def make(**kwargs) -> EmbeddedPostgres:
        server = _new_embedded(**kwargs)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        _discard(server)


# --------------------------------------------------------------------------- proxy


class _ProxyFactory:
    def __init__(self, pg) -> None:
        self.pg = pg
        self.made: list[ProxyProcess] = []

    def __call__(
        self,
        *extra_args: str,
        rules=None,
        metrics: bool = False,
        drain_timeout: float | None = None,
        env: dict[str, str] | None = None,
        upstream: tuple[str, int] | None = None,
        start: bool = True,
    ) -> ProxyProcess:
        host, port = upstream or (self.pg.host, self.pg.port)
        p = ProxyProcess(
            host,
            port,
            rules=rules,
            metrics=metrics,
            drain_timeout=drain_timeout,
            extra_args=extra_args,
            env=env,
        )
        if not start:
            self.made.append(p)
            return p
        try:
            p.start()  # raises with the proxy's stderr if it does not come up
        finally:
            if not p.alive:
                p.cleanup()
        self.made.append(p)
        return p

    def close(self) -> list[str]:
        problems = []
        for p in self.made:
            if p.proc is None:
                continue
            already = p.proc.poll()
            code = p.stop()
            if code != 0:
                how = (
                    f"had already exited with {already}"
                    if already is not None
                    else f"exited with {code} on SIGTERM"
                )
                problems.append(f"{p!r} {how}\n{p.describe()}")
            p.cleanup()
        return problems


@pytest.fixture
def proxy_factory(pg) -> Iterator[_ProxyFactory]:
    """``proxy_factory(*extra_args, rules=PATH, metrics=True, drain_timeout=S, env={...})``
    -> a started ProxyProcess (host, port, dsn, dsn_for(db), proc, metrics_url,
    stderr_text()); stopped with SIGTERM after the test, which must exit 0."""
    factory = _ProxyFactory(pg)
    yield factory
    problems = factory.close()
    if problems:
        pytest.fail("proxy shutdown problems:\n" + "\n\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def session_proxy_factory(pg) -> Iterator[_ProxyFactory]:
    factory = _ProxyFactory(pg)
    yield factory
    problems = factory.close()
    if problems:
        pytest.fail("proxy shutdown problems:\n" + "\n\n".join(problems), pytrace=False)


_SESSION_PROXIES: list[ProxyProcess] = []


@pytest.fixture(scope="session")
def proxy(session_proxy_factory) -> ProxyProcess:
    """The shared proxy (no rules) in front of ``pg``."""
    p = session_proxy_factory()
    _SESSION_PROXIES.append(p)
    return p


@pytest.fixture(autouse=True)
def _session_proxy_still_alive(request) -> Iterator[None]:
    yield
    if "proxy" not in request.fixturenames:
        return
    for p in _SESSION_PROXIES:
        if p.proc is not None and not p.alive:
            report = p.describe()
            # keep the session usable for the following tests: same port, same logs
            p.start()
            pytest.fail(f"the shared proxy died during this test:\n{report}", pytrace=False)
