"""The admin console: a virtual database (`psql -p 6432 optimist`) answered by the proxy
itself in the PostgreSQL protocol (SHOW RULES, SHOW SESSIONS, RELOAD, PAUSE, ...).

`console` is sans-IO (bytes in, bytes out); `operations` reads and acts on the running
proxy; the relay (proxy.server.relay) authenticates console users through PostgreSQL and
then hands the connection to a `Console`.
"""

from proxy.admin.commands import COMMANDS, CommandError, parse_command
from proxy.admin.console import Console
from proxy.admin.results import Column, ResultSet

__all__ = ["COMMANDS", "Column", "CommandError", "Console", "ResultSet", "parse_command"]
