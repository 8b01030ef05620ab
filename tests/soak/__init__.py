"""Soak test: many clients, hot rows, conflicts, client disconnects and an upstream restart;
an audit of every write at the end. ``python -m tests.soak --help``."""
