"""The package's import rules (ARCHITECTURE.md) and what each distribution ships.

* The backend (``dmmreg`` outside ``training/`` and ``slicer/``) imports neither ``dmmreg.training``
  nor ``dmmreg.slicer``; ``dmmreg.cli``, the command line in front of both backend and training,
  may import ``dmmreg.training`` for its ``train``/``finetune`` commands, inside those commands.
* ``dmmreg.training`` does not import ``dmmreg.slicer``.
* The backend and training import without slicer-core, VTK or Qt installed.
* The pip wheel holds no ``dmmreg.slicer`` package; no product file is over 500 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "DeepMultiModalReg" / "dmmreg"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, bool]]:
    """Every ``dmmreg`` module ``path`` imports, with whether the import is at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] == "dmmreg":
                found += [(f"{base}.{alias.name}", id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names if alias.name.startswith("dmmreg")]
    return found


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("training", "slicer") else "backend"


PRODUCT_FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    here = module_name(path)
    forbidden = {"backend": {"training", "slicer"}, "training": {"slicer"}, "slicer": set()}[part_of(here)]
    for imported, at_top in imported_modules(path):
        if here == "dmmreg.cli" and part_of(imported) == "training" and not at_top:
            continue  # the train/finetune commands, imported when they run
        assert part_of(imported) not in forbidden, f"{here} imports {imported}"


def test_backend_and_training_import_without_slicer_vtk_or_qt():
    backend_and_training = [module_name(p) for p in PRODUCT_FILES
                            if part_of(module_name(p)) != "slicer" and p.name != "__main__.py"]  # __main__ runs the CLI
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("slicer", "vtk", "vtkmodules", "qt", "ctk", "PySide6", "mrml"):
                    raise ImportError(f"{{name}} is not installed here")
        sys.meta_path.insert(0, Refuse())
        for name in {backend_and_training!r}:
            importlib.import_module(name)
        import dmmreg.methods, dmmreg.training
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=ROOT / "DeepMultiModalReg")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_wheel_ships_the_backend_and_training_not_the_slicer_side():
    from setuptools import find_packages

    finder = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(ROOT / finder["where"][0]), include=finder["include"],
                             exclude=finder.get("exclude", ()))
    assert {"dmmreg", "dmmreg.methods", "dmmreg.networks", "dmmreg.training"} <= set(packages)
    assert not [p for p in packages if p.startswith("dmmreg.slicer")]


def test_no_product_file_is_over_500_lines():
    product = PRODUCT_FILES + sorted((ROOT / "DeepMultiModalReg").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    long = {str(p.relative_to(ROOT)): n for p in product if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"
