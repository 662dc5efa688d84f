"""Registration module of the DeepMultiModalReg extension (3D Slicer scripted module).

A thin Qt widget over :mod:`dmmreg.slicer.registration_logic` (the module's Lib package), which does the work
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
    vtkMRMLTransformNode,
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
from dmmreg.slicer import about
from dmmreg.slicer.dependencies import ensure_dependencies
from dmmreg.slicer.about import sample_data_folder
from dmmreg.methods import DEFAULT_REFINE_ITERATIONS, TRANSFORMS
from dmmreg.slicer.background import run_to_end
from dmmreg.slicer.registration_inputs import QUALITIES, SIMILARITIES, RegistrationParameters
from dmmreg.slicer.registration_logic import RegistrationFailed, RegistrationLogic
from dmmreg.slicer.widgets import (RunControls, DeviceChoice, MethodModelChoice, ModelsFolderChoice,
    ParameterNodeBinding, select_by_data)

MaskNode = Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
SAMPLE_CONTRASTS = ("T1", "T2", "FLAIR")


class DeepMultiModalReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Deep Multi-Modal Registration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text(
            "Registers a moving MRI volume (any contrast) to a fixed one: rigid, affine, or affine then "
            "deformable (the Transform choice; learned methods stop at their rigid or affine pre-alignment). "
            "The result is a transform, written into the output transform you choose (only that node "
            "is overwritten) or into new nodes. The moving volume is left under it (its voxels unchanged) "
            "or, with 'harden', resampled on the fixed volume's grid into the output volume you choose or "
            "a new one; optionally the inverse transform too. Sequences (4D) are registered frame by "
            "frame into new sequences. The work runs in a background process; Apply becomes Cancel meanwhile."
        )
        self.parent.acknowledgementText = about.acknowledgement_text()
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
    transform: Annotated[str, Choice(list(TRANSFORMS)), Default("deformable")]
    refine: Annotated[int, WithinRange(0, 500), Default(DEFAULT_REFINE_ITERATIONS)]
    output_transform: Annotated[bool, Default(True)]
    output_transform_node: Optional[vtkMRMLTransformNode]  # None: new nodes
    composed_transform: bool
    harden_moving_volume: bool  # False: the moving volume is left under the result transform
    output_volume_node: Optional[vtkMRMLScalarVolumeNode]  # None: a new volume
    output_inverse_transform: bool
    similarity: Annotated[str, Choice(list(SIMILARITIES)), Default("nmi")]
    keep_temporary_files: bool
    sequence: Optional[vtkMRMLSequenceNode]
    reference_frame: int
    reference_is_fixed: bool


class DeepMultiModalRegWidget(RunControls, DeviceChoice, MethodModelChoice, ModelsFolderChoice, ParameterNodeBinding,
                              ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Inputs, method, outputs; Apply starts the background run and becomes Cancel."""

    RUN_ERRORS = (RegistrationFailed, InputError)
    RUN_NAME = RUN_TITLE = "Registration"
    RUN_FAILED_STATUS = "Failed; see the log."
    ONLY_RUNNABLE = True  # learned methods without a model are listed disabled, saying why

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._shownLogLines = 0

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self._loadPanel("DeepMultiModalReg")
        self.logic = DeepMultiModalRegLogic()

        self._setupMethods()
        self._setupModelsFolder()
        self._setupDevices()
        self._setupRunControls(self.ui.applyButton, self.ui.progressBar, self.ui.stageLabel)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self._bindToScene()

    # ---- parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        self._chooseDefaultVolume("fixed_volume")

    def _updateFromParameterNode(self, caller=None, event=None):
        """Choosers whose items are not their values, and the Apply button state."""
        p = self._parameterNode
        select_by_data(((self.ui.methodComboBox, p.method), (self.ui.deviceComboBox, p.device),
                        (self.ui.modelComboBox, p.model)))
        # the refinement adds a displacement field: for the deformable transform only
        self.ui.refineSpinBox.enabled = self.ui.refineSpinBoxLabel.enabled = p.transform == "deformable"
        self.ui.outputTransformSelector.enabled = self.ui.composedTransformCheckBox.enabled = p.output_transform
        self.ui.outputVolumeSelector.enabled = p.harden_moving_volume
        if self.run is None:
            ready = bool(p.fixed_volume and (p.moving_volume or p.sequence))
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = "Run the registration" if ready else "Select a fixed and a moving volume (or a sequence)"

    # ---- choosers filled from the backend (see MethodModelChoice)

    def _modelsFolderChanged(self):
        """The user models folder changed (see ModelsFolderChoice): list the methods and models again."""
        self._fillMethods()

    def _modelsFilled(self, method, models):
        """The model chooser is hidden for methods without trained models."""
        self.ui.modelComboBox.visible = self.ui.modelComboBoxLabel.visible = bool(models)

    def onModelChanged(self, index=None):
        """The model's summary replaces the method's."""
        MethodModelChoice.onModelChanged(self, index)
        if self._parameterNode:
            summary = self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex, qt.Qt.ToolTipRole)
            if summary:
                self.ui.methodSummaryLabel.text = summary

    # ---- running (see RunControls)

    def onApplyButton(self):
        if not self._mayStartRun():
            return
        p = self._parameterNode
        parameters = RegistrationParameters.from_object(p)
        self.ui.logTextEdit.clear()
        self._shownLogLines = 0
        try:
            if p.sequence:
                reference = None if p.reference_is_fixed else p.reference_frame
                run = self.logic.registration.start_sequence(parameters, p.sequence, reference)
            else:
                run = self.logic.registration.start(parameters)
        except InputError as error:
            slicer.util.errorDisplay(str(error), windowTitle="Registration inputs")
            return
        self._runStarted(run, "Stop the registration (nothing is added to the scene)")

    def _showRunLog(self, run):
        for line in run.log[self._shownLogLines:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._shownLogLines = len(run.log)

    def _finishRun(self, outputs):
        self._endRun("Done.")
        if outputs.moved_volume is not None:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.fixed_volume,
                                             foreground=outputs.moved_volume, foregroundOpacity=0.5)
        if outputs.browser is not None:
            slicer.modules.sequences.toolBar().setActiveBrowserNode(outputs.browser)


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
        # the same installer as Apply, agreed in advance: the tests need the backend's packages
        self.assertTrue(ensure_dependencies(ask=False), "the backend's Python packages are not installed")
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
                                      quality="fast", harden_moving_volume=True, output_inverse_transform=True)

    def test_register_flair_to_t1(self):
        """The bundled contrasts are aligned: the result must be close to the identity."""
        import numpy as np

        self.delayDisplay("Registering sample FLAIR to T1 in the background")
        parameters = self._parameters()
        logic = RegistrationLogic(slicer.mrmlScene)
        outputs = run_to_end(logic.start(parameters), on_progress=lambda run, report: slicer.app.processEvents())
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
