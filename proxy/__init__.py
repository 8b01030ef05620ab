"""optimist: a PostgreSQL proxy that enforces optimistic locking transparently."""

__version__ = "0.1.0"
