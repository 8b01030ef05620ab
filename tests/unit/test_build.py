"""The optional mypyc build (setup.py) and the report of which build is imported.

.ci/run runs this file twice: in the editable install (pure Python) and, with
OPTIMIST_EXPECT_BUILD="compiled (mypyc)", against a wheel installed into a second venv, where
`test_the_expected_build_is_the_one_imported` proves the tests ran the compiled modules and not
the source tree.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import proxy
from proxy import COMPILED_MODULES, build

ROOT = Path(__file__).resolve().parents[2]


def load_setup():
    spec = importlib.util.spec_from_file_location("optimist_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only as __main__
    return module


def test_the_expected_build_is_the_one_imported():
    expected = os.environ.get("OPTIMIST_EXPECT_BUILD")
    files = {name: importlib.import_module(name).__file__ or "" for name in COMPILED_MODULES}
    if expected is None:
        # the plain test run is the editable install: the sources themselves
        assert Path(proxy.__file__).resolve().parent == ROOT / "proxy"
        expected = "pure Python"
    assert build() == expected, files
    if expected == "compiled (mypyc)":
        assert all(f.endswith(".so") or f.endswith(".pyd") for f in files.values()), files
        # the installed package, not a .so built in place into the source tree
        assert ROOT / "proxy" not in Path(proxy.__file__).resolve().parents
    else:
        assert all(f.endswith(".py") for f in files.values()), files


def test_setup_compiles_the_modules_proxy_reports():
    setup = load_setup()
    modules = [p.removesuffix(".py").replace("/", ".") for p in setup.COMPILED_MODULES]
    assert tuple(modules) == COMPILED_MODULES
    for path in setup.COMPILED_MODULES:
        assert (ROOT / path).is_file()


@pytest.mark.parametrize(
    "argv, environ, pure_because",
    [
        (["setup.py", "bdist_wheel"], {"OPTIMIST_PURE_PYTHON": "1"}, "OPTIMIST_PURE_PYTHON"),
        (["setup.py", "editable_wheel", "--dist-info-dir", "x"], {}, "editable"),
        (["setup.py", "develop"], {}, "editable"),
        (["setup.py", "egg_info"], {}, "metadata only"),
        (["setup.py", "dist_info"], {}, "metadata only"),
    ],
)
def test_setup_stays_pure_python(argv, environ, pure_because):
    reason = load_setup().compile_reason(argv, environ)
    assert reason is not None and pure_because in reason


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_optimist_pure_python_unset_or_false_compiles_where_it_can(monkeypatch, value):
    setup = load_setup()
    monkeypatch.setattr(setup, "have_c_compiler", lambda: True)
    monkeypatch.setattr(setup, "have_mypyc", lambda: True)
    environ = {"OPTIMIST_PURE_PYTHON": value} if value else {}
    assert setup.compile_reason(["setup.py", "bdist_wheel"], environ) is None


def test_no_compiler_or_no_mypy_means_pure_python(monkeypatch):
    setup = load_setup()
    monkeypatch.setattr(setup, "have_mypyc", lambda: True)
    monkeypatch.setattr(setup, "have_c_compiler", lambda: False)
    assert "no C compiler" in setup.compile_reason(["setup.py", "bdist_wheel"], {})
    monkeypatch.setattr(setup, "have_c_compiler", lambda: True)
    monkeypatch.setattr(setup, "have_mypyc", lambda: False)
    assert "mypy" in setup.compile_reason(["setup.py", "bdist_wheel"], {})
    # the build backend asks for mypy before it is installed: it does not check for it
    assert setup.compile_reason(["setup.py", "bdist_wheel"], {}, check_mypyc=False) is None


def test_no_compiler_is_detected(monkeypatch):
    setup = load_setup()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert setup.have_c_compiler() is False


def test_build_backend_asks_for_mypy_only_for_a_compiling_wheel_build(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    backend = importlib.import_module("build_backend")
    monkeypatch.setattr(
        backend._setuptools, "get_requires_for_build_wheel", lambda config_settings=None: []
    )
    monkeypatch.setattr(
        backend._setuptools, "get_requires_for_build_editable", lambda config_settings=None: []
    )
    monkeypatch.setattr(backend, "_compile_reason", lambda: None)
    assert backend.get_requires_for_build_wheel() == [backend.MYPY]
    assert backend.get_requires_for_build_editable() == []
    monkeypatch.setattr(backend, "_compile_reason", lambda: "OPTIMIST_PURE_PYTHON is set")
    assert backend.get_requires_for_build_wheel() == []


def test_version_names_the_build():
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,  # the source tree, or with PYTHONSAFEPATH=1 (the compiled run) the install
    ).stdout
    assert out.strip() == f"optimist {proxy.__version__}, {build()}"
