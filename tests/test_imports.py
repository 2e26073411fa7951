"""The import graph of tessera_gpu and app has no circle, and no module imports another's private
names. Read with ``ast``: imports inside functions and under ``TYPE_CHECKING`` count too (a lazy
import hides a circle from Python, not from a reader). An import of ``a.b.c`` is an edge to
``a.b.c`` only: the parent packages Python runs on the way are not edges."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tessera_gpu", "app")


def our_modules() -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = our_modules()


def owner(dotted: str) -> str | None:
    """The module of ours that ``dotted`` (a module, or a name in one) lives in."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def imports_of(module: str) -> Iterator[tuple[str, str, int]]:
    """``(imported module, name, line)`` for every import of ours in ``module``."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = owner(alias.name)
                if target:
                    yield target, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                dotted = f"{source}.{alias.name}"
                target = dotted if dotted in MODULES else owner(source)
                if target:
                    yield target, alias.name, node.lineno


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports_of(m) if t != m} for m in MODULES}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_circle() -> None:
    assert len(MODULES) > 50
    assert circles(graph()) == []


def test_the_circle_finder_finds_circles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert circles(edges) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from tessera_gpu.errors import NotFound\n", "tessera_gpu.errors"),
        ("if TYPE_CHECKING:\n    from tessera_gpu import backends\n", "tessera_gpu.backends"),
        ("from tessera_gpu.projection import params\n", "tessera_gpu.projection.params"),
        ("import tessera_gpu.io.files as f\n", "tessera_gpu.io.files"),
    ],
)
def test_lazy_and_guarded_imports_are_edges(
    source: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    monkeypatch.setitem(MODULES, "tessera_gpu.probe", probe)
    assert expected in {t for t, _, _ in imports_of("tessera_gpu.probe")}


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {name} from {target}"
        for m in MODULES
        for target, name, line in imports_of(m)
        if name.startswith("_") and not name.startswith("__") and target != m
    ]
    assert private == []


RUN_AND_LIST = """
import sys
from tessera_gpu.cli.main import cli
try:
    cli(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print(sorted(m for m in ("datashader", "bokeh", "litestar") if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["project", "sample", "similar", "export", "validate"])
def test_a_command_imports_no_server_and_no_renderer(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tessera project/sample/similar/export/validate`` import neither Litestar, datashader
    nor Bokeh: they are what makes a cold start slow, and none of them draws a tile."""
    import subprocess
    import sys

    from tests.conftest import write_episode_file

    episodes = write_episode_file(tmp_path / "e.h5", n=60)
    out = tmp_path / "out"
    args = {
        "project": ["project", str(episodes), "-o", f"{out}.npy"],
        "sample": ["sample", str(episodes), "-n", "5", "--method", "random", "-o", str(out)],
        "similar": ["similar", str(episodes), "ep_00001", "-k", "3", "-o", str(out)],
        "export": ["export", str(episodes), "--sample", "nosuchsample"],
        "validate": ["validate", str(episodes)],
    }[command]
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "data"))
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, *args], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr[-2000:]
    if command != "export":  # an unknown sample: the command ran up to its error
        assert "error" not in proc.stderr


def test_a_cached_project_imports_no_kernel_and_no_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second ``tessera project`` of an unchanged file reads its map from the cache and
    makes no backend: numba, scipy and the core's services stay unimported (1.67 -> 0.67 s at
    200k x 2,048, benchmarks/startup.py). The first one needed them."""
    import subprocess
    import sys

    from tests.conftest import write_episode_file

    episodes = write_episode_file(tmp_path / "e.h5", n=60)
    listing = RUN_AND_LIST.replace(
        '("datashader", "bokeh", "litestar")',
        '("numba", "scipy", "tessera_gpu.core.tessera", "tessera_gpu.core.catalog")',
    )
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "data"))
    said = []
    for out in ("a", "b"):
        args = ["project", str(episodes), "--device", "cpu", "-o", str(tmp_path / f"{out}.npy")]
        proc = subprocess.run(
            [sys.executable, "-c", listing, *args], capture_output=True, text=True, check=True
        )
        said.append((proc.stdout.strip().splitlines()[-1], proc.stderr))
    (first, _), (second, second_err) = said
    assert "numba" in first
    assert "tessera_gpu.core.tessera" in first
    assert "cache hit" in second_err
    assert second == "[]", second_err[-2000:]


def test_the_server_module_imports_neither_datashader_nor_bokehs_models() -> None:
    """``tessera serve`` answers its API before datashader (2.5 s to import) and Bokeh's models
    (1 s) have loaded: they load in the background at start, or at the first tile or map."""
    import subprocess
    import sys

    probe = (
        "import sys, tessera_app.main\n"
        "print(sorted(m for m in ('datashader', 'bokeh.models', 'bokeh.embed') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_every_name_the_core_exports_loads() -> None:
    """``tessera_gpu.core`` loads its names on first use: each one in ``__all__`` resolves."""
    import tessera_gpu.core as core

    for name in core.__all__:
        assert getattr(core, name).__name__ == name
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        core.Nope  # noqa: B018
