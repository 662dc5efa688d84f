"""The Registration Quality module (DeepMultiModalRegQuality.py) beyond its .ui (which
test_module_ui.py checks with the other modules'): how CMake builds every module, the names the
modules use from the backend exist, their selectors accept the node types of their parameters
(both for every module, see module_checks.MODULE_NAMES), and its self-test's case holds on
slicer-core (the module file itself needs Slicer's Qt)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from module_checks import MODULE_NAMES, module_tree, parameter_annotations, parameter_is_optional, ui_file

MODULE_FOLDER = Path(__file__).parents[2] / "DeepMultiModalReg"
MODULE_FILE = MODULE_FOLDER / "DeepMultiModalRegQuality.py"
UI_FILE = MODULE_FOLDER / "Resources" / "UI" / "DeepMultiModalRegQuality.ui"
MODULES = MODULE_NAMES

#: Stand-ins of the Slicer CMake macros: each call is printed as one line, ``CALL|name|args``.
CMAKE_STUBS = r"""
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  string(REPLACE ";" "," scripts "${MY_SCRIPTS}")
  string(REPLACE ";" "," resources "${MY_RESOURCES}")
  message(STATUS "MODULE|${MY_NAME}|${scripts}|${resources}|${MY_WITH_GENERIC_TESTS}")
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  message(STATUS "UNITTEST|${MY_SCRIPT}")
endmacro()
function(install)
endfunction()
"""


def cmake_calls(tmp_path):
    """Run the module folder's CMakeLists.txt in CMake script mode with stub macros."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    script = tmp_path / "run.cmake"
    text = (MODULE_FOLDER / "CMakeLists.txt").read_text(encoding="utf-8")
    # script mode has no file(COPY ...) destination to speak of: keep it harmless
    script.write_text(
        CMAKE_STUBS
        + f'set(CMAKE_CURRENT_SOURCE_DIR "{MODULE_FOLDER}")\n'
        + f'set(CMAKE_BINARY_DIR "{tmp_path / "build"}")\n'
        + "set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)\nset(BUILD_TESTING ON)\n"
        + text
    )
    result = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules, unittests = {}, []
    for line in (result.stdout + result.stderr).splitlines():
        line = line.removeprefix("-- ")
        if line.startswith("MODULE|"):
            _, name, scripts, resources, generic = line.split("|")
            modules[name] = {"scripts": scripts.split(","), "resources": resources.split(","), "generic": generic}
        elif line.startswith("UNITTEST|"):
            unittests.append(line.split("|")[1])
    return modules, unittests


def test_cmake_builds_every_module_each_file_once(tmp_path):
    modules, unittests = cmake_calls(tmp_path)
    assert sorted(modules) == sorted(MODULES)
    listed = []
    for name, call in modules.items():
        assert f"{name}.py" in call["scripts"], f"{name}: its script is not in its SCRIPTS"
        assert f"Resources/UI/{name}.ui" in call["resources"]
        assert call["generic"] == "TRUE"
        listed += call["scripts"] + call["resources"]
        for path in call["scripts"] + call["resources"]:
            assert (MODULE_FOLDER / path).is_file(), f"{name} lists a missing file {path}"
    duplicates = sorted({path for path in listed if listed.count(path) > 1})
    assert not duplicates, f"files copied by two module targets (conflicting build rules): {duplicates}"
    # the shared Lib package is shipped (once), with the quality logic the Quality module imports
    quality_package = sorted((MODULE_FOLDER / "dmmreg" / "slicer" / "quality").glob("*.py"))
    assert "dmmreg/slicer/quality/__init__.py" in modules["DeepMultiModalReg"]["scripts"]
    for path in quality_package:
        assert path.relative_to(MODULE_FOLDER).as_posix() in modules["DeepMultiModalReg"]["scripts"]
    # the self-test scenes go to the build tree (for ctest), never into the installed extension
    selftest = sorted((MODULE_FOLDER / "dmmreg" / "slicer" / "selftest").glob("*.py"))
    assert selftest and not [p for p in modules["DeepMultiModalReg"]["scripts"] if "/selftest/" in p]
    built = tmp_path / "build" / "lib" / "qt-scripted-modules" / "dmmreg" / "slicer" / "selftest"
    assert sorted(p.name for p in built.glob("*.py")) == [p.name for p in selftest]
    # the icon the Quality module reuses is shipped
    assert "Resources/Icons/DeepMultiModalReg.png" in modules["DeepMultiModalReg"]["resources"]
    assert sorted(unittests) == sorted(f"{name}.py" for name in MODULES)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_names_the_module_uses_from_the_backend_and_slicer_exist(name):
    pytest.importorskip("slicer")
    import importlib

    import slicer

    tree = module_tree(name)
    # modules imported as ``from dmmreg.slicer import quality``: every ``quality.X`` exists
    packages = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dmmreg":
            for alias in node.names:
                try:
                    packages[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:  # a name defined in the module, not a submodule
                    pass
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in packages:
            assert hasattr(packages[node.value.id], node.attr), f"dmmreg.{node.value.id} has no {node.attr}"
    if name == "DeepMultiModalRegQuality":
        assert "quality" in packages
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dmmreg":
            module = importlib.import_module(node.module)
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
            assert not missing, f"from {node.module} import {missing}: not there"
        if isinstance(node, ast.ImportFrom) and node.module == "slicer":
            missing = [alias.name for alias in node.names if not hasattr(slicer, alias.name)]
            assert not missing, f"slicer has no {missing}"


#: Node selectors of each module's panel.
SELECTORS = {"DeepMultiModalReg": 8, "DeepMultiModalRegQuality": 8, "DeepMultiModalRegSynthesis": 2,
             "DeepMultiModalRegFineTuning": 0}


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_selectors_accept_the_node_types_of_their_parameters(name):
    """The parameter node wrapper sets a selector's nodeTypes from its parameter's type; the .ui
    says the same, so the panel looks in Designer as it works in Slicer."""
    annotations = parameter_annotations(name)
    root = ET.parse(ui_file(name)).getroot()
    checked = 0
    for widget in root.iter("widget"):
        if widget.get("class") != "qMRMLNodeComboBox":
            continue
        props = {prop.get("name"): prop for prop in widget.findall("property")}
        parameter = props["SlicerParameterName"].findtext("string")
        types = {item.text for item in props["nodeTypes"].iter("string")}
        assert types == annotations[parameter], f"{widget.get('name')}: {types} but {parameter} is {annotations[parameter]}"
        none_enabled = props["noneEnabled"].findtext("bool") == "true"
        optional = parameter_is_optional(name, parameter)
        assert none_enabled == optional, f"{widget.get('name')}: None choice {none_enabled}, parameter optional {optional}"
        checked += 1
    assert checked == SELECTORS[name]
    if name == "DeepMultiModalRegQuality":  # any transform node (linear, grid, B-spline, composite) can be evaluated
        assert annotations["transform"] == {"vtkMRMLTransformNode"}


def test_the_self_test_case_jacobian_is_the_determinant():
    """What the self-test asserts, on slicer-core: an affine's Jacobian is its determinant."""
    slicer = pytest.importorskip("slicer")
    pytest.importorskip("torch")
    from dmmreg.slicer import quality
    from dmmreg.errors import InputError
    from dmmreg.slicer.selftest.quality_scene import SCALES, affine_test_scene, jacobian_error

    scene = slicer.vtkMRMLScene()
    case = affine_test_scene(scene)
    assert case.determinant == pytest.approx(float(np.prod(SCALES)), abs=1e-12)
    assert case.transform_node.IsA("vtkMRMLLinearTransformNode")
    volume, stats = quality.jacobian_volume(scene, case.transform_node, case.reference_node)
    assert jacobian_error(volume, case.determinant) < 1e-4
    assert stats["min"] == pytest.approx(case.determinant, abs=1e-4)
    assert stats["max"] == pytest.approx(case.determinant, abs=1e-4)
    assert stats["folding_percent"] == 0.0
    assert volume.GetDisplayNode().GetColorNode().GetName() == quality.JACOBIAN_COLOR_NODE_NAME

    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError):
        quality.jacobian_volume(scene, case.transform_node, None)
    case.reference_node.SetAndObserveTransformNodeID(case.transform_node.GetID())
    with pytest.raises(InputError, match="under the transform"):
        quality.jacobian_volume(scene, case.transform_node, case.reference_node)
    assert scene.GetNumberOfNodes() == count


def test_module_reports_input_errors_in_the_status_label():
    """Every measure runs through ``_run``, which shows InputError in the status label and a
    message box; and the Jacobian is shown over the fixed volume after it is computed."""
    text = MODULE_FILE.read_text(encoding="utf-8")
    run = re.search(r"    def _run\(.*?\n    def ", text, flags=re.S).group(0)
    assert "except InputError" in run and "self.ui.statusLabel.text" in run and "errorDisplay" in run
    for handler in ("onJacobianButton", "onLabelOverlapButton", "onInverseConsistencyButton",
                    "onLandmarkErrorButton", "onShowDeformationButton", "onSaveReportButton"):
        body = re.search(rf"    def {handler}\(.*?(?=\n    def )", text, flags=re.S).group(0)
        assert "self._run(" in body, f"{handler} does not go through _run"
    jacobian = re.search(r"    def onJacobianButton\(.*?(?=\n    def )", text, flags=re.S).group(0)
    assert "setSliceViewerLayers(background=p.reference_volume, foreground=volume" in jacobian
