"""A private PostgreSQL server for `optimist serve` without an upstream, `optimist demo`,
the tests and the benchmark.

* :mod:`.binaries`: which PostgreSQL installation to run;
* :mod:`.privileges`: what running as root needs (a system user, readable directories);
* :mod:`.cluster`: :class:`EmbeddedPostgres`, the cluster's life cycle.

The private names are re-exported for the tests and tools that used the former module.
"""

from proxy.embedded.binaries import (  # noqa: F401
    _system_bin_dirs,
    _wheel_bin_dir,
    find_bin_dir,
    pg_tool,
)
from proxy.embedded.cluster import (  # noqa: F401
    CONF_NAME,
    FAST_SETTINGS,
    LOG_NAME,
    EmbeddedPostgres,
    _pid_alive,
    _set_pdeathsig,
    default_data_dir,
)
from proxy.embedded.errors import EmbeddedPostgresError
from proxy.embedded.privileges import (  # noqa: F401
    SYSTEM_USER,
    _ensure_install_readable,
    _ensure_system_user,
    _ensure_traversable,
    _is_root,
)
from proxy.netutil import free_port

__all__ = [
    "SYSTEM_USER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "default_data_dir",
    "find_bin_dir",
    "free_port",
    "pg_tool",
]
