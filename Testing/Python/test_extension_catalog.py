"""The extension as the Slicer Extensions Index and a Slicer user get it: its catalog entry and
CMake metadata, the modules' help, the install tree CMake makes (bundled models and sample data
found from it), the user models folder setting, the methods the Registration module offers and
the installer that runs before any backend work (Apply and the self-tests)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from module_checks import MODULE_NAMES, module_tree

from dmmreg import methods, model_io
from dmmreg.slicer import about, dependencies, settings

ROOT = Path(__file__).parents[2]
MODULE_FOLDER = ROOT / "DeepMultiModalReg"
PAPERS = ROOT.parent / "shared" / "papers"
RAW_PREFIX = "https://raw.githubusercontent.com/DeepMultiModalReg/SlicerDeepMultiModalReg/main/"


def cmake_variable(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert match, f"{name} is not set in CMakeLists.txt"
    return match.group(1)


# --------------------------------------------------------------------------------------------
# Catalog entry and metadata

#: Slicer's catalog entry schema v1.0.2 (Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json):
#: required fields, and every field allowed ("additionalProperties": false) with its type.
CATALOG_REQUIRED = ("$schema", "category", "scm_url")
CATALOG_FIELDS = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                  "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
                  "enabled": bool, "tier": int}


def test_catalog_entry_follows_the_extensions_index_schema():
    entry = json.loads((ROOT / "DeepMultiModalReg.json").read_text(encoding="utf-8"))
    assert all(key in entry for key in CATALOG_REQUIRED)
    assert set(entry) <= set(CATALOG_FIELDS), f"fields the schema forbids: {set(entry) - set(CATALOG_FIELDS)}"
    for key, value in entry.items():
        assert isinstance(value, CATALOG_FIELDS[key]), key
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                        r"slicer-extension-catalog-entry-schema-v1\.0\.\d\.json#", entry["$schema"])
    assert entry.get("scm_type", "git") in ("git", "local")
    assert 1 <= entry.get("tier", 1) <= 5
    assert all(isinstance(item, str) for item in entry["build_dependencies"])
    # the catalog and the extension agree
    assert entry["category"] == cmake_variable("EXTENSION_CATEGORY")
    assert entry["scm_url"] == about.HOMEPAGE
    assert set(cmake_variable("EXTENSION_DEPENDS").split()) <= set(entry["build_dependencies"])


def test_cmake_metadata_is_filled_and_points_into_this_repository():
    assert cmake_variable("EXTENSION_HOMEPAGE") == about.DOCUMENTATION_URL
    contributors = cmake_variable("EXTENSION_CONTRIBUTORS")
    assert contributors == ", ".join(about.CONTRIBUTORS)
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", entry) for entry in about.CONTRIBUTORS), "Name (Affiliation)"
    urls = [cmake_variable("EXTENSION_ICONURL")] + cmake_variable("EXTENSION_SCREENSHOTURLS").split()
    assert len(urls) >= 3
    for url in urls:
        assert url.startswith(RAW_PREFIX), url
        path = ROOT / url.removeprefix(RAW_PREFIX)
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    license_text = (ROOT / "LICENSE.txt").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_module_help_links_the_documentation_and_cites_the_papers():
    for name in MODULE_NAMES:
        text = (MODULE_FOLDER / f"{name}.py").read_text(encoding="utf-8")
        assert "self.parent.helpText = about.help_text(" in text, name
        assert "self.parent.acknowledgementText = about.acknowledgement_text()" in text, name
        assert "self.parent.contributors = list(about.CONTRIBUTORS)" in text, name
    assert about.DOCUMENTATION_URL in about.help_text("x")
    acknowledgement = about.acknowledgement_text()
    assert {c.method for c in about.CITATIONS} == set(methods.LEARNED_METHODS)
    for citation in about.CITATIONS:
        assert citation.text() in acknowledgement and citation.authors and 2018 <= citation.year <= 2023
        paper = PAPERS / citation.paper
        # the copies of 002, 003 and 004 begin with their titles: the citations have them
        if paper.exists() and citation.method in ("disentangled", "midir", "hierarchical"):
            def words(text):
                return " ".join(re.sub(r"[^a-z]", " ", text.lower()).split())

            assert words(citation.title) in words(paper.read_text(encoding="utf-8")[:1000]), citation.paper
    assert "C-STAR" in acknowledgement and "MIT" in acknowledgement


# --------------------------------------------------------------------------------------------
# The install tree: CMake's install rules, carried out

CMAKE_STUBS = r"""
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  string(REPLACE ";" "|" files "${MY_SCRIPTS};${MY_RESOURCES}")
  message(STATUS "MODULE|${files}")
endmacro()
macro(slicer_add_python_unittest)
endmacro()
function(install)
  string(REPLACE ";" "|" args "${ARGN}")
  message(STATUS "INSTALL|${args}")
endfunction()
"""
INSTALL_DIR = "lib/Slicer-5.8/qt-scripted-modules"


def install_tree(source_root: Path, prefix: Path) -> Path:
    """Run the module folder's CMakeLists.txt of ``source_root`` in script mode, then do what its
    install rules and slicerMacroBuildScriptedModule install (scripts and resources under the
    scripted-modules folder, by their relative paths) into ``prefix``; returns the modules folder."""
    module_folder = source_root / "DeepMultiModalReg"
    script = prefix.parent / "install.cmake"
    script.write_text(CMAKE_STUBS + f'set(CMAKE_CURRENT_SOURCE_DIR "{module_folder}")\n'
                      f'set(CMAKE_BINARY_DIR "{prefix.parent / "build"}")\n'
                      "set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)\n"
                      f"set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR {INSTALL_DIR})\nset(BUILD_TESTING OFF)\n"
                      + (module_folder / "CMakeLists.txt").read_text(encoding="utf-8"))
    result = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = prefix / INSTALL_DIR
    for line in (result.stdout + result.stderr).splitlines():
        line = line.removeprefix("-- ")
        if line.startswith("MODULE|"):
            for relative in filter(None, line.split("|")[1:]):
                (modules / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(module_folder / relative, modules / relative)
        elif line.startswith("INSTALL|"):
            args = line.split("|")[1:]
            assert args[0] == "FILES", f"an install rule this test does not carry out: {args}"
            files = args[1:args.index("DESTINATION")]
            destination = prefix / args[args.index("DESTINATION") + 1]
            destination.mkdir(parents=True, exist_ok=True)
            for file in files:
                shutil.copy2(file, destination / Path(file).name)
    return modules


def test_installed_extension_finds_its_bundled_models_and_sample_data(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    source = tmp_path / "source"
    shutil.copytree(MODULE_FOLDER, source / "DeepMultiModalReg",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "Resources" / "SampleData", source / "Resources" / "SampleData")
    shutil.copytree(ROOT / "models", source / "models")
    card = {"format": model_io.CARD_FORMAT, "name": "tiny-midir", "method": "midir", "dimension": 2, "config": {}}
    (source / "models" / "tiny-midir.json").write_text(json.dumps(card))
    (source / "models" / "tiny-midir.safetensors").write_bytes(b"\0" * 8)
    modules = install_tree(source, tmp_path / "install")
    assert (modules / "Resources" / "Models" / "tiny-midir.json").is_file()
    probe = (
        "import json, dmmreg\n"
        "from dmmreg import model_io, methods\n"
        "from dmmreg.slicer.about import sample_data_folder\n"
        "print(json.dumps({'package': dmmreg.__file__, 'bundled': str(model_io.BUNDLED_MODELS),\n"
        "  'models': [(c['name'], c['origin']) for c in model_io.list_models()],\n"
        "  'sample': str(sample_data_folder()),\n"
        "  'runnable': [n for n, _, why in methods.method_availability() if why is None]}))\n")
    env = {**os.environ, "PYTHONPATH": str(modules), "DMMREG_MODELS": str(tmp_path / "no-user-models")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["package"]).is_relative_to(modules)
    assert Path(found["bundled"]) == modules / "Resources" / "Models"
    assert ["tiny-midir", "bundled"] in found["models"]
    assert Path(found["sample"]) == modules / "Resources" / "SampleData" / "stroke"
    assert found["runnable"] == ["optimise", "midir"]
    # and the source tree finds the repository's models/ and sample data
    assert model_io.bundled_models_folder(MODULE_FOLDER / "dmmreg") == ROOT / "models"
    assert about.sample_data_folder(MODULE_FOLDER) == ROOT / "Resources" / "SampleData" / "stroke"


# --------------------------------------------------------------------------------------------
# Models: the user folder setting, the methods offered


@pytest.fixture
def qsettings(tmp_path, monkeypatch):
    QtCore = pytest.importorskip("PySide6.QtCore")
    monkeypatch.delenv("DMMREG_MODELS", raising=False)
    yield QtCore.QSettings(str(tmp_path / "slicer.ini"), QtCore.QSettings.IniFormat)
    model_io.configure_user_models_folder(None)


def test_user_models_folder_setting_round_trip(qsettings, tmp_path, monkeypatch):
    QtCore = pytest.importorskip("PySide6.QtCore")
    assert settings.saved_user_models_folder(qsettings) == ""
    assert model_io.user_models_folder() == model_io.default_user_models_folder()
    assert settings.user_models_folder_source() == "default"
    settings.save_user_models_folder(tmp_path / "my models", qsettings)
    qsettings.sync()
    model_io.configure_user_models_folder(None)  # a new Slicer session reads it back
    settings.apply_saved_settings(QtCore.QSettings(str(tmp_path / "slicer.ini"), QtCore.QSettings.IniFormat))
    assert model_io.user_models_folder() == tmp_path / "my models"
    assert settings.user_models_folder_source() == "settings"
    # the background process gets the same folder
    from dmmreg.slicer.background import backend_environment

    assert backend_environment()["DMMREG_MODELS"] == str(tmp_path / "my models")
    monkeypatch.setenv("DMMREG_MODELS", str(tmp_path / "from env"))  # the environment still wins
    assert model_io.user_models_folder() == tmp_path / "from env"
    assert settings.user_models_folder_source() == "environment"
    settings.save_user_models_folder("", qsettings)
    monkeypatch.delenv("DMMREG_MODELS")
    assert model_io.user_models_folder() == model_io.default_user_models_folder()


def test_default_user_models_folder_per_system(tmp_path):
    windows = model_io.default_user_models_folder("win32", {"LOCALAPPDATA": str(tmp_path / "Local")})
    assert windows == tmp_path / "Local" / "DeepMultiModalReg" / "models"
    assert model_io.default_user_models_folder("darwin", {}).parts[-4:] == (
        "Library", "Application Support", "DeepMultiModalReg", "models")
    linux = model_io.default_user_models_folder("linux", {"XDG_DATA_HOME": str(tmp_path / "data")})
    assert linux == tmp_path / "data" / "DeepMultiModalReg" / "models"


def test_methods_without_a_model_say_why_and_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "BUNDLED_MODELS", tmp_path / "bundled")
    monkeypatch.setenv("DMMREG_MODELS", str(tmp_path / "user"))
    rows = {name: why for name, _, why in methods.method_availability()}
    assert rows["optimise"] is None
    for name in methods.LEARNED_METHODS:
        assert "No trained" in rows[name] and "dmmreg train" in rows[name] and str(tmp_path / "user") in rows[name]
    (tmp_path / "user").mkdir()
    card = {"format": model_io.CARD_FORMAT, "name": "mine", "method": "fire", "dimension": 3, "config": {}}
    (tmp_path / "user" / "mine.json").write_text(json.dumps(card))
    rows = {name: why for name, _, why in methods.method_availability()}
    assert rows["fire"] is None and rows["midir"] is not None


def test_registration_module_offers_only_methods_that_can_run():
    text = (MODULE_FOLDER / "DeepMultiModalReg.py").read_text(encoding="utf-8")
    assert "ONLY_RUNNABLE = True" in text
    shared = (MODULE_FOLDER / "dmmreg" / "slicer" / "widgets.py").read_text(encoding="utf-8")
    assert "setEnabled(False)" in shared and "apply_saved_settings()" in shared


# --------------------------------------------------------------------------------------------
# Dependencies: on first use, before the self-tests


class TorchLogicStandIn:
    def __init__(self, calls):
        self.calls = calls

    def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
        self.calls.append(("torch", torchVersionRequirement))
        return object()


def test_installer_asks_then_installs_torch_and_the_missing_packages():
    calls, present = [], {"SimpleITK", "scipy", "matplotlib"}

    def find_spec(name):
        return object() if name in present else None

    def pip_install(requirement):
        calls.append(("pip", requirement))
        present.add(requirement.split(">=")[0])

    def confirm(message):
        calls.append(("ask", message))
        return True

    assert dependencies.install_dependencies(TorchLogicStandIn(calls), confirm, pip_install,
                                             torch_version=lambda: None, find_spec=find_spec)
    kinds = [kind for kind, _ in calls]
    assert kinds == ["ask", "torch", "ask", "pip"]
    assert calls[1] == ("torch", f">={dependencies.MINIMUM_TORCH}") and calls[3] == ("pip", "safetensors>=0.4")
    # torch new enough and everything present: nothing asked or installed
    calls.clear()
    assert dependencies.install_dependencies(TorchLogicStandIn(calls), confirm, pip_install,
                                             torch_version=lambda: "2.13.0+cpu", find_spec=find_spec)
    assert calls == []
    # the user declines: nothing installed, False; no PyTorch extension: False
    present.discard("safetensors")
    assert not dependencies.install_dependencies(TorchLogicStandIn(calls), lambda m: False, pip_install,
                                                 torch_version=lambda: "2.0.1", find_spec=find_spec)
    assert calls == []
    assert not dependencies.install_dependencies(None, confirm, pip_install)
    assert dependencies.version_at_least("2.13.0+cu128", "2.1") and not dependencies.version_at_least("2.0.1", "2.1")


def test_every_self_test_installs_the_dependencies_first():
    for name in MODULE_NAMES:
        tests = [node for node in module_tree(name).body if isinstance(node, ast.ClassDef) and node.name == f"{name}Test"]
        run_test = next(item for item in tests[0].body if isinstance(item, ast.FunctionDef) and item.name == "runTest")
        first = ast.unparse(run_test.body[0])
        assert "ensure_dependencies(ask=False)" in first, f"{name}.runTest starts with {first}"
    widgets = (MODULE_FOLDER / "dmmreg" / "slicer" / "widgets.py").read_text(encoding="utf-8")
    assert "return ensure_dependencies()" in widgets  # Apply's check (RunControls._mayStartRun)
