"""`optimist demo`: the embedded PostgreSQL, the sample schema, the example rules, the proxy."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from proxy.config import Settings
from proxy.runtime import serve

log = logging.getLogger("optimist.demo")

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
DEMO_DB = "optimist_demo"

SAMPLE_ROWS = """
INSERT INTO customers (salutation, first_name, last_name, credit_limit, credit_score)
VALUES ('Ms', 'Sue', 'Smith', 5000, 710), ('Mr', 'Lou', 'Jones', 2000, 640);
INSERT INTO reports (customer_id, title, amount) VALUES (1, 'Trip to Lyon', 420.00);
INSERT INTO accounts (owner, balance) VALUES ('Sue', 100.00), ('Lou', 250.00);
INSERT INTO products (sku, name, price, stock) VALUES ('MUG-1', 'Mug', 7.50, 40);
"""

TRY = """
optimist demo is running.

  Connect:   psql "postgresql://postgres@{host}:{port}/{db}"

Try a lost update. In two terminals, connect as above, then:
  A: SELECT * FROM accounts WHERE id = 1;             -- balance 100.00
  B: SELECT * FROM accounts WHERE id = 1;             -- balance 100.00
  A: UPDATE accounts SET balance = 110 WHERE id = 1;   -- A deposits 10: 100 + 10
  B: UPDATE accounts SET balance = 50 WHERE id = 1;    -- B withdraws 50: 100 - 50
     -> ERROR: optimistic lock conflict ... was modified by another session
        (straight to PostgreSQL, B's write succeeds and A's deposit is lost)
  B: SELECT * FROM accounts WHERE id = 1;             -- 110.00: re-read, then retry
     UPDATE accounts SET balance = 60 WHERE id = 1;

Rules: {rules}   (edit them; the proxy reloads on save)
Stop with Ctrl-C.
"""


def _psql(bin_dir: Path, dsn: str, sql: str) -> str:
    result = subprocess.run(
        [str(bin_dir / "psql"), dsn, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip())
    return result.stdout.strip()


def prepare_demo(settings: Settings) -> int:
    from proxy.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(settings.data_dir, reuse_running=True)
    log.info("starting the embedded PostgreSQL in %s", pg.data_dir)
    pg.start()
    try:
        base = pg.dsn
        admin = base.rsplit("/", 1)[0] + "/postgres"
        exists = _psql(pg.bin_dir, admin, f"SELECT 1 FROM pg_database WHERE datname = '{DEMO_DB}'")
        if not exists:
            _psql(pg.bin_dir, admin, f"CREATE DATABASE {DEMO_DB}")
        demo_dsn = base.rsplit("/", 1)[0] + f"/{DEMO_DB}"
        if not _psql(pg.bin_dir, demo_dsn, "SELECT to_regclass('public.accounts')"):
            _psql(pg.bin_dir, demo_dsn, (RULES_DIR / "example-schema.sql").read_text())
            _psql(pg.bin_dir, demo_dsn, SAMPLE_ROWS)
        settings.upstream = f"{pg.host}:{pg.port}"
        settings.rules = [str(RULES_DIR / "example.yaml")]
        listen = settings.listen_endpoint

        def ready(app) -> None:
            print(
                TRY.format(host=listen.host, port=listen.port, db=DEMO_DB, rules=settings.rules[0]),
                flush=True,
            )

        return serve(settings, on_ready=ready)
    finally:
        pg.stop()
