"""`optimist serve` at run time: upstream (embedded or given) -> rules check -> ProxyApp or
workers -> event loop -> exit code. Shared by `serve` and `demo`."""

from __future__ import annotations

import logging

from proxy.config import ConfigError, Settings
from proxy.event_loop import run_loop

log = logging.getLogger("optimist")


def serve(settings: Settings, *, on_ready=None) -> int:
    embedded = None
    if settings.upstream is None:
        from proxy.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir, reuse_running=True)
        log.info("starting the embedded PostgreSQL in %s", embedded.data_dir)
        embedded.start()
        settings.upstream = f"{embedded.host}:{embedded.port}"
    if not settings.rules:
        log.warning(
            "no rules loaded: optimist is a plain relay and protects nothing; give "
            "rule files with --rules (or try `optimist demo`)"
        )
    else:
        # refuse broken rule files before forking workers or binding the port
        from proxy.rules.loader import load_rules
        from proxy.rules.model import RuleError

        try:
            load_rules(settings.rules)
        except RuleError as exc:
            log.error("rule files refused:\n%s", "\n".join(map(str, exc.problems)))
            if embedded is not None:
                embedded.stop()
            return 2
    try:
        if settings.workers > 1:
            from proxy.workers import run_workers

            return run_workers(settings, settings.workers)
        from proxy.app import ProxyApp

        app = ProxyApp(settings)
        run_loop(app.run(on_ready=on_ready))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    finally:
        if embedded is not None:
            embedded.stop()
    return 0
