"""A running proxy says which build it runs (issue 12): the startup log line and /metrics.

In .ci/run's compiled pass (OPTIMIST_EXPECT_BUILD="compiled (mypyc)") this proves the proxy
subprocess the integration tests start imports the compiled wheel, not the source tree.
"""

from __future__ import annotations

import os

import psycopg

from proxy import __version__, build
from tests.support.promtext import sample_sum, scrape


def test_proxy_reports_its_build_in_the_log_and_metrics(proxy_factory):
    expected = os.environ.get("OPTIMIST_EXPECT_BUILD", "pure Python")
    assert build() == expected  # the test process itself
    p = proxy_factory(metrics=True)
    with psycopg.connect(p.dsn, autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    listening = [line for line in p.stderr_text().splitlines() if "optimist listening on" in line]
    assert len(listening) == 1 and listening[0].endswith(f"({expected})"), listening
    text = scrape(p.metrics_url)
    assert sample_sum(text, "optimist_build_info", version=__version__, build=expected) == 1
    other = "pure Python" if expected != "pure Python" else "compiled (mypyc)"
    assert sample_sum(text, "optimist_build_info", build=other) == 0
