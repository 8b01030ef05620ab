"""The per-connection protocol state machine (sans-IO) and its in-flight queue."""

from proxy.session.machine import Session, statement_type
from proxy.wire.framing import ProtocolViolation

__all__ = ["Session", "ProtocolViolation", "statement_type"]
