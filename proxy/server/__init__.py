"""The asyncio layer: accept clients, open one server connection each, move bytes.

All protocol knowledge lives in `proxy.wire.handshake` (before the StartupMessage) and
`proxy.session` (after it); this package feeds them bytes and carries out their decisions.

* `listener`: ProxyServer -- accept, connection limit, timeouts watchdog, drain.
* `relay`: Relay -- one client<->server pair, back-pressure, connection life cycle.
* `upstream`: connecting to PostgreSQL, including upstream TLS.
* `cancel`: CancelRequest forwarding (from any worker).
"""

from proxy.server.listener import ProxyServer

__all__ = ["ProxyServer"]
