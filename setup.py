"""Optional mypyc build of the per-message hot path (issue 12); everything else is pyproject.toml.

A wheel build (`pip install .`, `python -m build`) compiles COMPILED_MODULES with mypyc when it
can: CPython, a C compiler and Python's headers present, mypy importable (the build backend in
tools/build_backend.py asks for it only then), and OPTIMIST_PURE_PYTHON not set. Otherwise the
same package is installed as pure Python, without an error. Editable installs (`pip install -e .`)
are always pure Python: a compiled `machine.cpython-*.so` next to `machine.py` would be imported
instead of it (extension suffixes are tried first), so an edit of the source would not take
effect. The compiled modules are the same typed sources the tests and fuzzers run uncompiled.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The session step: framing, the message codecs, the state machine and its in-flight queue
# (tests/bench/cycle.py: -27..-29 % instructions per select cycle compiled). Measured before
# adding more (docs/performance.md, "The compiled hot path").
COMPILED_MODULES = [
    "proxy/wire/framing.py",
    "proxy/wire/messages.py",
    "proxy/session/inflight.py",
    "proxy/session/machine.py",
]

# mypyc type-checks with these options and nothing from [tool.mypy]: under that config
# mypycify checks the whole package (`files`, the strict overrides) and fails on modules it does
# not compile, whose dependencies (sqlglot, PyYAML stubs) the build environment lacks. The
# compiled modules themselves are checked strictly by the project's own mypy run.
MYPY_OPTIONS = [
    "--config-file",
    os.devnull,
    "--ignore-missing-imports",
    "--follow-imports=silent",
    "--python-version",
    f"{sys.version_info[0]}.{sys.version_info[1]}",
]

# setuptools runs setup.py with the command in sys.argv: editable_wheel (PEP 660) and the
# legacy develop for editable installs, bdist_wheel / build / build_ext / install for real ones.
EDITABLE_COMMANDS = {"editable_wheel", "develop"}
BUILD_COMMANDS = {"bdist_wheel", "build", "build_ext", "install"}


def pure_python_requested(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    return environ.get("OPTIMIST_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no")


def have_c_compiler() -> bool:
    """A C compiler the way distutils would call it, and Python.h for it to include."""
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        return False
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    except ImportError:
        return False
    compiler = new_compiler()
    customize_compiler(compiler)
    executable = getattr(compiler, "compiler_so", None)
    if not executable:  # MSVC: found by distutils itself at build time
        return True
    return shutil.which(executable[0]) is not None


def have_mypyc() -> bool:
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return False
    return True


def compile_reason(
    argv: list[str],
    environ: os._Environ[str] | dict[str, str] = os.environ,
    *,
    check_mypyc: bool = True,
) -> str | None:
    """None if this build compiles the hot path, else why it stays pure Python."""
    commands = set(argv[1:])
    if pure_python_requested(environ):
        return "OPTIMIST_PURE_PYTHON is set"
    if commands & EDITABLE_COMMANDS:
        return "editable install (the sources stay the modules imported)"
    if not commands & BUILD_COMMANDS:
        return "no build command (metadata only)"
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} is not CPython"
    if not have_c_compiler():
        return "no C compiler or no Python.h"
    if check_mypyc and not have_mypyc():
        return "mypy (mypyc) is not installed"
    return None


def ext_modules() -> list:
    reason = compile_reason(sys.argv)
    if reason is not None:
        if set(sys.argv[1:]) & (BUILD_COMMANDS | EDITABLE_COMMANDS):
            print(f"optimist: installing pure Python ({reason})", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    print("optimist: compiling the hot path with mypyc", file=sys.stderr)
    cwd = os.getcwd()
    os.chdir(HERE)  # mypycify takes paths relative to the project root
    try:
        return mypycify(
            MYPY_OPTIONS + COMPILED_MODULES, opt_level="3", group_name="optimist_hotpath"
        )
    finally:
        os.chdir(cwd)


if __name__ == "__main__":
    from setuptools import setup

    setup(ext_modules=ext_modules())
