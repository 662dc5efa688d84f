"""Quality inspection logic (dmmreg.slicer.quality) on a real slicer-core scene and the bundled
stroke MRI (T1 resampled to 3 mm, oblique grid, so the tests stay fast).

Every measure is checked against a number known independently: the determinant of a known
affine, the analytic Jacobian of a folding field, the backend's own Jacobian and resampling of a
known warp (nested nodes, an ITK .h5 composite read back, a B-spline), exact inverse pairs,
landmarks moved by a known affine or offset.  Also: bad input gives ``InputError`` naming the
problem, reports never overwrite each other, and no input node is modified.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from conftest import affine_about_centre, physical_coordinates  # noqa: E402

from dmmreg import metrics, spatial
from dmmreg.slicer import mrml  # noqa: E402
from dmmreg.slicer import quality  # noqa: E402
from dmmreg.errors import InputError  # noqa: E402
from dmmreg.geometry import Geometry
from dmmreg.image import Image  # noqa: E402
from dmmreg.known_warp import KnownWarpSettings, random_known_warp  # noqa: E402
from dmmreg.result import RegistrationResult  # noqa: E402

SPACING_MM = 3.0
#: Scales and rotation of the known affine (det = product of the scales).
SCALES = (1.1, 0.9, 1.05)
ANGLES = (0.15, -0.1, 0.2)


@pytest.fixture(scope="module")
def t1(stroke) -> Image:
    """The stroke T1 on its own oblique grid at 3 mm."""
    geometry = stroke["T1"].geometry.with_spacing(SPACING_MM)
    return RegistrationResult(geometry, stroke["T1"].geometry, np.eye(4)).warp(stroke["T1"])


@pytest.fixture(scope="module")
def tissue(t1) -> Image:
    """Three tissue classes (1: dark, 2: middle, 3: bright) of the brain voxels of the T1."""
    array = t1.array
    brain = array > 20
    low, high = np.percentile(array[brain], [35, 70])
    labels = np.zeros(array.shape, np.int16)
    labels[brain] = 1 + (array[brain] > low).astype(np.int16) + (array[brain] > high).astype(np.int16)
    return Image(labels, t1.geometry)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def reference(scene, t1):
    return mrml.add_volume_node(scene, t1, "T1")


def known_affine(geometry: Geometry, shift=(3.0, -2.0, 1.5)) -> np.ndarray:
    return affine_about_centre(geometry, shift, ANGLES, SCALES)


def volume_array(node) -> np.ndarray:
    return slicer.util.arrayFromVolume(node).copy()


def add_points(scene, points_ras: np.ndarray, name: str):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for i, point in enumerate(points_ras):
        node.AddControlPoint(vtk.vtkVector3d(*point), f"{name}-{i + 1}")
    return node


def brain_points_ras(tissue: Image, count: int, seed: int = 0) -> np.ndarray:
    """``count`` voxel centres of the brain (RAS, mm)."""
    index = np.argwhere(tissue.array > 0)[np.random.default_rng(seed).choice(np.count_nonzero(tissue.array), count)]
    return tissue.geometry.physical_points(index[:, ::-1].astype(np.float64)) * np.array([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------------
# 1. Jacobian


def test_jacobian_of_a_known_affine_is_its_determinant_with_a_colour_map_centred_on_1(scene, reference, t1):
    affine = known_affine(t1.geometry)
    expected = float(np.prod(SCALES))
    assert np.linalg.det(affine[:3, :3]) == pytest.approx(expected, abs=1e-12)
    node = mrml.add_linear_transform_node(scene, affine, "known affine")

    volume, stats = quality.jacobian_volume(scene, node, reference)

    assert mrml.geometry_from_volume_node(volume) == t1.geometry
    np.testing.assert_allclose(volume_array(volume), expected, atol=1e-4)
    assert stats["folding_percent"] == 0.0
    assert stats["min"] == pytest.approx(expected, abs=1e-4) and stats["max"] == pytest.approx(expected, abs=1e-4)
    assert stats["sdlogj"] < 1e-4
    assert stats["voxels"] == t1.array.size
    assert volume.GetAttribute("DeepMultiModalReg.Role") == "Jacobian determinant"
    assert volume.GetAttribute("DeepMultiModalReg.Transform") == "known affine"
    assert json.loads(volume.GetAttribute("DeepMultiModalReg.Statistics"))["folding_percent"] == 0.0

    # colour map: window 0..2 with its level (centre) at 1, white at 1, log-symmetric blue/red
    display = volume.GetDisplayNode()
    colours = display.GetColorNode()
    assert colours is not None and colours.GetName() == quality.JACOBIAN_COLOR_NODE_NAME
    assert not display.GetAutoWindowLevel()
    assert display.GetLevel() == pytest.approx(1.0) and display.GetWindow() == pytest.approx(2.0)
    legends = [volume.GetNthDisplayNode(i) for i in range(volume.GetNumberOfDisplayNodes())
               if volume.GetNthDisplayNode(i).IsA("vtkMRMLColorLegendDisplayNode")]
    assert len(legends) == 1 and legends[0].GetTitleText() == "Jacobian determinant"
    assert legends[0].GetPrimaryDisplayNode() is display and legends[0].GetVisibility()
    count = colours.GetNumberOfColors()

    def colour_at(j):  # the table entry a value falls in, over the display window
        rgba = [0.0] * 4
        colours.GetColor(min(int((j - (display.GetLevel() - display.GetWindow() / 2)) / display.GetWindow() * count), count - 1), rgba)
        return np.array(rgba[:3])

    np.testing.assert_allclose(colour_at(1.0), [1, 1, 1])
    np.testing.assert_allclose(colour_at(0.5), [0.0, 0.25, 1.0], atol=0.01)  # saturated blue
    np.testing.assert_allclose(colour_at(2.0), [1.0, 0.1, 0.0], atol=0.01)  # saturated red (and above 2)
    for j in (0.6, 0.75, 0.9):  # as blue at J as red at 1/J
        assert 1 - colour_at(j)[0] == pytest.approx(1 - colour_at(1 / j)[2], abs=0.03)
    np.testing.assert_allclose(colour_at(0.0), [0, 0, 0])  # folding: black

    # a second Jacobian volume reuses the colour node
    again, _ = quality.jacobian_volume(scene, node, reference)
    assert again.GetDisplayNode().GetColorNodeID() == display.GetColorNodeID()
    assert again.GetName() != volume.GetName()


def folding_field(geometry: Geometry, centre_lps: np.ndarray, sigma_mm: float = 8.0, strength: float = 2.0) -> np.ndarray:
    """``u_x = -strength (x - c_x) g(p)``, ``g`` a Gaussian about ``c``: ``J(c) = 1 - strength``."""
    points = physical_coordinates(geometry)
    offset = points - centre_lps
    gauss = np.exp(-np.sum(offset**2, axis=-1) / (2 * sigma_mm**2))
    field = np.zeros(points.shape)
    field[..., 0] = -strength * offset[..., 0] * gauss
    return field


def backend_jacobian(field: np.ndarray, geometry: Geometry) -> np.ndarray:
    tensor = spatial.to_channels_first(torch.from_numpy(field)[None])
    return spatial.jacobian_determinant(tensor, geometry)[0].numpy()


def test_jacobian_of_a_folding_grid_transform_shows_the_fold(scene, reference, t1, tissue):
    geometry = t1.geometry
    centre = geometry.physical_points(np.round((np.asarray(geometry.size) - 1) / 2))  # a voxel centre
    field_geometry = geometry.with_margin(6.0)
    node = mrml.add_grid_transform_node(scene, folding_field(field_geometry, centre), field_geometry, "fold")

    volume, stats = quality.jacobian_volume(scene, node, reference)

    det = volume_array(volume)
    expected = backend_jacobian(folding_field(geometry, centre), geometry)
    np.testing.assert_allclose(det, expected, atol=2e-4)
    centre_index = tuple(np.round((np.asarray(geometry.size) - 1) / 2).astype(int)[::-1])
    assert det[centre_index] < 0 and det[centre_index] == pytest.approx(-1.0, abs=0.15)
    assert stats["folding_percent"] > 0
    assert stats["folding_percent"] == pytest.approx(100 * np.mean(expected <= 0), abs=1e-9)
    assert stats["min"] < 0 < stats["max"]

    # inside a labelmap mask, and the same mask as a segmentation
    brain = tissue.with_array((tissue.array > 0).astype(np.uint8))
    mask_node = mrml.add_volume_node(scene, brain, "brain", labelmap=True)
    _, masked = quality.jacobian_volume(scene, node, reference, mask_node)
    expected_stats = metrics.jacobian_statistics(Image(expected, geometry), brain.array)
    for key in ("folding_percent", "min", "max", "mean", "sdlogj"):
        assert masked[key] == pytest.approx(expected_stats[key], abs=2e-4), key
    assert masked["voxels"] == np.count_nonzero(brain.array)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(mask_node, segmentation)
    _, from_segmentation = quality.jacobian_volume(scene, node, reference, segmentation)
    for key in ("folding_percent", "min", "max", "voxels"):
        assert from_segmentation[key] == pytest.approx(masked[key], abs=2e-4), key


def test_jacobian_of_nested_composite_and_bspline_nodes(scene, reference, t1, tmp_path):
    geometry = t1.geometry
    truth = random_known_warp(geometry, seed=1, settings=KnownWarpSettings(field_spacing_mm=6.0, margin_mm=10.0))
    expected = truth.jacobian_determinant(geometry).array
    assert expected.std() > 0.02, "the known warp should be deformable"
    nested = mrml.add_result_transform_nodes(scene, truth, "known warp", mrml.ResultDescription("known warp"))
    assert nested.top is not nested.leaf
    volume, stats = quality.jacobian_volume(scene, nested.leaf, reference)
    np.testing.assert_allclose(volume_array(volume), expected, atol=1e-3)
    assert stats["folding_percent"] == 0.0

    # the same transform written by Slicer as an ITK composite (.h5) and read back: one node
    path = tmp_path / "known.h5"
    mrml.save_transform_to_world(nested.leaf, str(path))
    composite = mrml.read_transform_node(scene, str(path), "composite")
    volume, _ = quality.jacobian_volume(scene, composite, reference)
    np.testing.assert_allclose(volume_array(volume), expected, atol=1e-3)

    # a B-spline whose coefficients sample a linear displacement (reproduced exactly by cubic
    # B-splines away from the border): u_R = s (R - R0), so J = 1 + s
    s = -0.2
    volume, _ = quality.jacobian_volume(scene, linear_bspline_node(scene, geometry, s), reference)
    np.testing.assert_allclose(volume_array(volume), 1 + s, atol=1e-4)


def linear_bspline_node(scene, geometry: Geometry, slope: float):
    """B-spline transform node (FromParent) with ``u_R(p) = slope (R - R0)`` over a control grid
    (10 mm, axis-aligned in RAS) covering ``geometry`` with three control points to spare."""
    from vtk.util import numpy_support
    import vtk

    corners_ras = geometry.corners * np.array([-1.0, -1.0, 1.0])
    spacing = 10.0
    origin = corners_ras.min(axis=0) - 3 * spacing
    size = np.ceil((corners_ras.max(axis=0) + 3 * spacing - origin) / spacing).astype(int) + 1
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")[::-1], axis=-1)
    positions = origin + index * spacing  # (k, j, i, 3) RAS
    coefficients = np.zeros(positions.shape)
    coefficients[..., 0] = slope * (positions[..., 0] - origin[0])
    grid = vtk.vtkImageData()
    grid.SetDimensions(*size)
    grid.SetSpacing(spacing, spacing, spacing)
    grid.SetOrigin(*origin)
    grid.GetPointData().SetScalars(numpy_support.numpy_to_vtk(coefficients.reshape(-1, 3), deep=True))
    bspline = slicer.vtkOrientedBSplineTransform()
    bspline.SetCoefficientData(grid)
    bspline.SetBorderModeToZero()
    node = scene.AddNewNodeByClass("vtkMRMLBSplineTransformNode", "linear B-spline")
    node.SetAndObserveTransformFromParent(bspline)
    return node


def test_jacobian_on_a_single_slice_and_bad_inputs(scene, reference, t1):
    geometry = t1.geometry
    affine = known_affine(geometry)
    node = mrml.add_linear_transform_node(scene, affine, "known affine")
    middle = geometry.size[2] // 2
    slice_geometry = Geometry((*geometry.size[:2], 1), geometry.spacing,
                              tuple(geometry.physical_points(np.array([0.0, 0.0, middle]))), geometry.direction)
    single = mrml.add_volume_node(scene, Image(t1.array[middle:middle + 1], slice_geometry), "T1 slice")
    volume, stats = quality.jacobian_volume(scene, node, single)
    assert volume_array(volume).shape == (1, *geometry.shape[1:])
    np.testing.assert_allclose(volume_array(volume), np.prod(SCALES), atol=1e-4)
    assert stats["folding_percent"] == 0.0

    with pytest.raises(InputError, match="no transform selected"):
        quality.jacobian_volume(scene, None, reference)
    with pytest.raises(InputError, match="no reference volume selected"):
        quality.jacobian_volume(scene, node, None)
    slice_mask = mrml.add_volume_node(scene, Image(np.ones((1, *geometry.shape[1:]), np.uint8), slice_geometry),
                                      "slice mask", labelmap=True)
    with pytest.raises(InputError, match=r"2D \(a single slice\) but 'T1' is 3D"):
        quality.jacobian_volume(scene, node, reference, slice_mask)
    coarse = geometry.with_spacing(6.0)
    other_grid = mrml.add_volume_node(scene, Image(np.ones(coarse.shape, np.uint8), coarse), "coarse mask", labelmap=True)
    with pytest.raises(InputError, match="not on the grid of 'T1'.*resample it"):
        quality.jacobian_volume(scene, node, reference, other_grid)
    reference.SetAndObserveTransformNodeID(node.GetID())
    with pytest.raises(InputError, match="is under the transform 'known affine'"):
        quality.jacobian_volume(scene, node, reference)
    reference.SetAndObserveTransformNodeID(None)


# --------------------------------------------------------------------------------------------
# 2. Label overlap


def test_label_overlap_identity_shift_and_direction(scene, tissue):
    geometry = tissue.geometry
    fixed = mrml.add_volume_node(scene, tissue, "tissue", labelmap=True)
    moving = mrml.add_volume_node(scene, tissue, "tissue copy", labelmap=True)
    identity = mrml.add_linear_transform_node(scene, np.eye(4), "identity")

    table, chart = quality.label_overlap(scene, fixed, moving, identity)

    columns = mrml.table_columns(table)
    assert table.GetNumberOfRows() == 3
    assert columns["Label"] == [1, 2, 3]
    assert columns["Dice"] == [1.0, 1.0, 1.0]
    assert columns["HD95 (mm)"] == [0.0, 0.0, 0.0]
    assert columns["Fixed voxels"] == [int(np.count_nonzero(tissue.array == v)) for v in (1, 2, 3)]
    assert columns["Warped voxels"] == columns["Fixed voxels"]
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNodeID() == table.GetID() and series.GetYColumnName() == "Dice"
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar

    # a 4 mm shift: Dice drops, as the backend's own resampling of the same transform gives
    shift = np.eye(4)
    shift[:3, 3] = (4.0, 0.0, 0.0)
    shifted = mrml.add_linear_transform_node(scene, shift, "shift 4 mm")
    table, _ = quality.label_overlap(scene, fixed, moving, shifted)
    columns = mrml.table_columns(table)
    assert max(columns["Dice"]) < 0.95 and min(columns["HD95 (mm)"]) > 0
    warped = RegistrationResult(geometry, geometry, shift).warp(tissue, mode="nearest").array
    expected = metrics.dice_per_label(tissue.array, warped, labels=[1, 2, 3])
    np.testing.assert_allclose(columns["Dice"], [expected[v] for v in (1, 2, 3)], atol=1e-3)

    # direction: moving labels on a grid moved by exactly 2 voxels, T(p) = p + t, gives Dice 1;
    # the opposite direction would not
    t = 2 * geometry.spacing[0] * geometry.direction[:, 0]
    moved = Geometry(geometry.size, geometry.spacing, tuple(np.asarray(geometry.origin) + t), geometry.direction)
    moved_node = mrml.add_volume_node(scene, Image(tissue.array, moved), "tissue moved", labelmap=True)
    translation = np.eye(4)
    translation[:3, 3] = t
    forward = mrml.add_linear_transform_node(scene, translation, "translation")
    table, _ = quality.label_overlap(scene, fixed, moved_node, forward)
    np.testing.assert_allclose(mrml.table_columns(table)["Dice"], 1.0)
    backward = mrml.add_linear_transform_node(scene, np.linalg.inv(translation), "backward")
    table, _ = quality.label_overlap(scene, fixed, moved_node, backward)
    assert max(mrml.table_columns(table)["Dice"]) < 0.95

    # the moving labels placed under the transform (to view them on the fixed ones): same answer
    moved_node.SetAndObserveTransformNodeID(forward.GetID())
    table, _ = quality.label_overlap(scene, fixed, moved_node, forward)
    np.testing.assert_allclose(mrml.table_columns(table)["Dice"], 1.0)
    moved_node.SetAndObserveTransformNodeID(None)


def test_label_overlap_with_segmentations(scene, tissue):
    fixed = mrml.add_volume_node(scene, tissue, "tissue", labelmap=True)
    identity = mrml.add_linear_transform_node(scene, np.eye(4), "identity")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tissue segments")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(fixed, segmentation)

    # moving segmentation against a fixed labelmap: segments keep their label values
    table, _ = quality.label_overlap(scene, fixed, segmentation, identity)
    columns = mrml.table_columns(table)
    assert columns["Label"] == [1, 2, 3]
    np.testing.assert_allclose(columns["Dice"], 1.0)
    np.testing.assert_allclose(columns["HD95 (mm)"], 0.0)

    # two segmentations with the same segment names but other label values and segment order:
    # matched by name
    permutation = np.array([0, 3, 1, 2])  # tissue class -> moving value
    permuted = mrml.add_volume_node(scene, tissue.with_array(permutation[tissue.array].astype(np.int16)),
                                    "permuted", labelmap=True)
    moving = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "permuted segments")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(permuted, moving)
    names = {segmentation.GetSegmentation().GetNthSegment(i).GetLabelValue(): segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(3)}
    for i in range(3):
        segment = moving.GetSegmentation().GetNthSegment(i)
        segment.SetName(names[int(np.flatnonzero(permutation == segment.GetLabelValue())[0])])
    with pytest.raises(InputError, match="segmentation without a reference geometry; select a reference volume"):
        quality.label_overlap(scene, segmentation, moving, identity)
    table, _ = quality.label_overlap(scene, segmentation, moving, identity, reference_volume_node=fixed)
    columns = mrml.table_columns(table)
    assert columns["Label"] == [1, 2, 3] and columns["Name"] == [names[v] for v in (1, 2, 3)]
    np.testing.assert_allclose(columns["Dice"], 1.0)
    # by value instead, the permuted labels would not overlap
    table, _ = quality.label_overlap(scene, fixed, permuted, identity)
    assert max(mrml.table_columns(table)["Dice"]) < 0.5


def test_label_overlap_bad_inputs(scene, tissue):
    geometry = tissue.geometry
    fixed = mrml.add_volume_node(scene, tissue, "tissue", labelmap=True)
    identity = mrml.add_linear_transform_node(scene, np.eye(4), "identity")
    others = mrml.add_volume_node(scene, tissue.with_array(np.where(tissue.array > 0, tissue.array + 10, 0)),
                                  "other labels", labelmap=True)
    with pytest.raises(InputError, match=r"values 1, 2, 3\).*values 11, 12, 13\).*no label in common"):
        quality.label_overlap(scene, fixed, others, identity)
    slice_geometry = Geometry((*geometry.size[:2], 1), geometry.spacing, geometry.origin, geometry.direction)
    single = mrml.add_volume_node(scene, Image(tissue.array[:1] + 1, slice_geometry), "slice labels", labelmap=True)
    with pytest.raises(InputError, match=r"are 2D \(a single slice\) but the moving labels 'tissue' are 3D"):
        quality.label_overlap(scene, single, fixed, identity)
    intensity = mrml.add_volume_node(scene, tissue.with_array(tissue.array.astype(np.float32)), "intensities")
    with pytest.raises(InputError, match="vtkMRMLScalarVolumeNode; choose a labelmap"):
        quality.label_overlap(scene, fixed, intensity, identity)
    with pytest.raises(InputError, match="no fixed labels selected"):
        quality.label_overlap(scene, None, fixed, identity)


# --------------------------------------------------------------------------------------------
# 3. Inverse consistency


def test_inverse_consistency_of_exact_and_wrong_inverses(scene, reference, t1, tissue):
    affine = known_affine(t1.geometry)
    forward = mrml.add_linear_transform_node(scene, affine, "forward")
    exact = mrml.add_linear_transform_node(scene, np.linalg.inv(affine), "exact inverse")
    volume, stats = quality.inverse_consistency(scene, forward, exact, reference)
    assert mrml.geometry_from_volume_node(volume) == t1.geometry
    assert stats["max_mm"] < 1e-3 and stats["voxels"] == t1.array.size

    # W = S A^-1 with S a shift s: W(T(p)) = p + s, so the error is |s| everywhere (the other
    # order, T(W(p)) = p + A s, would give |A s|)
    s = np.array([2.0, -1.0, 0.5])
    wrong_matrix = np.eye(4)
    wrong_matrix[:3, 3] = s
    wrong = mrml.add_linear_transform_node(scene, wrong_matrix @ np.linalg.inv(affine), "wrong inverse")
    assert abs(np.linalg.norm(affine[:3, :3] @ s) - np.linalg.norm(s)) > 0.05
    volume, stats = quality.inverse_consistency(scene, forward, wrong, reference)
    np.testing.assert_allclose(volume_array(volume), np.linalg.norm(s), atol=1e-3)
    for key in ("mean_mm", "p95_mm", "max_mm"):
        assert stats[key] == pytest.approx(np.linalg.norm(s), abs=1e-3)

    # a deformable forward transform with its own inverse field: small but not zero
    truth = random_known_warp(t1.geometry, seed=2, settings=KnownWarpSettings(field_spacing_mm=6.0, margin_mm=10.0))
    nodes = mrml.add_result_transform_nodes(scene, truth, "warp", mrml.ResultDescription("known warp"))
    inverse = mrml.add_result_transform_nodes(scene, truth, "warp", mrml.ResultDescription("known warp"), inverse=True)
    brain = mrml.add_volume_node(scene, tissue.with_array((tissue.array > 0).astype(np.uint8)), "brain", labelmap=True)
    volume, stats = quality.inverse_consistency(scene, nodes.leaf, inverse.leaf, reference, brain)
    error = volume_array(volume)
    assert np.isnan(error[tissue.array == 0]).all() and stats["voxels"] == np.count_nonzero(tissue.array)
    expected = metrics.inverse_consistency_error(truth, mask=tissue.array > 0).array
    np.testing.assert_allclose(error[tissue.array > 0], expected[tissue.array > 0], atol=5e-3)
    assert 0 < stats["mean_mm"] < 0.5

    with pytest.raises(InputError, match="same node"):
        quality.inverse_consistency(scene, forward, forward, reference)


# --------------------------------------------------------------------------------------------
# 4. Landmarks


def test_landmark_error_of_known_affine_and_offset(scene, t1, tissue):
    affine = known_affine(t1.geometry)
    node = mrml.add_linear_transform_node(scene, affine, "known affine")
    fixed_ras = brain_points_ras(tissue, 6)
    moving_ras = fixed_ras @ mrml.ras_matrix_from_lps(affine)[:3, :3].T + mrml.ras_matrix_from_lps(affine)[:3, 3]
    fixed = add_points(scene, fixed_ras, "F")
    moving = add_points(scene, moving_ras, "M")

    table, stats = quality.landmark_error(scene, fixed, moving, node)
    assert stats["count"] == 6 and stats["max_mm"] < 1e-3
    columns = mrml.table_columns(table)
    assert columns["Index"] == [1, 2, 3, 4, 5, 6] and columns["Fixed label"][0] == "F-1"
    # the LPS matrix applied to RAS points misses by millimetres: the test tells the conventions apart
    as_if_lps = fixed_ras @ affine[:3, :3].T + affine[:3, 3]
    assert np.linalg.norm(as_if_lps - moving_ras, axis=1).min() > 1.0

    offset = np.array([1.0, 2.0, -2.0])
    shifted = add_points(scene, moving_ras + offset, "M shifted")
    table, stats = quality.landmark_error(scene, fixed, shifted, node)
    np.testing.assert_allclose(mrml.table_columns(table)["Error (mm)"], 3.0, atol=1e-3)
    assert stats["mean_mm"] == pytest.approx(3.0, abs=1e-3) and stats["max_mm"] == pytest.approx(3.0, abs=1e-3)

    # moving points placed under the transform are read in its (moving) space: still exact
    moving.SetAndObserveTransformNodeID(node.GetID())
    _, stats = quality.landmark_error(scene, fixed, moving, node)
    assert stats["max_mm"] < 1e-3

    fewer = add_points(scene, moving_ras[:5], "five")
    with pytest.raises(InputError, match=r"'F' have 6 points but the moving landmarks 'five' have 5"):
        quality.landmark_error(scene, fixed, fewer, node)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty")
    with pytest.raises(InputError, match="has no point"):
        quality.landmark_error(scene, fixed, empty, node)


# --------------------------------------------------------------------------------------------
# 5. Deformation display


def test_show_deformation_grid_sets_the_display_node(scene, reference, t1):
    field_geometry = t1.geometry.with_margin(6.0)
    node = mrml.add_grid_transform_node(scene, folding_field(field_geometry, np.asarray(t1.geometry.centre)),
                                        field_geometry, "fold")
    assert node.GetDisplayNode() is None
    grid_before = slicer.util.arrayFromGridTransform(node).copy()
    for mode, constant in (("grid", "VIS_MODE_GRID"), ("glyph", "VIS_MODE_GLYPH"), ("contour", "VIS_MODE_CONTOUR")):
        display = quality.show_deformation_grid(node, mode, reference)
        assert display is node.GetDisplayNode()
        assert display.GetVisualizationMode() == getattr(display, constant)
        assert display.GetVisibility2D() and display.GetVisibility()
        assert display.GetRegionNode() is reference
    assert scene.GetNumberOfNodesByClass("vtkMRMLTransformDisplayNode") == 1
    np.testing.assert_array_equal(slicer.util.arrayFromGridTransform(node), grid_before)
    with pytest.raises(InputError, match="must be one of grid, glyph, contour"):
        quality.show_deformation_grid(node, "arrows")


# --------------------------------------------------------------------------------------------
# 6. Report


def test_report_is_written_and_never_overwritten(scene, reference, t1, tissue, tmp_path):
    affine = known_affine(t1.geometry)
    node = mrml.add_linear_transform_node(scene, affine, "known affine")
    jacobian, jacobian_stats = quality.jacobian_volume(scene, node, reference)
    fixed = mrml.add_volume_node(scene, tissue, "tissue", labelmap=True)
    moving = mrml.add_volume_node(scene, tissue.with_array(np.where(tissue.array == 3, 0, tissue.array)), "two labels", labelmap=True)
    overlap, _ = quality.label_overlap(scene, fixed, moving, mrml.add_linear_transform_node(scene, np.eye(4), "identity"))
    assert mrml.table_columns(overlap)["HD95 (mm)"][2] == float("inf")  # label 3 missing in the moving map
    stats = {"jacobian": jacobian_stats, "overlap": json.loads(overlap.GetAttribute("DeepMultiModalReg.Statistics"))}

    first = quality.write_report(scene, tmp_path, {"overlap": overlap}, stats, jacobian_volume_node=jacobian)
    assert set(first) == {"json", "overlap", "picture"}
    assert all(os.path.isfile(path) for path in first.values())
    with open(first["overlap"], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["Label"]) for row in rows] == [1, 2, 3]
    assert float(rows[0]["Dice"]) == mrml.table_columns(overlap)["Dice"][0]
    assert rows[2]["HD95 (mm)"] == "inf"
    document = json.loads(open(first["json"]).read())
    assert document["statistics"]["jacobian"]["folding_percent"] == 0.0
    assert document["tables"] == {"overlap": os.path.basename(first["overlap"])}
    assert open(first["picture"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    saved = {key: open(path, "rb").read() for key, path in first.items()}

    # a second report: new names, the first untouched; a given picture is copied
    second = quality.write_report(scene, tmp_path, [overlap], {"nan": float("nan")}, picture_png=first["picture"])
    assert not set(second.values()) & set(first.values())
    assert all(open(path, "rb").read() == saved[key] for key, path in first.items())
    assert os.path.basename(second["json"]) == "quality-report-2.json"
    assert open(second["picture"], "rb").read() == saved["picture"]
    assert json.loads(open(second["json"]).read())["statistics"] == {"nan": None}
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".partial")]

    with pytest.raises(InputError, match="scene has not been saved"):
        quality.write_report(scene, None, [overlap], {})
    with pytest.raises(InputError, match="does not exist"):
        quality.write_report(scene, tmp_path, [overlap], {}, picture_png=str(tmp_path / "missing.png"))


# --------------------------------------------------------------------------------------------
# Inputs are never modified


def snapshot(nodes) -> list:
    """Voxels, geometry, matrices, grids and points of ``nodes`` (what the logic must not change)."""
    import vtk

    state = []
    for node in nodes:
        if node.IsA("vtkMRMLVolumeNode"):
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            state += [volume_array(node), mrml.numpy_matrix(matrix)]
        elif node.IsA("vtkMRMLGridTransformNode"):
            state.append(slicer.util.arrayFromGridTransform(node).copy())
        elif node.IsA("vtkMRMLTransformNode"):
            matrix = vtk.vtkMatrix4x4()
            node.GetMatrixTransformFromParent(matrix)
            state.append(mrml.numpy_matrix(matrix))
        elif node.IsA("vtkMRMLMarkupsNode"):
            state.append(slicer.util.arrayFromMarkupsControlPoints(node).copy())
        state.append(node.GetParentTransformNode().GetID() if node.GetParentTransformNode() else None)
        if not node.IsA("vtkMRMLTransformNode"):  # a transform's display node may be set up
            state.append(node.GetMTime())
    return state


def test_inputs_are_never_modified(scene, reference, t1, tissue, tmp_path):
    affine = known_affine(t1.geometry)
    linear = mrml.add_linear_transform_node(scene, affine, "known affine")
    inverse = mrml.add_linear_transform_node(scene, np.linalg.inv(affine), "inverse")
    field_geometry = t1.geometry.with_margin(6.0)
    grid = mrml.add_grid_transform_node(scene, folding_field(field_geometry, np.asarray(t1.geometry.centre)),
                                        field_geometry, "fold")
    grid.SetAndObserveTransformNodeID(linear.GetID())  # a nested chain
    labels = mrml.add_volume_node(scene, tissue, "tissue", labelmap=True)
    moving_labels = mrml.add_volume_node(scene, tissue, "tissue copy", labelmap=True)
    moving_labels.SetAndObserveTransformNodeID(grid.GetID())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segments")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    fixed_points = add_points(scene, brain_points_ras(tissue, 4), "F")
    moving_points = add_points(scene, brain_points_ras(tissue, 4, seed=1), "M")
    moving_points.SetAndObserveTransformNodeID(grid.GetID())
    inputs = [reference, linear, inverse, grid, labels, moving_labels, fixed_points, moving_points]
    before = snapshot(inputs)
    segments_before = segmentation.GetMTime()
    nodes_before = scene.GetNumberOfNodes()

    jacobian, stats = quality.jacobian_volume(scene, grid, reference, segmentation)
    table, _ = quality.label_overlap(scene, labels, moving_labels, grid)
    quality.label_overlap(scene, labels, segmentation, linear)
    quality.inverse_consistency(scene, linear, inverse, reference, labels)
    landmarks, _ = quality.landmark_error(scene, fixed_points, moving_points, grid)
    quality.show_deformation_grid(grid, "glyph", reference)
    quality.write_report(scene, tmp_path, [table, landmarks], stats, jacobian_volume_node=jacobian)

    after = snapshot(inputs)
    assert len(after) == len(before)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert segmentation.GetMTime() == segments_before
    # no temporary node is left behind (only results, the colour table and display nodes added)
    names = [scene.GetNthNode(i).GetName() for i in range(nodes_before, scene.GetNumberOfNodes())]
    assert not [name for name in names if name.startswith("__dmmreg")]
