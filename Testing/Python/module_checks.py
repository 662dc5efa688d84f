"""Helpers shared by the tests of the extension's module files (which import only inside Slicer):
which modules there are, and what their parameter node classes declare, read from the source.
Plain functions (no pytest state), imported with ``from module_checks import ...``."""

from __future__ import annotations

import ast
from pathlib import Path

MODULE_FOLDER = Path(__file__).parents[2] / "DeepMultiModalReg"
#: Every scripted module of the extension (the first one ships the shared dmmreg package).
MODULE_NAMES = ("DeepMultiModalReg", "DeepMultiModalRegQuality", "DeepMultiModalRegSynthesis",
                "DeepMultiModalRegFineTuning")


def module_file(name: str) -> Path:
    return MODULE_FOLDER / f"{name}.py"


def ui_file(name: str) -> Path:
    return MODULE_FOLDER / "Resources" / "UI" / f"{name}.ui"


def module_tree(name: str) -> ast.Module:
    return ast.parse(module_file(name).read_text(encoding="utf-8"))


def parameter_node_fields(name: str) -> dict[str, ast.expr]:
    """``{field: annotation}`` of the module's ``<name>ParameterNode`` class."""
    for node in module_tree(name).body:
        if isinstance(node, ast.ClassDef) and node.name == f"{name}ParameterNode":
            return {item.target.id: item.annotation for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{name} has no {name}ParameterNode")


def parameter_annotations(name: str) -> dict[str, set[str]]:
    """``{parameter: node classes}`` of the parameter node's node-typed fields (aliases resolved)."""
    aliases = {}
    for node in module_tree(name).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            aliases[node.targets[0].id] = node.value

    def classes(expr) -> set[str]:
        if isinstance(expr, ast.Name):
            if expr.id in aliases:
                return classes(aliases[expr.id])
            return {expr.id} if expr.id.startswith("vtkMRML") else set()
        if isinstance(expr, ast.Subscript):
            return classes(expr.slice)
        if isinstance(expr, ast.Tuple):
            return set().union(*(classes(item) for item in expr.elts))
        return set()

    return {field: classes(annotation) for field, annotation in parameter_node_fields(name).items() if classes(annotation)}


def parameter_is_optional(name: str, parameter: str) -> bool:
    return "Optional[" in ast.unparse(parameter_node_fields(name)[parameter])


#: The mixins and helpers the module widgets share (``dmmreg.slicer.widgets``).
WIDGET_HELPERS_FILE = MODULE_FOLDER / "dmmreg" / "slicer" / "widgets.py"


def widget_helpers_text() -> str:
    return WIDGET_HELPERS_FILE.read_text(encoding="utf-8")


def widget_mixins(name: str) -> list[ast.ClassDef]:
    """The classes of ``dmmreg.slicer.widgets`` that the module's ``<name>Widget`` mixes in: the
    widgets and parameters they use count as the module's."""
    helpers = {node.name: node for node in ast.parse(widget_helpers_text()).body if isinstance(node, ast.ClassDef)}
    imported = {alias.asname or alias.name for node in module_tree(name).body
                if isinstance(node, ast.ImportFrom) and node.module == "dmmreg.slicer.widgets" for alias in node.names}
    for node in module_tree(name).body:
        if isinstance(node, ast.ClassDef) and node.name == f"{name}Widget":
            return [helpers[base.id] for base in node.bases
                    if isinstance(base, ast.Name) and base.id in helpers and base.id in imported]
    raise AssertionError(f"{name} has no {name}Widget")


def widget_base_names(name: str) -> list[str]:
    """The base classes of the module's ``<name>Widget``, by name."""
    for node in module_tree(name).body:
        if isinstance(node, ast.ClassDef) and node.name == f"{name}Widget":
            return [base.id for base in node.bases if isinstance(base, ast.Name)]
    raise AssertionError(f"{name} has no {name}Widget")
