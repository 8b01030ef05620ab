"""PEP 517 backend: setuptools, asking for mypy only for a wheel build that will compile.

setuptools itself answers the same build requirements for a wheel and an editable install, and
cannot know at that point which one it is; an editable install and an OPTIMIST_PURE_PYTHON=1 or
compiler-less build need no mypy (setup.py installs pure Python then), so they do not fetch it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (the other hooks, unchanged)

MYPY = "mypy>=1.10"


def _compile_reason() -> str | None:
    # setup.py holds the decision; its setup() runs only as __main__
    spec = importlib.util.spec_from_file_location("_optimist_setup", Path("setup.py").resolve())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reason: str | None = module.compile_reason(["setup.py", "bdist_wheel"], check_mypyc=False)
    return reason


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    if _compile_reason() is None:
        requires.append(MYPY)
    return requires


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires: list[str] = _setuptools.get_requires_for_build_editable(config_settings)
    return requires
