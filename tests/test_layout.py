"""The layout stays what docs/architecture.md says, the package installs whole, the library does
not import the app, and importing Tessera changes nothing in the process."""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def defines_something(path: Path) -> bool:
    """A module with its own functions or classes (not a package's re-exports)."""
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef | ast.ClassDef) for n in tree.body)


def modules_on_disk() -> set[str]:
    found = set()
    for top in ("tessera_gpu", "app"):
        for path in (ROOT / top).rglob("*.py"):
            if path.name == "__main__.py" or "__pycache__" in path.parts:
                continue
            if path.name != "__init__.py" or defines_something(path):
                found.add(str(path.relative_to(ROOT)))
    found |= {str(path.relative_to(ROOT)) for path in (ROOT / "app" / "static").glob("*.js")}
    return found


def test_the_module_table_lists_every_module_and_no_other() -> None:
    listed = set(re.findall(r"^\| `((?:tessera_gpu|app)/[\w/]+\.(?:py|js))` \|", DOC, flags=re.M))
    assert listed == modules_on_disk(), {
        "missing from the doc": sorted(modules_on_disk() - listed),
        "in the doc, not in the code": sorted(listed - modules_on_disk()),
    }


def test_the_page_learns_of_changes_from_its_store_alone() -> None:
    """Window events beside the store were a second channel, invisible from state.js."""
    for path in (ROOT / "app" / "static").glob("*.js"):
        assert not re.search(r"dispatchEvent\(|CustomEvent", path.read_text()), path.name


def test_the_entry_points_the_doc_names_exist() -> None:
    names = re.findall(r"`((?:tessera_gpu|tessera_app)(?:\.\w+)+)`", DOC)
    assert len(names) >= 8
    for dotted in names:
        module, _, attr = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), dotted


def test_every_package_is_installed() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    packages = set(setuptools["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "tessera_gpu").rglob("__init__.py")
    }
    assert on_disk <= packages, on_disk - packages
    assert setuptools["package-dir"] == {"tessera_app": "app"}
    assert "tessera_app" in packages
    assert "app" not in packages


def test_the_library_imports_the_app_only_in_serve() -> None:
    offenders = []
    for path in (ROOT / "tessera_gpu").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("app", "tessera_app") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert set(offenders) <= {"tessera_gpu/cli/serve.py"}, offenders


def test_no_code_imports_the_app_by_its_folder_name() -> None:
    pattern = re.compile(r"^\s*(from|import) app(\.|\s)", re.M)
    for top in ("tessera_gpu", "app", "tests", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            assert not pattern.search(path.read_text()), path


IMPORT_ONLY = """
import json, os, h5py, numba
before = (h5py.h5pl.size(), os.environ.get("HDF5_PLUGIN_PRELOAD"), numba.config.THREADING_LAYER)
import tessera_gpu, tessera_gpu.io, tessera_gpu.projection, tessera_gpu.render, tessera_gpu.core
import tessera_gpu.cli, tessera_gpu.sampling, tessera_gpu.clustering
after = (h5py.h5pl.size(), os.environ.get("HDF5_PLUGIN_PRELOAD"), numba.config.THREADING_LAYER)
tessera_gpu.configure_process()
configured = (h5py.h5pl.size(), os.environ.get("HDF5_PLUGIN_PRELOAD"), numba.config.THREADING_LAYER)
print(json.dumps({"before": before, "after": after, "configured": configured}))
"""


def test_importing_changes_nothing_until_configure_process_is_called() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_ONLY], capture_output=True, text=True, env=env, check=True
    )
    out = json.loads(proc.stdout)
    assert out["after"] == out["before"]
    plugins, preload, layer = out["configured"]
    assert plugins == 0
    assert preload == "::"
    assert layer in ("threadsafe", out["before"][2])  # a thread-safe layer when one loads


def test_ci_runs_the_checks_then_the_tests() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test = (ROOT / "scripts" / "test").read_text()
    check = (ROOT / "scripts" / "check").read_text()
    assert "./scripts/test" in ci
    assert "./scripts/check" in test
    # the full lane (CI's) checks, then runs every test; --fast skips both the checks and some tests
    assert test.index("./scripts/check") < test.rindex("pytest")
    assert test.rstrip().endswith('exec .venv/bin/python -m pytest "$@"')
    for step in ('ruff" check', 'ruff" format --check', "mypy", "deptry"):
        assert step in check, step
    assert PYPROJECT["tool"]["mypy"]["files"] == ["tessera_gpu", "app"]
    assert {"RUF", "SIM", "PT"} <= set(PYPROJECT["tool"]["ruff"]["lint"]["select"])
