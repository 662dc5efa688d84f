"""The models-folder field of the Registration and Model Fine-tuning panels: one rule for both
(:class:`dmmreg.slicer.widgets.ModelsFolderChoice` over :mod:`dmmreg.slicer.settings`).

The mixin runs here on stand-ins of what it uses from Slicer (a ``ctkPathLineEdit`` with
PythonQt's ``connect``, ``ctk``'s filter flags, ``qt.QSettings`` as an INI file through PySide6):
a folder chosen in one panel is saved, used by the backend and shown by the other panel in the
next session; ``DMMREG_MODELS`` still wins and then the field is read-only."""

from __future__ import annotations

import ast
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from module_checks import module_tree, ui_file, widget_mixins

QtCore = pytest.importorskip("PySide6.QtCore", reason="PySide6 is not installed (pip install PySide6-Essentials)")

from dmmreg import model_io  # noqa: E402
from dmmreg.slicer.widgets import ModelsFolderChoice  # noqa: E402

PANELS = ("DeepMultiModalReg", "DeepMultiModalRegFineTuning")
CHANGED = "currentPathChanged(QString)"


class PathLineEditStandIn:
    """What the mixin uses of a ``ctkPathLineEdit`` in Slicer (PythonQt properties and connect)."""

    def __init__(self):
        self.filters, self.currentPath, self.enabled, self.slots = None, "", True, {}

    def connect(self, signal: str, slot) -> None:
        self.slots[signal] = slot

    def choose(self, path: str) -> None:
        """The user picks ``path``."""
        self.currentPath = path
        self.slots[CHANGED](path)


class PanelStandIn(ModelsFolderChoice):
    """A module widget with the models-folder field; counts how often it lists its models again."""

    def __init__(self):
        self.ui = types.SimpleNamespace(modelsFolderPathLineEdit=PathLineEditStandIn())
        self.listings = 0
        self._setupModelsFolder()

    def _modelsFolderChanged(self) -> None:
        self.listings += 1

    @property
    def field(self) -> PathLineEditStandIn:
        return self.ui.modelsFolderPathLineEdit


@pytest.fixture
def slicer_settings(tmp_path, monkeypatch):
    """Slicer's ``qt.QSettings()`` and ``ctk`` as the mixin imports them, on an INI file."""
    path = str(tmp_path / "slicer.ini")
    monkeypatch.setitem(sys.modules, "qt",
                        types.SimpleNamespace(QSettings=lambda: QtCore.QSettings(path, QtCore.QSettings.IniFormat)))
    monkeypatch.setitem(sys.modules, "ctk",
                        types.SimpleNamespace(ctkPathLineEdit=types.SimpleNamespace(Dirs=1)))
    monkeypatch.delenv("DMMREG_MODELS", raising=False)
    model_io.configure_user_models_folder(None)
    yield path
    model_io.configure_user_models_folder(None)


def test_models_folder_field_round_trip(slicer_settings, tmp_path, monkeypatch):
    from dmmreg.slicer import settings

    registration = PanelStandIn()
    assert registration.field.currentPath == str(model_io.default_user_models_folder())
    assert registration.field.enabled and registration.field.filters == 1
    registration.field.choose(str(tmp_path / "my models"))
    assert registration.listings == 1, "the panel lists the models of the new folder"
    assert model_io.user_models_folder() == tmp_path / "my models"
    assert QtCore.QSettings(slicer_settings, QtCore.QSettings.IniFormat).value(settings.USER_MODELS_FOLDER_KEY) == \
        str(tmp_path / "my models")

    model_io.configure_user_models_folder(None)  # the next Slicer session
    settings.apply_saved_settings()  # as every module's panel does when it is set up
    finetuning = PanelStandIn()
    assert finetuning.field.currentPath == str(tmp_path / "my models") and finetuning.field.enabled
    finetuning.field.choose("")  # cleared: back to the per-OS default
    assert model_io.user_models_folder() == model_io.default_user_models_folder()

    monkeypatch.setenv("DMMREG_MODELS", str(tmp_path / "from env"))  # the environment still wins
    pinned = PanelStandIn()
    assert pinned.field.currentPath == str(tmp_path / "from env") and not pinned.field.enabled


@pytest.mark.parametrize("name", PANELS)
def test_both_panels_have_the_field_with_one_rule(name):
    """Both modules mix in ModelsFolderChoice, list their models again on a change, and their
    .ui files have the field as a directory path widget."""
    assert "ModelsFolderChoice" in [mixin.name for mixin in widget_mixins(name)]
    widget = next(node for node in module_tree(name).body if isinstance(node, ast.ClassDef) and node.name == f"{name}Widget")
    methods = {item.name for item in widget.body if isinstance(item, ast.FunctionDef)}
    assert "_modelsFolderChanged" in methods and "onModelsFolderChanged" not in methods
    classes = {w.get("name"): w.get("class") for w in ET.parse(ui_file(name)).getroot().iter("widget")}
    assert classes.get("modelsFolderPathLineEdit") == "ctkPathLineEdit"
    assert Path(ui_file(name)).read_text(encoding="utf-8").count("DMMREG_MODELS") == 1, "the tooltip says what wins"
