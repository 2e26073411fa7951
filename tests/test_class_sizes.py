"""No class in tessera_gpu or app grows past what one reader holds in mind: at most ~400 lines
and 15 public methods (properties included). Issue 19 split a 1,150-line ``Tessera`` into
services; this keeps the next feature from landing in one class again. Read with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
MAX_PUBLIC = 15


def classes() -> list[tuple[str, int, list[str]]]:
    found = []
    for top in ("tessera_gpu", "app"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    public = [
                        f.name
                        for f in node.body
                        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                        and not f.name.startswith("_")
                    ]
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                    found.append((where, lines, public))
    return found


def test_the_census_sees_the_classes() -> None:
    names = {where.rsplit(" ", 1)[1] for where, _, _ in classes()}
    assert {"Tessera", "Catalog", "Registry", "Datasets"} <= names


def test_no_class_is_too_long() -> None:
    long = [f"{where}: {lines} lines" for where, lines, _ in classes() if lines > MAX_LINES]
    assert not long, f"split these classes (> {MAX_LINES} lines): {long}"


def test_no_class_has_too_many_public_methods() -> None:
    wide = [
        f"{where}: {len(public)} public methods ({', '.join(public)})"
        for where, _, public in classes()
        if len(public) > MAX_PUBLIC
    ]
    assert not wide, f"split these classes (> {MAX_PUBLIC} public methods): {wide}"
