"""Quality inspection module of the DeepMultiModalReg extension (3D Slicer scripted module).

A thin Qt widget over :mod:`dmmreg.slicer.quality` (the module's Lib package, shared with the
Registration module): for any transform node in the scene (ours or another tool's) it computes
the Jacobian determinant, label overlap, inverse consistency and landmark error, shows the
deformation in the slice views and writes a report.  Every result is a new node; inputs are
never modified.  Bad input (:class:`~dmmreg.errors.InputError`) is reported in the status line.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
)
from slicer.parameterNodeWrapper import Choice, Default, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from dmmreg.slicer import quality
from dmmreg.errors import InputError
from dmmreg.slicer import about
from dmmreg.slicer.dependencies import ensure_dependencies
from dmmreg.slicer.widgets import ParameterNodeBinding, ensure_torch
from dmmreg.slicer.mrml import ATTRIBUTE_PREFIX

LabelsNode = Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
ICON = Path(__file__).resolve().parent / "Resources" / "Icons" / "DeepMultiModalReg.png"


class DeepMultiModalRegQuality(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Registration Quality"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = list(about.CONTRIBUTORS)
        self.parent.helpText = about.help_text(
            "How good is a registration? For any transform node (linear, grid, B-spline or composite, "
            "from this extension or another tool): the Jacobian determinant (folding, smoothness), "
            "Dice and HD95 of label maps or segmentations, inverse consistency, landmark error, and "
            "a display of the deformation. Results are new nodes; a report (JSON, CSV, PNG) can be saved."
        )
        self.parent.acknowledgementText = about.acknowledgement_text()
        if ICON.exists():  # the extension's icon, shared with the Registration module
            self.parent.icon = qt.QIcon(str(ICON))


@parameterNodeWrapper
class DeepMultiModalRegQualityParameterNode:
    """Module settings and the latest results, saved with the scene."""

    # inputs (bound to the .ui through SlicerParameterName)
    transform: vtkMRMLTransformNode
    reference_volume: vtkMRMLScalarVolumeNode
    mask: Optional[LabelsNode]
    fixed_labels: Optional[LabelsNode]
    moving_labels: Optional[LabelsNode]
    inverse_transform: Optional[vtkMRMLTransformNode]
    fixed_landmarks: Optional[vtkMRMLMarkupsFiducialNode]
    moving_landmarks: Optional[vtkMRMLMarkupsFiducialNode]
    visualization_mode: Annotated[str, Choice(list(quality.VISUALIZATION_MODES)), Default("grid")]
    report_folder: Path
    # results (new nodes made by the logic; not bound to widgets)
    jacobian_volume: Optional[vtkMRMLScalarVolumeNode]
    inverse_consistency_volume: Optional[vtkMRMLScalarVolumeNode]
    overlap_table: Optional[vtkMRMLTableNode]
    landmark_table: Optional[vtkMRMLTableNode]


def node_statistics(node) -> dict:
    """The statistics the logic stored on a result node (``DeepMultiModalReg.Statistics``)."""
    text = node.GetAttribute(ATTRIBUTE_PREFIX + "Statistics") if node is not None else None
    return json.loads(text) if text else {}


class DeepMultiModalRegQualityWidget(ParameterNodeBinding, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Inputs, one button per measure, results shown as new nodes and in the result labels."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self._loadPanel("DeepMultiModalRegQuality")
        self.logic = DeepMultiModalRegQualityLogic()

        import ctk

        self.ui.reportFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.jacobianButton.connect("clicked(bool)", self.onJacobianButton)
        self.ui.labelOverlapButton.connect("clicked(bool)", self.onLabelOverlapButton)
        self.ui.inverseConsistencyButton.connect("clicked(bool)", self.onInverseConsistencyButton)
        self.ui.landmarkErrorButton.connect("clicked(bool)", self.onLandmarkErrorButton)
        self.ui.showDeformationButton.connect("clicked(bool)", self.onShowDeformationButton)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReportButton)
        self._bindToScene()

    def cleanup(self):
        self.removeObservers()

    # ---- parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        # not one of the results of our modules (Jacobian, synthesised, warped volumes)
        self._chooseDefaultVolume("reference_volume", lambda volume: volume.GetAttribute(ATTRIBUTE_PREFIX + "Role") is None)

    def _updateFromParameterNode(self, caller=None, event=None):
        """Which buttons can run, and the results of the latest computations."""
        p = self._parameterNode
        base = bool(p.transform)
        onGrid = base and bool(p.reference_volume)
        for button, ready, need in (
            (self.ui.jacobianButton, onGrid, "a transform and its fixed volume"),
            (self.ui.labelOverlapButton, base and bool(p.fixed_labels and p.moving_labels),
             "a transform and fixed and moving labels"),
            (self.ui.inverseConsistencyButton, onGrid and bool(p.inverse_transform),
             "a transform, its inverse and the fixed volume"),
            (self.ui.landmarkErrorButton, base and bool(p.fixed_landmarks and p.moving_landmarks),
             "a transform and fixed and moving landmarks"),
            (self.ui.showDeformationButton, base, "a transform"),
            (self.ui.saveReportButton, bool(self.logic.resultNodes(p)), "a result (compute a measure first)"),
        ):
            button.enabled = ready
            if not ready:
                button.toolTip = f"Select {need}"
        self._showJacobianStatistics(node_statistics(p.jacobian_volume))
        overlap = node_statistics(p.overlap_table)
        self.ui.overlapResultLabel.text = (
            f"mean Dice {overlap['mean_dice']:.3f} (min {overlap['min_dice']:.3f}) over {overlap['labels']} labels; "
            f"mean HD95 {_mm(overlap['mean_hd95_mm'])}" if overlap else "-")
        inverse = node_statistics(p.inverse_consistency_volume)
        self.ui.inverseConsistencyResultLabel.text = (
            f"mean {inverse['mean_mm']:.3f} mm, 95% {inverse['p95_mm']:.3f} mm, max {inverse['max_mm']:.3f} mm"
            if inverse else "-")
        landmarks = node_statistics(p.landmark_table)
        self.ui.landmarkResultLabel.text = (
            f"{landmarks['count']} pairs: mean {landmarks['mean_mm']:.2f} mm, median {landmarks['median_mm']:.2f} mm, "
            f"max {landmarks['max_mm']:.2f} mm" if landmarks else "-")

    def _showJacobianStatistics(self, stats):
        if not stats:
            self.ui.foldingValueLabel.text = self.ui.sdLogJValueLabel.text = self.ui.jacobianRangeValueLabel.text = "-"
            return
        self.ui.foldingValueLabel.text = f"{stats['folding_percent']:.3f} % of {stats['voxels']} voxels"
        self.ui.sdLogJValueLabel.text = _number(stats["sdlogj"], "{:.4f}")
        self.ui.jacobianRangeValueLabel.text = (
            f"{_number(stats['min'], '{:.3f}')} to {_number(stats['max'], '{:.3f}')} (mean {_number(stats['mean'], '{:.3f}')})")

    # ---- running a measure

    def _run(self, what, compute, needsTorch=True):
        """``compute()`` with a wait cursor; InputError (and any failure) reported in the status
        label and a message box.  Returns the result, or None on failure."""
        if needsTorch and not ensure_torch():
            self.ui.statusLabel.text = f"{what}: needs PyTorch (PyTorch extension)."
            return None
        self.ui.statusLabel.text = f"{what}: computing..."
        slicer.app.processEvents()
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            result = compute()
        except InputError as error:
            qt.QApplication.restoreOverrideCursor()
            self.ui.statusLabel.text = f"{what}: {error}"
            slicer.util.errorDisplay(str(error), windowTitle=f"Registration quality: {what}")
            return None
        except Exception as error:  # a bug, not bad input: show the details
            qt.QApplication.restoreOverrideCursor()
            self.ui.statusLabel.text = f"{what} failed: {error}"
            slicer.util.errorDisplay(f"{what} failed: {error}", windowTitle="Registration quality",
                                     detailedText=traceback.format_exc())
            return None
        qt.QApplication.restoreOverrideCursor()
        return result

    def onJacobianButton(self):
        p = self._parameterNode
        result = self._run("Jacobian", lambda: self.logic.computeJacobian(p))
        if result is None:
            return
        volume, stats = result
        slicer.util.setSliceViewerLayers(background=p.reference_volume, foreground=volume, foregroundOpacity=0.6)
        self.ui.statusLabel.text = f"Jacobian: '{volume.GetName()}' (blue: shrinks, red: grows, black: folding)."

    def onLabelOverlapButton(self):
        p = self._parameterNode
        result = self._run("Label overlap", lambda: self.logic.computeLabelOverlap(p))
        if result is None:
            return
        table, chart = result
        self._showInLayout(table, chart)
        self.ui.statusLabel.text = f"Label overlap: table '{table.GetName()}' and chart '{chart.GetName()}'."

    def onInverseConsistencyButton(self):
        p = self._parameterNode
        result = self._run("Inverse consistency", lambda: self.logic.computeInverseConsistency(p))
        if result is None:
            return
        volume, stats = result
        slicer.util.setSliceViewerLayers(background=p.reference_volume, foreground=volume, foregroundOpacity=0.6)
        self.ui.statusLabel.text = f"Inverse consistency: '{volume.GetName()}' (error in mm)."

    def onLandmarkErrorButton(self):
        p = self._parameterNode
        result = self._run("Landmark error", lambda: self.logic.computeLandmarkError(p))
        if result is None:
            return
        table, stats = result
        self._showInLayout(table)
        self.ui.statusLabel.text = f"Landmark error: table '{table.GetName()}'."

    def onShowDeformationButton(self):
        p = self._parameterNode
        display = self._run("Deformation display", lambda: self.logic.showDeformation(p), needsTorch=False)
        if display is not None:
            self.ui.statusLabel.text = f"Showing '{p.transform.GetName()}' as {p.visualization_mode} in the slice views."

    def onSaveReportButton(self):
        p = self._parameterNode
        picture = p.jacobian_volume is not None and self._ensureMatplotlib()
        paths = self._run("Report", lambda: self.logic.saveReport(p, picture=picture), needsTorch=False)
        if paths is not None:
            self.ui.statusLabel.text = f"Report saved: {paths['json']}"

    # ---- showing results

    def _showInLayout(self, table, chart=None):
        """The table (and chart) in a layout with a table (and plot) view."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (testing)
            return
        if chart is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        elif layoutManager.tableWidget(0) is None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    # ---- optional packages

    def _ensureMatplotlib(self):
        """matplotlib draws the report's Jacobian picture; without it the report has no picture."""
        try:
            import matplotlib  # noqa: F401
            return True
        except ImportError:
            pass
        if not slicer.util.confirmOkCancelDisplay("The report's Jacobian picture needs matplotlib. Install it now?\n"
                                                  "(Cancel: save the report without the picture.)"):
            return False
        with slicer.util.tryWithErrorDisplay("matplotlib could not be installed.", waitCursor=True):
            slicer.util.pip_install("matplotlib")
            return True
        return False


def _number(value, form):
    return "-" if value is None else form.format(value)


def _mm(value):
    return "-" if value is None else f"{value:.2f} mm"


class DeepMultiModalRegQualityLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: reads a parameter node, calls :mod:`dmmreg.slicer.quality`, and keeps
    the new result nodes in the parameter node.  Usable without the widget."""

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene

    @property
    def _scene(self):
        return self.scene if self.scene is not None else slicer.mrmlScene

    def getParameterNode(self):
        return DeepMultiModalRegQualityParameterNode(super().getParameterNode())

    def computeJacobian(self, p):
        volume, stats = quality.jacobian_volume(self._scene, p.transform, p.reference_volume, p.mask)
        p.jacobian_volume = volume
        return volume, stats

    def computeLabelOverlap(self, p):
        table, chart = quality.label_overlap(self._scene, p.fixed_labels, p.moving_labels, p.transform,
                                             p.reference_volume)
        p.overlap_table = table
        return table, chart

    def computeInverseConsistency(self, p):
        volume, stats = quality.inverse_consistency(self._scene, p.transform, p.inverse_transform,
                                                    p.reference_volume, p.mask)
        p.inverse_consistency_volume = volume
        return volume, stats

    def computeLandmarkError(self, p):
        table, stats = quality.landmark_error(self._scene, p.fixed_landmarks, p.moving_landmarks, p.transform)
        p.landmark_table = table
        return table, stats

    def showDeformation(self, p):
        return quality.show_deformation_grid(p.transform, p.visualization_mode, p.reference_volume)

    @staticmethod
    def resultNodes(p) -> dict:
        """``{measure: node}`` of the results computed so far (and still in the scene)."""
        nodes = {"jacobian": p.jacobian_volume, "label_overlap": p.overlap_table,
                 "inverse_consistency": p.inverse_consistency_volume, "landmarks": p.landmark_table}
        return {name: node for name, node in nodes.items() if node is not None}

    def saveReport(self, p, picture=True):
        """Write the report of the latest results into ``p.report_folder`` (empty: beside the
        saved scene); returns the paths written (see :func:`dmmreg.slicer.quality.write_report`)."""
        results = self.resultNodes(p)
        if not results:
            raise InputError("there is no result to report yet; compute a measure first")
        stats = {name: node_statistics(node) for name, node in results.items()}
        stats["transform"] = p.transform.GetName() if p.transform else ""
        stats["reference_volume"] = p.reference_volume.GetName() if p.reference_volume else ""
        tables = {name: results[name] for name in ("label_overlap", "landmarks") if name in results}
        folder = str(p.report_folder) if p.report_folder is not None else ""
        return quality.write_report(self._scene, folder if folder not in ("", ".") else None, tables, stats,
                                    jacobian_volume_node=p.jacobian_volume if picture else None)


class DeepMultiModalRegQualityTest(ScriptedLoadableModuleTest):
    """Self-test on a small synthetic scene; run from the Reload & Test button (needs PyTorch)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # the same installer as Apply, agreed in advance: the tests need the backend's packages
        self.assertTrue(ensure_dependencies(ask=False), "the backend's Python packages are not installed")
        self.setUp()
        self.test_jacobian_of_an_affine_is_its_determinant()
        self.setUp()
        self.test_bad_input_adds_no_node()
        self.setUp()
        self.test_report_and_deformation_display()

    def _parameters(self):
        from dmmreg.slicer.selftest.quality_scene import affine_test_scene

        case = affine_test_scene(slicer.mrmlScene)
        logic = DeepMultiModalRegQualityLogic()
        p = logic.getParameterNode()
        p.transform = case.transform_node
        p.reference_volume = case.reference_node
        return logic, p, case

    def test_jacobian_of_an_affine_is_its_determinant(self):
        from dmmreg.slicer.selftest.quality_scene import jacobian_error

        self.delayDisplay("Jacobian of a known affine transform")
        logic, p, case = self._parameters()
        volume, stats = logic.computeJacobian(p)
        self.assertIs(p.jacobian_volume, volume)
        self.assertLess(jacobian_error(volume, case.determinant), 1e-4)
        self.assertAlmostEqual(stats["min"], case.determinant, places=4)
        self.assertAlmostEqual(stats["max"], case.determinant, places=4)
        self.assertEqual(stats["folding_percent"], 0.0)
        self.assertEqual(volume.GetDisplayNode().GetColorNode().GetName(), quality.JACOBIAN_COLOR_NODE_NAME)
        self.delayDisplay("Jacobian test passed")

    def test_bad_input_adds_no_node(self):
        logic, p, case = self._parameters()
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):  # no reference volume
            quality.jacobian_volume(slicer.mrmlScene, case.transform_node, None)
        with self.assertRaises(InputError):  # the reference volume under the evaluated transform
            case.reference_node.SetAndObserveTransformNodeID(case.transform_node.GetID())
            try:
                logic.computeJacobian(p)
            finally:
                case.reference_node.SetAndObserveTransformNodeID(None)
        with self.assertRaises(InputError):
            logic.saveReport(p)  # nothing computed yet
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Input check test passed")

    def test_report_and_deformation_display(self):
        import os
        import tempfile

        logic, p, case = self._parameters()
        logic.computeJacobian(p)
        display = logic.showDeformation(p)
        self.assertEqual(display.GetVisualizationMode(), display.VIS_MODE_GRID)
        with tempfile.TemporaryDirectory() as folder:
            p.report_folder = Path(folder)
            paths = logic.saveReport(p, picture=False)
            with open(paths["json"], encoding="utf-8") as stream:
                report = json.load(stream)
            self.assertAlmostEqual(report["statistics"]["jacobian"]["mean"], case.determinant, places=4)
            self.assertTrue(os.path.isfile(paths["json"]))
        self.delayDisplay("Report test passed")
