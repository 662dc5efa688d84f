"""Model Fine-tuning module of the DeepMultiModalReg extension (3D Slicer scripted module).

A thin Qt widget over :mod:`dmmreg.slicer.finetuning_logic` (the module's Lib package, shared with the
Registration module): fine-tunes a learned model on a cohort (a folder or CSV file, or the scene's
volumes named ``SUBJECT_CONTRAST``, see :mod:`dmmreg.slicer.scene_cohort`) in a background process, with
live loss and validation curves (table and plot nodes), and saves a new user model that the
Registration module lists at once.  Start becomes Cancel; cancelling waits for the checkpoint.
No torch import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import qt
import slicer
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from dmmreg import model_io
from dmmreg.slicer import scene_cohort
from dmmreg.errors import InputError
from dmmreg.slicer import about
from dmmreg.slicer.dependencies import ensure_dependencies
from dmmreg.slicer.finetuning_logic import FineTuningFailed, FineTuningLogic, check_parameters
from dmmreg.slicer.widgets import (RunControls, DeviceChoice, ModelsFolderChoice, ParameterNodeBinding,
    select_by_data)

ICON = Path(__file__).resolve().parent / "Resources" / "Icons" / "DeepMultiModalReg.png"


class DeepMultiModalRegFineTuning(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Model Fine-tuning"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text(
            "Fine-tunes a learned registration model on your images: a cohort folder or CSV file, or the "
            "volumes of this scene named SUBJECT_CONTRAST (e.g. sub-01_T1, sub-01_FLAIR, and a label map "
            "sub-01_labels). The loss and the validation error are plotted while it runs in a background "
            "process; the new model is saved in your models folder (the Models folder field, the same setting "
            "as in the Registration module) and selectable in the Registration module."
        )
        self.parent.acknowledgementText = about.acknowledgement_text()
        if ICON.exists():  # the extension's icon, shared with the Registration module
            self.parent.icon = qt.QIcon(str(ICON))


@parameterNodeWrapper
class DeepMultiModalRegFineTuningParameterNode:
    """Module settings, saved with the scene (names as in :class:`FineTuningParameters`)."""

    cohort_source: Annotated[str, Choice(list(scene_cohort.COHORT_SOURCES)), Default("files")]
    cohort: Path
    base_model: str
    name: str
    epochs: Annotated[int, WithinRange(1, 1000), Default(5)]
    epoch_steps: Annotated[int, WithinRange(1, 100000), Default(100)]
    learning_rate: Annotated[float, WithinRange(0.0, 1.0), Default(0.0)]  # 0: the method's
    device: Annotated[str, Default("auto")]


class DeepMultiModalRegFineTuningWidget(RunControls, DeviceChoice, ModelsFolderChoice, ParameterNodeBinding,
                                        ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Cohort, base model, models folder and settings; Start runs in the background and becomes Cancel."""

    POLL_MILLISECONDS = 200
    RUN_BUTTON_TEXT = "Start"
    RUN_ERRORS = (FineTuningFailed, InputError)
    RUN_NAME = "Fine-tuning"
    RUN_TITLE = "Model fine-tuning"

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._curves = None  # the latest run, whose loss and validation charts can be shown

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self._loadPanel("DeepMultiModalRegFineTuning")
        self.logic = DeepMultiModalRegFineTuningLogic()

        import ctk

        self.ui.cohortPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files
        self.ui.cohortPathLineEdit.nameFilters = ["Cohort folder or CSV (*.csv)", "All files (*)"]
        self._fillBaseModels()
        self._setupModelsFolder()
        self._setupDevices()
        self._setupRunControls(self.ui.startButton, self.ui.progressBar, self.ui.statusLabel)
        self.ui.baseModelComboBox.connect("currentIndexChanged(int)", self.onBaseModelChanged)
        self.ui.groupVolumesButton.connect("clicked(bool)", self.onGroupVolumesButton)
        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.lossChartButton.connect("clicked(bool)", lambda: self._showChart("loss"))
        self.ui.validationChartButton.connect("clicked(bool)", lambda: self._showChart("validation"))
        self._bindToScene()

    # ---- parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def _updateFromParameterNode(self, caller=None, event=None):
        """Choosers whose items are not their values, the cohort widgets, the Start button."""
        p = self._parameterNode
        select_by_data(((self.ui.baseModelComboBox, p.base_model), (self.ui.deviceComboBox, p.device)))
        self.ui.lossChartButton.enabled = self.ui.validationChartButton.enabled = self._curves is not None
        fromScene = p.cohort_source == "scene"
        self.ui.cohortPathLineEdit.enabled = not fromScene
        self.ui.groupVolumesButton.enabled = fromScene
        if self.run is None:
            ready = bool(p.base_model and p.name and (fromScene or str(p.cohort) not in ("", ".")))
            self.ui.startButton.enabled = ready
            self.ui.startButton.toolTip = ("Fine-tune in the background" if ready
                                           else "Choose the cohort, the base model and the new model's name")

    # ---- choosers filled from the backend (devices: see DeviceChoice)

    def _fillBaseModels(self):
        """Every learned model (bundled and the user's), as ``dmmreg models`` lists them."""
        self.ui.baseModelComboBox.clear()
        for card in model_io.list_models():
            self.ui.baseModelComboBox.addItem(f"{card['name']} ({card['method']}, {card['dimension']}D, {card['origin']})",
                                              card["path"])
        self.onBaseModelChanged()

    def _modelsFolderChanged(self):
        """The user models folder changed (see ModelsFolderChoice): list the base models again."""
        self._fillBaseModels()

    def onBaseModelChanged(self, index=None):
        if self._parameterNode:
            self._parameterNode.base_model = self.ui.baseModelComboBox.currentData or ""

    def onGroupVolumesButton(self):
        try:
            self.ui.cohortSummaryLabel.text = scene_cohort.group_scene_volumes(slicer.mrmlScene).summary()
        except InputError as error:
            self.ui.cohortSummaryLabel.text = str(error)

    # ---- running (see RunControls)

    def onStartButton(self):
        if not self._mayStartRun():  # Start was Cancel: self._cancel() stops the run
            return
        p = self._parameterNode
        try:
            parameters = scene_cohort.parameters_from_panel(p, slicer.mrmlScene)
            run = self.logic.finetuning.start(parameters)
        except InputError as error:
            self.ui.statusLabel.text = f"Fine-tuning: {error}"
            slicer.util.errorDisplay(str(error), windowTitle="Fine-tuning inputs")
            return
        self._runStarted(run, "Stop after the current update (the checkpoint is kept, no model is written)")
        self._showCurves(run)

    def _cancel(self, message=None):
        """The logic's cancel waits for the backend's checkpoint: show that it is stopping (the
        status after it is the run's own message)."""
        self.ui.startButton.enabled = False
        self.ui.statusLabel.text = "stopping… (waiting for the current update and its checkpoint)"
        slicer.app.processEvents()
        run = self.run
        with slicer.util.tryWithErrorDisplay("Cancelling failed.", waitCursor=True):
            run.cancel()
        self._endRun(run.message or "Cancelled; no model was written.")

    def _finishRun(self, outputs):
        self._endRun(f"New model '{outputs.card['name']}' ({outputs.method}) saved as {outputs.model_path}; "
                     "it is selectable in the Registration module.")
        self.ui.validationResultLabel.text = scene_cohort.validation_summary(outputs.card)
        self._fillBaseModels()

    # ---- showing the curves

    def _showCurves(self, run):
        """The live loss chart in the layout's plot view; the buttons switch to the validation chart."""
        self._curves = run
        self.ui.validationResultLabel.text = (f"loss: chart '{run.loss.chart.GetName()}'; "
                                              f"validation: chart '{run.validation.chart.GetName()}'")
        self._showChart("loss")

    def _showChart(self, which):
        if self._curves is None:
            return
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (testing)
            return
        if layoutManager.plotWidget(0) is None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
        curve = self._curves.loss if which == "loss" else self._curves.validation
        slicer.modules.plots.logic().ShowChartInLayout(curve.chart)


class DeepMultiModalRegFineTuningLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: the parameter node, and the scene-level :class:`FineTuningLogic`."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.finetuning = FineTuningLogic(slicer.mrmlScene)

    def getParameterNode(self):
        return DeepMultiModalRegFineTuningParameterNode(super().getParameterNode())


class DeepMultiModalRegFineTuningTest(ScriptedLoadableModuleTest):
    """Self-test of the cohort grouping and the input checks on a small scene (no model, no
    torch, nothing started); run from the Reload & Test button."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # the same installer as Apply, agreed in advance: the tests need the backend's packages
        self.assertTrue(ensure_dependencies(ask=False), "the backend's Python packages are not installed")
        self.setUp()
        self.test_scene_volumes_grouped_by_subject()
        self.setUp()
        self.test_bad_parameters_give_clear_errors_and_change_nothing()

    def test_scene_volumes_grouped_by_subject(self):
        from dmmreg.slicer.selftest.finetuning_scene import cohort_test_scene

        nodes = cohort_test_scene(slicer.mrmlScene)
        cohort = scene_cohort.group_scene_volumes(slicer.mrmlScene)
        self.assertEqual({s: sorted(v) for s, v in cohort.subjects.items()}, {"s1": ["T1", "T2"], "s2": ["FLAIR", "T1"]})
        self.assertIs(cohort.labels["s1"], nodes["s1_labels"])
        self.assertEqual(cohort.skipped, ["Reference"])
        self.delayDisplay("Grouping test passed")

    def test_bad_parameters_give_clear_errors_and_change_nothing(self):
        import tempfile

        from dmmreg.slicer.selftest.finetuning_scene import cohort_test_scene, parameter_cases

        nodes = cohort_test_scene(slicer.mrmlScene)
        with tempfile.TemporaryDirectory() as folder:
            good, bad = parameter_cases(slicer.mrmlScene, nodes, folder)
            count = slicer.mrmlScene.GetNumberOfNodes()
            self.assertEqual(check_parameters(good).subjects, {"s1": ["t1", "t2"], "s2": ["t1", "flair"]})
            for parameters, words in bad:
                with self.assertRaises(InputError) as raised:
                    check_parameters(parameters)
                self.assertIn(words, str(raised.exception))
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Input check test passed")
