"""Optimistic locking: the rules in force (LockingService, one per process) and the locking
logic of each session (SessionLocking), sans-IO."""

from proxy.locking.generation import DatabaseTables, Generation
from proxy.locking.service import LockingService
from proxy.locking.session_locking import SessionLocking

__all__ = ["DatabaseTables", "Generation", "LockingService", "SessionLocking"]
