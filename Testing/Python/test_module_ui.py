"""The Registration module's .ui loads offscreen (PySide6) and has every widget the module uses.

CTK/qMRML widgets are replaced by stand-ins registered with QUiLoader.  Pictures of the panel
go to $DMMREG_TEST_ARTIFACTS (default: a pytest temporary folder) for a person to look at.
"""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
from PySide6.QtCore import Property, QFile  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

MODULE_FOLDER = Path(__file__).parents[2] / "DeepMultiModalReg"
MODULE_FILE = MODULE_FOLDER / "DeepMultiModalReg.py"
UI_FILE = MODULE_FOLDER / "Resources" / "UI" / "DeepMultiModalReg.ui"
ICON_FILE = MODULE_FOLDER / "Resources" / "Icons" / "DeepMultiModalReg.png"

#: Widget class expected from the end of a widget's name (the module's naming convention).
CLASS_BY_NAME_ENDING = [
    ("CollapsibleButton", "ctkCollapsibleButton"),
    ("Selector", "qMRMLNodeComboBox"),
    ("ComboBox", "QComboBox"),
    ("CheckBox", "QCheckBox"),
    ("SpinBox", "QSpinBox"),
    ("Button", "QPushButton"),
    ("Label", "QLabel"),
    ("ProgressBar", "QProgressBar"),
    ("TextEdit", "QPlainTextEdit"),
]


class CollapsibleButtonStandIn(QtWidgets.QGroupBox):
    """ctkCollapsibleButton stand-in: a group box whose ``text`` is its title."""

    def _text(self):
        return self.title()

    def _set_text(self, value):
        self.setTitle(value)

    def _collapsed(self):
        return not self.isChecked()

    def _set_collapsed(self, value):
        self.setCheckable(True)
        self.setChecked(not value)

    text = Property(str, _text, _set_text)
    collapsed = Property(bool, _collapsed, _set_collapsed)


class NodeComboBoxStandIn(QtWidgets.QComboBox):
    """qMRMLNodeComboBox stand-in: shows the node types it accepts."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._node_types = []
        self._none_enabled = False
        self._flags = {}

    def _refresh(self):
        self.clear()
        if self._none_enabled:
            self.addItem("None")
        for node_type in self._node_types:
            self.addItem(f"({node_type.replace('vtkMRML', '').replace('Node', '')})")

    def _get_node_types(self):
        return self._node_types

    def _set_node_types(self, value):
        self._node_types = list(value)
        self._refresh()

    def _get_none(self):
        return self._none_enabled

    def _set_none(self, value):
        self._none_enabled = bool(value)
        self._refresh()

    nodeTypes = Property("QStringList", _get_node_types, _set_node_types)
    noneEnabled = Property(bool, _get_none, _set_none)
    addEnabled = Property(bool, lambda self: self._flags.get("add", False), lambda self, v: self._flags.__setitem__("add", v))
    removeEnabled = Property(bool, lambda self: self._flags.get("remove", False), lambda self, v: self._flags.__setitem__("remove", v))
    renameEnabled = Property(bool, lambda self: self._flags.get("rename", False), lambda self, v: self._flags.__setitem__("rename", v))
    showChildNodeTypes = Property(bool, lambda self: self._flags.get("child", True), lambda self, v: self._flags.__setitem__("child", v))


STAND_INS = {
    "ctkCollapsibleButton": CollapsibleButtonStandIn,
    "qMRMLNodeComboBox": NodeComboBoxStandIn,
    "qMRMLWidget": QtWidgets.QWidget,
}


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture(scope="module")
def panel(app):
    loader = QUiLoader()
    for cls in STAND_INS.values():
        if cls is not QtWidgets.QWidget:
            loader.registerCustomWidget(cls)
    ui_file = QFile(str(UI_FILE))
    assert ui_file.open(QFile.ReadOnly)
    # custom class names in the .ui are mapped to the stand-ins by their class names
    text = bytes(ui_file.readAll()).decode()
    ui_file.close()
    for name, cls in STAND_INS.items():
        text = re.sub(rf'class="{name}"', f'class="{cls.__name__}"', text)
    text = re.sub(r"<customwidgets>.*</customwidgets>", "", text, flags=re.S)
    from PySide6.QtCore import QBuffer, QByteArray

    buffer = QBuffer()
    buffer.setData(QByteArray(text.encode()))
    buffer.open(QBuffer.ReadOnly)
    widget = loader.load(buffer)
    assert widget is not None, loader.errorString()
    widget.resize(440, 900)
    return widget


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = Path(os.environ.get("DMMREG_TEST_ARTIFACTS") or tmp_path_factory.mktemp("ui-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def ui_widget_classes() -> dict[str, str]:
    """``{widget name: class}`` as declared in the .ui file."""
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def module_ui_names() -> set[str]:
    """Every ``self.ui.X`` the module code uses."""
    tree = ast.parse(MODULE_FILE.read_text())
    return {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
    }


def expected_class(name: str) -> str:
    for ending, cls in CLASS_BY_NAME_ENDING:
        if name.endswith(ending) or name.lower().endswith(ending.lower()):
            return cls
    raise AssertionError(f"widget name {name} does not say what kind of widget it is")


def parameter_node_fields() -> set[str]:
    tree = ast.parse(MODULE_FILE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "DeepMultiModalRegParameterNode":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("the module has no DeepMultiModalRegParameterNode")


def test_every_widget_the_module_uses_exists_with_the_expected_class():
    declared = ui_widget_classes()
    used = module_ui_names()
    assert used, "the module code uses no self.ui widgets?"
    missing = sorted(used - declared.keys())
    assert not missing, f"the module uses widgets the .ui lacks: {missing}"
    wrong = {name: declared[name] for name in used if declared[name] != expected_class(name)}
    assert not wrong, f"widgets with an unexpected class: {wrong}"


def test_parameter_bindings_name_parameter_node_fields():
    """Every SlicerParameterName in the .ui is a parameter node field, and the parameter node
    holds every field the logic's RegistrationParameters reads."""
    root = ET.parse(UI_FILE).getroot()
    bound = {prop.findtext("string") for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"}
    fields = parameter_node_fields()
    assert bound and bound <= fields, f"bound to unknown parameters: {sorted(bound - fields)}"
    pytest.importorskip("slicer")
    from dataclasses import fields as dataclass_fields

    from dmmreg.slicer_logic import RegistrationParameters

    logic_fields = {f.name for f in dataclass_fields(RegistrationParameters)}
    assert logic_fields <= fields, f"parameter node lacks {sorted(logic_fields - fields)}"


def test_panel_loads_and_is_pictured(panel, artifacts):
    for name, cls in ui_widget_classes().items():
        if name == panel.objectName():
            continue
        child = panel.findChild(QtWidgets.QWidget, name)
        assert child is not None, f"{name} ({cls}) was not created"
    fill_choosers_as_the_module_does(panel)
    panel.show()
    QtWidgets.QApplication.processEvents()
    assert panel.grab().save(str(artifacts / "registration_panel.png"))
    for section in panel.findChildren(CollapsibleButtonStandIn):
        assert section.grab().save(str(artifacts / f"registration_{section.objectName()}.png"))

    # how it looks while running: Apply became Cancel, progress, stage and log
    panel.findChild(QtWidgets.QPushButton, "applyButton").setText("Cancel")
    panel.findChild(QtWidgets.QPushButton, "applyButton").setEnabled(True)
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(42)
    panel.findChild(QtWidgets.QLabel, "stageLabel").setText("deformable: level 1 of 2")
    log = panel.findChild(QtWidgets.QPlainTextEdit, "logTextEdit")
    log.appendPlainText("affine: level 2 of 2, NMI 0.412")
    log.appendPlainText("deformable: level 1 of 2, NMI 0.447")
    QtWidgets.QApplication.processEvents()
    assert panel.grab().save(str(artifacts / "registration_panel_running.png"))
    assert (artifacts / "registration_panel.png").stat().st_size > 1000


def fill_choosers_as_the_module_does(panel):
    """Device choices from the logic, methods from the backend registry (when they import)."""
    pytest.importorskip("slicer")
    from dmmreg.slicer_logic import device_choices

    devices = panel.findChild(QtWidgets.QComboBox, "deviceComboBox")
    for value, label in device_choices(['[{"name": "NVIDIA H100 80GB HBM3", "memory": 85520809984}]']):
        devices.addItem(label, value)
    try:
        from dmmreg.methods import available_methods
    except ImportError:
        return
    methods = panel.findChild(QtWidgets.QComboBox, "methodComboBox")
    for name, summary in available_methods():
        methods.addItem(name, name)
        panel.findChild(QtWidgets.QLabel, "methodSummaryLabel").setText(summary)


def test_icon_is_a_png():
    assert ICON_FILE.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
