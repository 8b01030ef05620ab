"""optimist: a PostgreSQL proxy that enforces optimistic locking transparently."""

__version__ = "0.1.0"

# What setup.py compiles with mypyc in a non-editable install (issue 12).
COMPILED_MODULES = (
    "proxy.wire.framing",
    "proxy.wire.messages",
    "proxy.session.inflight",
    "proxy.session.machine",
)


def build() -> str:
    """'compiled (mypyc)' when the hot-path modules imported are mypyc extensions, else
    'pure Python' (an editable install, OPTIMIST_PURE_PYTHON=1, or no C compiler at build)."""
    import importlib

    compiled = [
        not (importlib.import_module(name).__file__ or "").endswith(".py")
        for name in COMPILED_MODULES
    ]
    if all(compiled):
        return "compiled (mypyc)"
    if any(compiled):  # e.g. a stale .so left in a source tree
        return "partly compiled (mypyc)"
    return "pure Python"
