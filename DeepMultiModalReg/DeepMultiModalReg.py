"""Registration module of the DeepMultiModalReg extension (3D Slicer scripted module).

A thin Qt widget over :mod:`dmmreg.slicer_logic` (the module's Lib package), which does the work
in a background process so Slicer stays responsive.  No torch import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLLinearTransformNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
)
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from dmmreg.errors import InputError
from dmmreg.slicer_logic import (
    QUALITIES,
    RegistrationFailed,
    RegistrationLogic,
    RegistrationParameters,
    device_choices,
    start_gpu_probe,
)

MaskNode = Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
SAMPLE_CONTRASTS = ("T1", "T2", "FLAIR")


def sample_data_folder() -> Path | None:
    """Bundled stroke T1/T2/FLAIR: in the installed module's resources, or in the source tree."""
    module_folder = Path(__file__).resolve().parent
    for folder in (module_folder / "Resources" / "SampleData" / "stroke",
                   module_folder.parent / "Resources" / "SampleData" / "stroke"):
        if (folder / "T1.nii.gz").exists():
            return folder
    return None


class DeepMultiModalReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Deep Multi-Modal Registration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepMultiModalReg developers"]
        self.parent.helpText = (
            "Registers a moving MRI volume (any contrast) to a fixed one: affine then deformable. "
            "The result is a transform (place the moving volume under it to see it on the fixed one), "
            "the warped volume and optionally the inverse transform. Sequences (4D) are registered "
            "frame by frame. The work runs in a background process; Apply becomes Cancel meanwhile."
        )
        self.parent.acknowledgementText = (
            "Sample data: stroke T1/T2/FLAIR from neurolabusc/VolumeRenderingData (MIT licence)."
        )
        slicer.app.connect("startupCompleted()", register_sample_data)


def register_sample_data() -> None:
    """Add the bundled stroke volumes to the Sample Data module (only inside Slicer)."""
    try:
        import SampleData
    except ImportError:
        return
    folder = sample_data_folder()
    if folder is None:
        return
    icon = Path(__file__).resolve().parent / "Resources" / "Icons" / "DeepMultiModalReg.png"
    for contrast in SAMPLE_CONTRASTS:
        path = folder / f"{contrast}.nii.gz"
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="DeepMultiModalReg",
            sampleName=f"Stroke{contrast}",
            uris=path.as_uri(),
            fileNames=path.name,
            nodeNames=f"Stroke{contrast}",
            thumbnailFileName=str(icon),
            loadFileType="VolumeFile",
        )


@parameterNodeWrapper
class DeepMultiModalRegParameterNode:
    """Module settings, saved with the scene (names match :class:`RegistrationParameters`)."""

    fixed_volume: vtkMRMLScalarVolumeNode
    moving_volume: vtkMRMLScalarVolumeNode
    fixed_mask: Optional[MaskNode]
    moving_mask: Optional[MaskNode]
    initial_transform: Optional[vtkMRMLLinearTransformNode]
    method: Annotated[str, Default("optimise")]
    model: str
    device: Annotated[str, Default("auto")]
    quality: Annotated[str, Choice(list(QUALITIES)), Default("balanced")]
    refine: Annotated[int, WithinRange(0, 500)]
    output_transform: Annotated[bool, Default(True)]
    composed_transform: bool
    output_warped_volume: Annotated[bool, Default(True)]
    output_inverse_transform: bool
    sequence: Optional[vtkMRMLSequenceNode]
    reference_frame: int
    reference_is_fixed: bool


class DeepMultiModalRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Inputs, method, outputs; Apply starts the background run and becomes Cancel."""

    POLL_MILLISECONDS = 100

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.run = None
        self._shownLogLines = 0
        self._gpuProbe = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepMultiModalReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepMultiModalRegLogic()

        self._fillMethods()
        self._fillDevices(None)
        self._gpuProbe = start_gpu_probe()
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MILLISECONDS)
        self.timer.connect("timeout()", self.onTimer)
        self.timer.start()

        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        if self.run is not None:
            self.run.cancel()
        self.timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self.run is not None:
            self.run.cancel()
            self._endRun("cancelled (scene closed)")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---- parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixed_volume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if volumes and not volumes[0].IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.fixed_volume = volumes[0]

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateFromParameterNode)
            self._updateFromParameterNode()

    def _updateFromParameterNode(self, caller=None, event=None):
        """Choosers whose items are not their values, and the Apply button state."""
        p = self._parameterNode
        for combo, value in ((self.ui.methodComboBox, p.method), (self.ui.deviceComboBox, p.device),
                             (self.ui.modelComboBox, p.model)):
            index = combo.findData(value)
            if index >= 0 and index != combo.currentIndex:
                combo.setCurrentIndex(index)
        if self.run is None:
            ready = bool(p.fixed_volume and (p.moving_volume or p.sequence))
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = "Run the registration" if ready else "Select a fixed and a moving volume (or a sequence)"

    # ---- choosers filled from the backend

    def _fillMethods(self):
        from dmmreg.methods import available_methods

        self._methodSummaries = dict(available_methods())
        self.ui.methodComboBox.clear()
        for name in self._methodSummaries:
            self.ui.methodComboBox.addItem(name, name)
        self.onMethodChanged()

    def onMethodChanged(self, index=None):
        name = self.ui.methodComboBox.currentData
        self.ui.methodSummaryLabel.text = self._methodSummaries.get(name, "")
        if self._parameterNode and name and self._parameterNode.method != name:
            self._parameterNode.method = name
        self._fillModels(name)

    def _fillModels(self, method):
        """Trained models of ``method`` (if the backend lists any); hidden for methods without."""
        from dmmreg import methods

        models = methods.available_models(method) if method else []
        self.ui.modelComboBox.clear()
        for name, summary in models:
            self.ui.modelComboBox.addItem(name, name)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, summary, qt.Qt.ToolTipRole)
        self.ui.modelComboBox.visible = self.ui.modelComboBoxLabel.visible = bool(models)

    def onModelChanged(self, index=None):
        if self._parameterNode:
            self._parameterNode.model = self.ui.modelComboBox.currentData or ""
            summary = self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex, qt.Qt.ToolTipRole)
            if summary:
                self.ui.methodSummaryLabel.text = summary

    def _fillDevices(self, probeOutput):
        current = self._parameterNode.device if self._parameterNode else "auto"
        self.ui.deviceComboBox.clear()
        for value, label in device_choices(probeOutput):
            self.ui.deviceComboBox.addItem(label, value)
        index = self.ui.deviceComboBox.findData(current)
        self.ui.deviceComboBox.setCurrentIndex(max(index, 0))

    def onDeviceChanged(self, index=None):
        if self._parameterNode and self.ui.deviceComboBox.currentData:
            self._parameterNode.device = self.ui.deviceComboBox.currentData

    # ---- running

    def onApplyButton(self):
        if self.run is not None:
            self.run.cancel()
            self._endRun("Cancelled; the scene is unchanged.")
            return
        if not self._ensureTorch():
            return
        p = self._parameterNode
        parameters = RegistrationParameters.from_object(p)
        self.ui.logTextEdit.clear()
        self._shownLogLines = 0
        try:
            if p.sequence:
                reference = None if p.reference_is_fixed else p.reference_frame
                self.run = self.logic.registration.start_sequence(parameters, p.sequence, reference)
            else:
                self.run = self.logic.registration.start(parameters)
        except InputError as error:
            slicer.util.errorDisplay(str(error), windowTitle="Registration inputs")
            return
        self.ui.applyButton.text = "Cancel"
        self.ui.applyButton.toolTip = "Stop the registration (nothing is added to the scene)"
        self.ui.progressBar.value = 0
        self.ui.stageLabel.text = "starting"

    def _ensureTorch(self):
        """PyTorch for the background process, from the PyTorch extension (installed on first
        use after the user agrees); torch itself is never imported in Slicer's process here."""
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay("This module needs the PyTorch extension; install it from the Extensions Manager.")
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return True
        with slicer.util.tryWithErrorDisplay("PyTorch could not be installed.", waitCursor=True):
            if torchLogic.installTorch(askConfirmation=True) is not None:
                return True
        return False

    def onTimer(self):
        if self._gpuProbe is not None and not self._gpuProbe.running:
            self._fillDevices([line for kind, line in self._gpuProbe.poll() if kind == "log"])
            self._gpuProbe = None
        if self.run is None:
            return
        self.run.poll()
        self.ui.progressBar.value = int(round(100 * self.run.fraction))
        self.ui.stageLabel.text = f"{self.run.stage}: {self.run.message}" if self.run.message else self.run.stage
        for line in self.run.log[self._shownLogLines:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._shownLogLines = len(self.run.log)
        if self.run.finished:
            self._finishRun()

    def _finishRun(self):
        run, self.run = self.run, None
        try:
            outputs = run.finish()
        except (RegistrationFailed, InputError) as error:
            self._endRun("Failed; see the log.")
            slicer.util.errorDisplay(f"Registration failed: {error}", windowTitle="Registration")
            return
        self._endRun("Done.")
        self._show(outputs)

    def _show(self, outputs):
        if outputs.warped_volume is not None:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.fixed_volume,
                                             foreground=outputs.warped_volume, foregroundOpacity=0.5)
        if outputs.browser is not None:
            slicer.modules.sequences.toolBar().setActiveBrowserNode(outputs.browser)

    def _endRun(self, message):
        self.run = None
        self.ui.applyButton.text = "Apply"
        self.ui.stageLabel.text = message
        self._updateFromParameterNode()


class DeepMultiModalRegLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: the parameter node, and the scene-level :class:`RegistrationLogic`."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.registration = RegistrationLogic(slicer.mrmlScene)

    def getParameterNode(self):
        return DeepMultiModalRegParameterNode(super().getParameterNode())


class DeepMultiModalRegTest(ScriptedLoadableModuleTest):
    """Self-test on the bundled stroke T1/FLAIR (fast quality); run from the Reload & Test button."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_flair_to_t1()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()
        self.setUp()
        self.test_labelmap_as_volume_is_refused()

    def _load_sample(self, contrast):
        folder = sample_data_folder()
        self.assertIsNotNone(folder, "bundled sample data (Resources/SampleData/stroke) is missing")
        return slicer.util.loadVolume(str(folder / f"{contrast}.nii.gz"), {"name": f"Stroke{contrast}"})

    def _parameters(self):
        return RegistrationParameters(fixed_volume=self._load_sample("T1"), moving_volume=self._load_sample("FLAIR"),
                                      quality="fast", output_inverse_transform=True)

    def test_register_flair_to_t1(self):
        """The bundled contrasts are aligned: the result must be close to the identity."""
        import numpy as np

        self.delayDisplay("Registering sample FLAIR to T1 in the background")
        parameters = self._parameters()
        logic = RegistrationLogic(slicer.mrmlScene)
        outputs = logic.run_to_end(logic.start(parameters), on_progress=lambda run, report: slicer.app.processEvents())
        self.assertIsNotNone(outputs.warped_volume)
        self.assertEqual(len(outputs.transform.nodes), 2)
        from_world = vtk.vtkGeneralTransform()
        outputs.transform.leaf.GetTransformFromWorld(from_world)
        bounds = [0.0] * 6
        parameters.fixed_volume.GetRASBounds(bounds)
        centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]
        moved = from_world.TransformPoint(centre)
        self.assertLess(float(np.linalg.norm(np.subtract(moved, centre))), 3.0)
        self.delayDisplay("Registration test passed")

    def test_cancel_leaves_scene_unchanged(self):
        import time

        parameters = self._parameters()
        count = slicer.mrmlScene.GetNumberOfNodes()
        run = RegistrationLogic(slicer.mrmlScene).start(parameters)
        time.sleep(2.0)
        run.poll()
        run.cancel()
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Cancel test passed")

    def test_labelmap_as_volume_is_refused(self):
        fixed = self._load_sample("T1")
        labelmap = slicer.modules.volumes.logic().CreateAndAddLabelVolume(fixed, "labels")
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):
            RegistrationLogic(slicer.mrmlScene).start(RegistrationParameters(fixed_volume=fixed, moving_volume=labelmap))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Input check test passed")
