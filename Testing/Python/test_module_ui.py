"""Each scripted module's .ui loads offscreen (PySide6) and has every widget the module uses.

The same checks run for every module of the extension (Registration, Registration Quality,
Synthesis Preview, Model Fine-tuning):
see :data:`MODULES`.  CTK/qMRML widgets are replaced by stand-ins registered with QUiLoader.
Pictures of the panels go to $DMMREG_TEST_ARTIFACTS (default: a pytest temporary folder) for a
person to look at.
"""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
from module_checks import widget_mixins

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
from PySide6 import QtCore  # noqa: E402
from PySide6.QtCore import Property, QFile  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

MODULE_FOLDER = Path(__file__).parents[2] / "DeepMultiModalReg"
#: The Quality module reuses the extension's icon (see DeepMultiModalRegQuality.ICON).
ICON_FILE = MODULE_FOLDER / "Resources" / "Icons" / "DeepMultiModalReg.png"

#: Widget class expected from the end of a widget's name (the module's naming convention).
CLASS_BY_NAME_ENDING = [
    ("CollapsibleButton", "ctkCollapsibleButton"),
    ("Selector", "qMRMLNodeComboBox"),
    ("ComboBox", "QComboBox"),
    ("SliderWidget", "ctkSliderWidget"),
    ("PathLineEdit", "ctkPathLineEdit"),
    ("LineEdit", "QLineEdit"),
    ("CheckBox", "QCheckBox"),
    ("DoubleSpinBox", "QDoubleSpinBox"),
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
    """qMRMLNodeComboBox stand-in: shows the node types it accepts (and what None means)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._node_types = []
        self._none_enabled = False
        self._none_display = "None"
        self._flags = {}

    def _refresh(self):
        self.clear()
        if self._none_enabled:
            self.addItem(self._none_display)
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

    def _set_none_display(self, value):
        self._none_display = value
        self._refresh()

    nodeTypes = Property("QStringList", _get_node_types, _set_node_types)
    noneEnabled = Property(bool, _get_none, _set_none)
    noneDisplay = Property(str, lambda self: self._none_display, _set_none_display)
    addEnabled = Property(bool, lambda self: self._flags.get("add", False), lambda self, v: self._flags.__setitem__("add", v))
    removeEnabled = Property(bool, lambda self: self._flags.get("remove", False), lambda self, v: self._flags.__setitem__("remove", v))
    renameEnabled = Property(bool, lambda self: self._flags.get("rename", False), lambda self, v: self._flags.__setitem__("rename", v))
    showChildNodeTypes = Property(bool, lambda self: self._flags.get("child", True), lambda self, v: self._flags.__setitem__("child", v))


class PathLineEditStandIn(QtWidgets.QLineEdit):
    """ctkPathLineEdit stand-in: a line edit whose ``currentPath`` is its text."""

    currentPath = Property(str, QtWidgets.QLineEdit.text, QtWidgets.QLineEdit.setText)


class SliderWidgetStandIn(QtWidgets.QWidget):
    """ctkSliderWidget stand-in: a slider and a spin box showing one floating-point value."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider = QtWidgets.QSlider(self)
        self.slider.setOrientation(QtCore.Qt.Horizontal)
        self.slider.setRange(0, 1000)
        self.spinBox = QtWidgets.QDoubleSpinBox(self)
        layout.addWidget(self.slider)
        layout.addWidget(self.spinBox)
        self.spinBox.valueChanged.connect(self._sync)

    def _sync(self, value):
        low, high = self.spinBox.minimum(), self.spinBox.maximum()
        self.slider.setValue(int(round(1000 * (value - low) / (high - low))) if high > low else 0)

    value = Property(float, lambda self: self.spinBox.value(), lambda self, v: self.spinBox.setValue(v))
    minimum = Property(float, lambda self: self.spinBox.minimum(), lambda self, v: self.spinBox.setMinimum(v))
    maximum = Property(float, lambda self: self.spinBox.maximum(), lambda self, v: self.spinBox.setMaximum(v))
    singleStep = Property(float, lambda self: self.spinBox.singleStep(), lambda self, v: self.spinBox.setSingleStep(v))
    decimals = Property(int, lambda self: self.spinBox.decimals(), lambda self, v: self.spinBox.setDecimals(v))


STAND_INS = {
    "ctkCollapsibleButton": CollapsibleButtonStandIn,
    "qMRMLNodeComboBox": NodeComboBoxStandIn,
    "ctkPathLineEdit": PathLineEditStandIn,
    "ctkSliderWidget": SliderWidgetStandIn,
    "qMRMLWidget": QtWidgets.QWidget,
}


@dataclass(frozen=True)
class ModuleCase:
    """One scripted module of the extension: its code, its .ui and how its panel is pictured."""

    name: str
    picture: str  # prefix of the pictures of its panel
    fill: Callable  # fill(panel): what the module puts in its widgets at setup
    states: Callable  # states(panel, save): put the panel in other states and save(picture name)
    logic_fields: Optional[Callable] = None  # () -> parameter names the backend logic reads

    @property
    def module_file(self) -> Path:
        return MODULE_FOLDER / f"{self.name}.py"

    @property
    def ui_file(self) -> Path:
        return MODULE_FOLDER / "Resources" / "UI" / f"{self.name}.ui"

    @property
    def parameter_node_class(self) -> str:
        return f"{self.name}ParameterNode"


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def load_panel(ui_path: Path):
    loader = QUiLoader()
    for cls in STAND_INS.values():
        if cls is not QtWidgets.QWidget:
            loader.registerCustomWidget(cls)
    ui_file = QFile(str(ui_path))
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


def ui_widget_classes(ui_file: Path) -> dict[str, str]:
    """``{widget name: class}`` as declared in the .ui file."""
    root = ET.parse(ui_file).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def _is_self_attribute(node, name: str) -> bool:
    """Whether ``node`` is ``self.<name>``."""
    return (isinstance(node, ast.Attribute) and node.attr == name
            and isinstance(node.value, ast.Name) and node.value.id == "self")


def widget_code(case: "ModuleCase") -> list[ast.AST]:
    """The module's code and the ``dmmreg.slicer.widgets`` mixins its widget class uses."""
    return [ast.parse(case.module_file.read_text(encoding="utf-8")), *widget_mixins(case.name)]


def module_ui_names(case: "ModuleCase") -> set[str]:
    """Every ``self.ui.X`` the module code (with its widget's mixins) uses."""
    return {node.attr for tree in widget_code(case) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and _is_self_attribute(node.value, "ui")}


#: Methods of a parameter node wrapper (not parameters) the modules call.
WRAPPER_METHODS = {"connectGui", "disconnectGui", "parameterNode", "default", "isCached"}


def module_parameter_reads(case: "ModuleCase") -> set[str]:
    """Every ``p.X`` and ``self._parameterNode.X`` the module code (with its widget's mixins)
    reads or writes (``p`` is the modules' name for a parameter node), and every parameter named
    to ``self._chooseDefaultVolume("X", ...)``."""
    trees = widget_code(case)
    attributes = {node.attr for tree in trees for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute)
                  and ((isinstance(node.value, ast.Name) and node.value.id == "p")
                       or _is_self_attribute(node.value, "_parameterNode"))}
    named = {node.args[0].value for node in ast.walk(trees[0])
             if isinstance(node, ast.Call) and _is_self_attribute(node.func, "_chooseDefaultVolume")
             and node.args and isinstance(node.args[0], ast.Constant)}
    return (attributes | named) - WRAPPER_METHODS


def expected_class(name: str) -> str:
    for ending, cls in CLASS_BY_NAME_ENDING:
        if name.endswith(ending) or name.lower().endswith(ending.lower()):
            return cls
    raise AssertionError(f"widget name {name} does not say what kind of widget it is")


def parameter_node_fields(case: ModuleCase) -> set[str]:
    tree = ast.parse(case.module_file.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == case.parameter_node_class:
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"the module has no {case.parameter_node_class}")


# --------------------------------------------------------------------------------------------
# What differs between the modules


def fill_choosers_as_the_module_does(panel):
    """Device choices from the logic, methods from the backend registry (when they import)."""
    pytest.importorskip("slicer")
    from dmmreg.slicer.background import device_choices

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


def registration_running(panel, save):
    """How it looks while running: Apply became Cancel, progress, stage and log."""
    panel.findChild(QtWidgets.QPushButton, "applyButton").setText("Cancel")
    panel.findChild(QtWidgets.QPushButton, "applyButton").setEnabled(True)
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(42)
    panel.findChild(QtWidgets.QLabel, "stageLabel").setText("deformable: level 1 of 2")
    log = panel.findChild(QtWidgets.QPlainTextEdit, "logTextEdit")
    log.appendPlainText("affine: level 2 of 2, NMI 0.412")
    log.appendPlainText("deformable: level 1 of 2, NMI 0.447")
    save("running")


def registration_logic_fields() -> set[str]:
    pytest.importorskip("slicer")
    from dataclasses import fields as dataclass_fields

    from dmmreg.slicer.registration_inputs import RegistrationParameters

    return {f.name for f in dataclass_fields(RegistrationParameters)}


def fill_quality_as_the_module_does(panel):
    """The visualisation modes come from the logic (the parameter node's Choice)."""
    pytest.importorskip("slicer")
    from dmmreg.slicer.quality import VISUALIZATION_MODES

    modes = panel.findChild(QtWidgets.QComboBox, "visualizationModeComboBox")
    modes.clear()
    modes.addItems(list(VISUALIZATION_MODES))


def quality_results(panel, save):
    """How it looks with results, every section open, and with an input error."""
    for section in panel.findChildren(CollapsibleButtonStandIn):
        section.collapsed = False
    for name in ("jacobianButton", "labelOverlapButton", "inverseConsistencyButton", "landmarkErrorButton",
                 "showDeformationButton", "saveReportButton"):
        panel.findChild(QtWidgets.QPushButton, name).setEnabled(True)
    texts = {
        "foldingValueLabel": "0.012 % of 2777600 voxels",
        "sdLogJValueLabel": "0.0831",
        "jacobianRangeValueLabel": "-0.214 to 2.870 (mean 1.004)",
        "overlapResultLabel": "mean Dice 0.842 (min 0.611) over 3 labels; mean HD95 2.31 mm",
        "inverseConsistencyResultLabel": "mean 0.214 mm, 95% 0.603 mm, max 1.870 mm",
        "landmarkResultLabel": "10 pairs: mean 1.84 mm, median 1.62 mm, max 3.90 mm",
        "statusLabel": "Jacobian: 'Registration Jacobian' (blue: shrinks, red: grows, black: folding).",
    }
    for name, text in texts.items():
        panel.findChild(QtWidgets.QLabel, name).setText(text)
    panel.findChild(PathLineEditStandIn, "reportFolderPathLineEdit").currentPath = "/data/study/quality"
    save("results")
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText(
        "Label overlap: the fixed labels 'seg' (values 1, 2) and the moving labels 'atlas' (values 7) have no label "
        "in common; choose label maps of the same structures, numbered alike (or segmentations with the same "
        "segment names)")
    save("input_error")


def fill_synthesis_as_the_module_does(panel):
    """Devices as the Registration module lists them; only the methods that synthesise images."""
    pytest.importorskip("slicer")
    from dmmreg.slicer.background import device_choices
    from dmmreg.synthesis import SYNTHESISING_METHODS

    devices = panel.findChild(QtWidgets.QComboBox, "deviceComboBox")
    for value, label in device_choices(['[{"name": "NVIDIA H100 80GB HBM3", "memory": 85520809984}]']):
        devices.addItem(label, value)
    methods = panel.findChild(QtWidgets.QComboBox, "methodComboBox")
    for name in SYNTHESISING_METHODS:
        methods.addItem(name, name)
    panel.findChild(QtWidgets.QComboBox, "modelComboBox").addItem("fire-brain-3d", "fire-brain-3d")


def synthesis_results(panel, save):
    """Running (Apply became Cancel), then finished with the similarity and the display controls."""
    panel.findChild(QtWidgets.QPushButton, "applyButton").setText("Cancel")
    panel.findChild(QtWidgets.QPushButton, "applyButton").setEnabled(True)
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(60)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText("deformable: level 1 of 2")
    save("running")
    panel.findChild(QtWidgets.QPushButton, "applyButton").setText("Apply")
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(100)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText("Done: T1 in T2 contrast, T2 in T1 contrast.")
    panel.findChild(QtWidgets.QLabel, "similarityResultLabel").setText(
        "T1 in T2 contrast: NMI 1.214, SSIM 0.612\nT2 in T1 contrast: NMI 1.198, SSIM 0.587")
    for name in ("sideBySideButton", "checkerboardButton", "fadeSliderWidget", "checkerboardTileDoubleSpinBox"):
        panel.findChild(QtWidgets.QWidget, name).setEnabled(True)
    panel.findChild(SliderWidgetStandIn, "fadeSliderWidget").value = 0.3
    save("results")


def synthesis_logic_fields() -> set[str]:
    pytest.importorskip("slicer")
    from dataclasses import fields as dataclass_fields

    from dmmreg.slicer.synthesis_logic import SynthesisParameters

    return {f.name for f in dataclass_fields(SynthesisParameters)}


def fill_finetuning_as_the_module_does(panel):
    """Cohort sources (the parameter node's Choice), every learned model as base, the devices."""
    pytest.importorskip("slicer")
    from dmmreg.slicer.scene_cohort import COHORT_SOURCES
    from dmmreg.slicer.background import device_choices

    panel.findChild(QtWidgets.QComboBox, "cohortSourceComboBox").addItems(list(COHORT_SOURCES))
    panel.findChild(QtWidgets.QComboBox, "baseModelComboBox").addItem("midir-brain-3d (midir, 3D, bundled)", "midir-brain-3d")
    devices = panel.findChild(QtWidgets.QComboBox, "deviceComboBox")
    for value, label in device_choices(None):
        devices.addItem(label, value)
    from dmmreg.slicer.settings import models_folder_field

    panel.findChild(PathLineEditStandIn, "modelsFolderPathLineEdit").currentPath = models_folder_field()[0]


def finetuning_running(panel, save):
    """Running, stopping after Cancel, and finished with the validation before and after."""
    panel.findChild(QtWidgets.QLineEdit, "nameLineEdit").setText("midir-my-scanner")
    panel.findChild(PathLineEditStandIn, "cohortPathLineEdit").currentPath = "/data/study/cohort.csv"
    start = panel.findChild(QtWidgets.QPushButton, "startButton")
    start.setText("Cancel")
    start.setEnabled(True)
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(35)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText("train: update 175 of 500, loss 0.412")
    for name in ("lossChartButton", "validationChartButton"):
        panel.findChild(QtWidgets.QPushButton, name).setEnabled(True)
    panel.findChild(QtWidgets.QLabel, "validationResultLabel").setText(
        "loss: chart 'midir-my-scanner loss'; validation: chart 'midir-my-scanner validation'")
    save("running")
    start.setEnabled(False)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText("stopping… (waiting for the current update and its checkpoint)")
    save("stopping")
    start.setText("Start")
    start.setEnabled(True)
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(100)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText(
        "New model 'midir-my-scanner' (midir) saved; it is selectable in the Registration module.")
    panel.findChild(QtWidgets.QLabel, "validationResultLabel").setText(
        "validation before: EPE 2.140 mm, folding 0.021 %; after: EPE 1.630 mm, folding 0.004 %")
    save("finished")


def finetuning_logic_fields() -> set[str]:
    """The fields of FineTuningParameters the panel sets (the others keep their defaults; the
    scene's subjects and labels come from :func:`dmmreg.slicer.scene_cohort.group_scene_volumes`)."""
    pytest.importorskip("slicer")
    from dataclasses import fields as dataclass_fields

    from dmmreg.slicer.finetuning_logic import FineTuningParameters

    defaults = {"subjects", "labels", "contrast_pairs", "validation_subjects", "validation_pairs", "threads", "run_folder"}
    return {f.name for f in dataclass_fields(FineTuningParameters)} - defaults


MODULES = [
    ModuleCase("DeepMultiModalReg", "registration", fill_choosers_as_the_module_does, registration_running,
               registration_logic_fields),
    ModuleCase("DeepMultiModalRegQuality", "quality", fill_quality_as_the_module_does, quality_results),
    ModuleCase("DeepMultiModalRegSynthesis", "synthesis", fill_synthesis_as_the_module_does, synthesis_results,
               synthesis_logic_fields),
    ModuleCase("DeepMultiModalRegFineTuning", "finetuning", fill_finetuning_as_the_module_does, finetuning_running,
               finetuning_logic_fields),
]


@pytest.fixture(scope="module", params=MODULES, ids=[case.name for case in MODULES])
def case(request) -> ModuleCase:
    return request.param


@pytest.fixture(scope="module")
def panel(app, case):
    return load_panel(case.ui_file)


# --------------------------------------------------------------------------------------------
# The checks, for every module


def test_every_widget_the_module_uses_exists_with_the_expected_class(case):
    declared = ui_widget_classes(case.ui_file)
    used = module_ui_names(case)
    assert used, "the module code uses no self.ui widgets?"
    missing = sorted(used - declared.keys())
    assert not missing, f"the module uses widgets the .ui lacks: {missing}"
    wrong = {name: declared[name] for name in used if declared[name] != expected_class(name)}
    assert not wrong, f"widgets with an unexpected class: {wrong}"


def test_every_widget_of_the_ui_is_named_by_the_convention(case):
    """Every widget in the .ui says its class by its name, so a reader of the code knows it."""
    root_name = ET.parse(case.ui_file).getroot().find("widget").get("name")
    wrong = {name: cls for name, cls in ui_widget_classes(case.ui_file).items()
             if name != root_name and cls != expected_class(name)}
    assert not wrong, f"widgets whose class the name does not say: {wrong}"


def test_parameter_bindings_name_parameter_node_fields(case):
    """Every SlicerParameterName in the .ui is a parameter node field, the module reads only
    parameter node fields, and the parameter node holds every field the backend logic reads."""
    root = ET.parse(case.ui_file).getroot()
    bound = {prop.findtext("string") for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"}
    fields = parameter_node_fields(case)
    assert bound and bound <= fields, f"bound to unknown parameters: {sorted(bound - fields)}"
    read = module_parameter_reads(case)
    assert read <= fields, f"the module reads parameters its parameter node lacks: {sorted(read - fields)}"
    if case.logic_fields is not None:
        logic_fields = case.logic_fields()
        assert logic_fields <= fields, f"parameter node lacks {sorted(logic_fields - fields)}"


def test_panel_loads_and_is_pictured(case, panel, artifacts):
    for name, cls in ui_widget_classes(case.ui_file).items():
        if name == panel.objectName():
            continue
        child = panel.findChild(QtWidgets.QWidget, name)
        assert child is not None, f"{name} ({cls}) was not created"
    case.fill(panel)
    panel.show()
    QtWidgets.QApplication.processEvents()
    assert panel.grab().save(str(artifacts / f"{case.picture}_panel.png"))
    for section in panel.findChildren(CollapsibleButtonStandIn):
        assert section.grab().save(str(artifacts / f"{case.picture}_{section.objectName()}.png"))

    def save(state):
        QtWidgets.QApplication.processEvents()
        path = artifacts / f"{case.picture}_panel_{state}.png"
        assert panel.grab().save(str(path))
        assert path.stat().st_size > 1000

    case.states(panel, save)
    assert (artifacts / f"{case.picture}_panel.png").stat().st_size > 1000


def test_icon_is_a_png():
    assert ICON_FILE.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
