"""What the locking logic may know of its connection: read-only for everyone but the Session."""

from __future__ import annotations

from proxy.wire.messages import python_encoding


class SessionInfo:
    """Who is connected and the server's settings as last reported (ParameterStatus,
    ReadyForQuery). The Session writes it; the locking logic reads it."""

    __slots__ = (
        "user",
        "database",
        "application_name",
        "peer",
        "status",
        "parameters",
        "encoding",
        "standard_conforming_strings",
    )

    def __init__(
        self, user: str, database: str, application_name: str = "", peer: str = ""
    ) -> None:
        self.user = user
        self.database = database
        self.application_name = application_name
        self.peer = peer
        self.status = b"I"  # transaction status of the last ReadyForQuery
        self.parameters: dict[str, str] = {}
        # the Python codec of client_encoding, for SQL text and text-format values
        self.encoding = "utf-8"
        self.standard_conforming_strings = True

    def set_parameter(self, name: str, value: str) -> None:
        self.parameters[name] = value
        if name == "client_encoding":
            self.encoding = python_encoding(value)
        elif name == "standard_conforming_strings":
            self.standard_conforming_strings = value == "on"
        elif name == "application_name":
            self.application_name = value
