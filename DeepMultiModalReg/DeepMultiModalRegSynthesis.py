"""Synthesis Preview module of the DeepMultiModalReg extension (3D Slicer scripted module).

A thin Qt widget over :mod:`dmmreg.slicer.synthesis_logic` (the module's Lib package, shared with the
Registration module): a learned method that synthesises images (fire, disentangled,
hierarchical) renders the moving volume in the fixed volume's contrast, in a background process
(Apply becomes Cancel); the result is new volume nodes and an NMI/SSIM table, compared with the
real image side by side, by a fade or as a checkerboard.  No torch import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from dmmreg.slicer import synthesis_logic
from dmmreg.errors import InputError
from dmmreg.slicer import about
from dmmreg.slicer.dependencies import ensure_dependencies
from dmmreg.slicer.registration_logic import RegistrationFailed
from dmmreg.slicer.widgets import (RunControls, DeviceChoice, MethodModelChoice, ParameterNodeBinding,
    select_by_data)
from dmmreg.synthesis import SYNTHESISING_METHODS
from dmmreg.slicer.synthesis_logic import SynthesisLogic, SynthesisParameters

ICON = Path(__file__).resolve().parent / "Resources" / "Icons" / "DeepMultiModalReg.png"
#: The synthesised image the display controls compare with its real image (the fixed volume).
DISPLAYED = "moving_in_fixed_contrast"


class DeepMultiModalRegSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Synthesis Preview"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text(
            "What a learned registration network makes of the images: fire, disentangled and hierarchical "
            "models render the moving volume in the fixed volume's contrast (fire and disentangled also the "
            "fixed volume in the moving contrast). The synthesised volumes are new nodes; NMI and SSIM against "
            "the real image of the same contrast are shown in a table. Compare side by side, by a fade or as a "
            "checkerboard. The work runs in a background process; Apply becomes Cancel meanwhile."
        )
        self.parent.acknowledgementText = about.acknowledgement_text()
        if ICON.exists():  # the extension's icon, shared with the Registration module
            self.parent.icon = qt.QIcon(str(ICON))


@parameterNodeWrapper
class DeepMultiModalRegSynthesisParameterNode:
    """Module settings and the latest results, saved with the scene (inputs named as in
    :class:`SynthesisParameters`)."""

    fixed_volume: vtkMRMLScalarVolumeNode
    moving_volume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Default("fire")]
    model: str
    device: Annotated[str, Default("auto")]
    fade: Annotated[float, WithinRange(0.0, 1.0), Default(0.5)]
    tile_mm: Annotated[float, WithinRange(0.5, 200.0), Default(10.0)]
    # results (new nodes made by the logic; not bound to widgets)
    real_volume: Optional[vtkMRMLScalarVolumeNode]
    synthesised_volume: Optional[vtkMRMLScalarVolumeNode]
    report_table: Optional[vtkMRMLTableNode]


class DeepMultiModalRegSynthesisWidget(RunControls, DeviceChoice, MethodModelChoice, ParameterNodeBinding,
                                       ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Inputs, method and model; Apply starts the background run and becomes Cancel; display controls."""

    METHODS = SYNTHESISING_METHODS
    RUN_ERRORS = (RegistrationFailed, InputError, RuntimeError)
    RUN_NAME = "Synthesis"
    RUN_TITLE = "Synthesis preview"

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self._loadPanel("DeepMultiModalRegSynthesis")
        self.logic = DeepMultiModalRegSynthesisLogic()

        self._setupMethods()
        self._setupDevices()
        self._setupRunControls(self.ui.applyButton, self.ui.progressBar, self.ui.statusLabel)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.sideBySideButton.connect("clicked(bool)", self.onSideBySideButton)
        self.ui.fadeSliderWidget.connect("valueChanged(double)", self.onFadeChanged)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onCheckerboardButton)
        self._bindToScene()

    # ---- parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        self._chooseDefaultVolume("fixed_volume")

    def _updateFromParameterNode(self, caller=None, event=None):
        """Choosers whose items are not their values, the Apply and display buttons, the report."""
        p = self._parameterNode
        select_by_data(((self.ui.methodComboBox, p.method), (self.ui.deviceComboBox, p.device),
                        (self.ui.modelComboBox, p.model)))
        if self.run is None:
            ready = bool(p.fixed_volume and p.moving_volume and p.model)
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = ("Synthesise in the background" if ready else
                                           f"Select a fixed and a moving volume and a trained {p.method} model")
        shown = bool(p.real_volume and p.synthesised_volume)
        for widget in (self.ui.sideBySideButton, self.ui.fadeSliderWidget, self.ui.checkerboardButton,
                       self.ui.checkerboardTileDoubleSpinBox):
            widget.enabled = shown
        self.ui.similarityResultLabel.text = similarity_text(p.report_table)

    # ---- choosers filled from the backend (see MethodModelChoice: only the synthesising methods)

    def _modelsFilled(self, method, models):
        """Trained models of ``method``, as the Registration module lists them; a hint when none."""
        self.ui.modelComboBox.toolTip = "" if models else f"No trained {method} model: train or fine-tune one first"
        self.onModelChanged()

    # ---- running (see RunControls)

    def onApplyButton(self):
        if not self._mayStartRun():
            return
        p = self._parameterNode
        try:
            run = self.logic.synthesis.start(SynthesisParameters(
                fixed_volume=p.fixed_volume, moving_volume=p.moving_volume, method=p.method, model=p.model,
                device=p.device))
        except InputError as error:
            self.ui.statusLabel.text = f"Synthesis: {error}"
            slicer.util.errorDisplay(str(error), windowTitle="Synthesis preview inputs")
            return
        self._runStarted(run, "Stop the synthesis (nothing is added to the scene)")

    def _finishRun(self, outputs):
        p = self._parameterNode
        p.report_table = outputs.table
        p.real_volume = p.fixed_volume
        p.synthesised_volume = outputs.volumes.get(DISPLAYED) or next(iter(outputs.volumes.values()))
        self._endRun(f"Done: {', '.join(node.GetName() for node in outputs.volumes.values())}.")
        self._showTable(outputs.table)
        self.onFadeChanged(p.fade)

    # ---- showing results

    def _showTable(self, table):
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (testing)
            return
        if layoutManager.tableWidget(0) is None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def _display(self, what, show):
        p = self._parameterNode
        if not (p.real_volume and p.synthesised_volume):
            return None
        try:
            return show(p.real_volume, p.synthesised_volume)
        except InputError as error:
            self.ui.statusLabel.text = f"{what}: {error}"
            return None

    def onSideBySideButton(self):
        if self._display("Side by side", synthesis_logic.show_side_by_side) is not None:
            self.ui.statusLabel.text = "Real volume in the first slice view, synthesised volume in the second."

    def onFadeChanged(self, value=None):
        opacity = self._parameterNode.fade if value is None else float(value)
        self._display("Fade", lambda real, synthesised: synthesis_logic.show_fade(real, synthesised, opacity))

    def onCheckerboardButton(self):
        tile = self._parameterNode.tile_mm
        node = self._display("Checkerboard", lambda real, synthesised: synthesis_logic.show_checkerboard(
            real, synthesised, tile))
        if node is not None:
            self.ui.statusLabel.text = f"Checkerboard '{node.GetName()}': real and synthesised tiles of {tile:g} mm."


def similarity_text(table) -> str:
    """NMI and SSIM of each synthesised image, from the report table (``-`` before a run)."""
    if table is None or table.GetNumberOfRows() == 0:
        return "-"
    rows = []
    for row in range(table.GetNumberOfRows()):
        image = table.GetCellText(row, 0)
        nmi, ssim = float(table.GetCellText(row, 2)), float(table.GetCellText(row, 3))
        rows.append(f"{image}: NMI {nmi:.3f}, SSIM {ssim:.3f}")
    return "\n".join(rows)


class DeepMultiModalRegSynthesisLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: the parameter node, and the scene-level :class:`SynthesisLogic`."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.synthesis = SynthesisLogic(slicer.mrmlScene)

    def getParameterNode(self):
        return DeepMultiModalRegSynthesisParameterNode(super().getParameterNode())


class DeepMultiModalRegSynthesisTest(ScriptedLoadableModuleTest):
    """Self-test of the display and the input checks on a small synthetic scene (no model needed);
    run from the Reload & Test button."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # the same installer as Apply, agreed in advance: the tests need the backend's packages
        self.assertTrue(ensure_dependencies(ask=False), "the backend's Python packages are not installed")
        self.setUp()
        self.test_checkerboard_fade_and_side_by_side()
        self.setUp()
        self.test_bad_input_adds_no_node()

    def test_checkerboard_fade_and_side_by_side(self):
        from dmmreg.slicer.selftest.synthesis_scene import (OPACITY, TILE_MM, checkerboard_problems,
            display_test_scene, fade_problems, side_by_side_problems)

        self.delayDisplay("Checkerboard, fade and side by side of a known pair")
        case = display_test_scene(slicer.mrmlScene)
        board = synthesis_logic.show_checkerboard(case.real_node, case.synthesised_node, TILE_MM)
        self.assertEqual(checkerboard_problems(board, case, TILE_MM), [])
        composites = synthesis_logic.show_fade(case.real_node, case.synthesised_node, OPACITY)
        self.assertEqual(fade_problems(composites, case, OPACITY), [])
        composites = synthesis_logic.show_side_by_side(case.real_node, case.synthesised_node)
        self.assertEqual(side_by_side_problems(composites, case), [])
        self.delayDisplay("Display test passed")

    def test_bad_input_adds_no_node(self):
        from dmmreg.slicer.selftest.synthesis_scene import display_test_scene

        case = display_test_scene(slicer.mrmlScene)
        logic = SynthesisLogic(slicer.mrmlScene)
        count = slicer.mrmlScene.GetNumberOfNodes()
        for parameters, words in (
            (SynthesisParameters(case.real_node, case.synthesised_node, method="optimise", model="x"), "synthesises no images"),
            (SynthesisParameters(case.real_node, case.synthesised_node, method="fire", model=""), "select a trained fire model"),
            (SynthesisParameters(case.real_node, None, method="fire", model="x"), "select both"),
        ):
            with self.assertRaises(InputError) as raised:
                logic.start(parameters)
            self.assertIn(words, str(raised.exception))
        with self.assertRaises(InputError):
            synthesis_logic.show_fade(case.real_node, case.synthesised_node, 1.5)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Input check test passed")
