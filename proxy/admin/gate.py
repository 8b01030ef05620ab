"""Who may use the console and how they are authenticated: by PostgreSQL itself.

The proxy never sees a password nor answers an authentication request: a console user's
StartupMessage goes to PostgreSQL with the database replaced by a real one
(`admin_auth_database`); once PostgreSQL has said AuthenticationOk and ReadyForQuery that
server connection is closed and the proxy answers the console from then on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.admin.commands import Operations
from proxy.wire.handshake import Refuse
from proxy.wire.startup import StartupPacket


@dataclass(frozen=True)
class AdminGate:
    database: str  # the virtual database clients name: `psql ... optimist`
    auth_database: str  # the real one PostgreSQL authenticates them against
    users: frozenset[str]
    ops: Operations

    def wants(self, startup: StartupPacket) -> bool:
        return bool(self.users) and startup.database == self.database

    def refusal(self, startup: StartupPacket) -> Refuse | None:
        if startup.user in self.users:
            return None
        return Refuse(
            "28000",
            f'optimist: role "{startup.user}" may not use the admin console',
            detail="Only the roles listed in admin_users (--admin-users) may.",
        )

    def auth_startup(self, startup: StartupPacket) -> StartupPacket:
        params = {**startup.params, "database": self.auth_database}
        body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        raw = struct.pack("!II", len(body) + 8, startup.code) + body
        return StartupPacket(startup.code, raw, params)
