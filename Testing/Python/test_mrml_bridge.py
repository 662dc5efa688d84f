"""MRML bridge (dmmreg.slicer.mrml) on a real slicer-core scene and real, oblique MRI.

Checks the RAS/LPS conventions against Slicer's own file reader and writer, and that result
transforms applied by Slicer (hardening, storage) agree with SimpleITK's resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
sitk = pytest.importorskip("SimpleITK")

from dmmreg.slicer import mrml  # noqa: E402
from dmmreg.errors import InputError  # noqa: E402
from dmmreg.geometry import Geometry
from dmmreg.image import Image
from dmmreg.image_io import read_image, to_sitk  # noqa: E402
from dmmreg.known_warp import KnownWarpSettings, random_known_warp  # noqa: E402
from dmmreg.transform_io import read_result, to_sitk_transform  # noqa: E402

DATA = Path(__file__).parents[3] / "shared" / "data"
STROKE = DATA / "brain-multicontrast" / "stroke"


@pytest.fixture(scope="module")
def t1_path():
    path = STROKE / "T1.nii.gz"
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (the shared data folder is absent)")
    return path


@pytest.fixture(scope="module")
def t1(t1_path):
    image = read_image(t1_path)
    return image.with_array(image.array.astype(np.float32))


@pytest.fixture(scope="module")
def known_warp(t1):
    """Affine + smooth deformable transform (with inverse) on the oblique T1 grid."""
    return random_known_warp(t1.geometry, seed=3, settings=KnownWarpSettings(field_spacing_mm=5.0))


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def sitk_resample(moving: Image, geometry: Geometry, transform) -> np.ndarray:
    reference = to_sitk(Image(np.zeros(geometry.shape, np.float32), geometry))
    return sitk.GetArrayFromImage(sitk.Resample(to_sitk(moving), reference, transform, sitk.sitkLinear, 0.0))


def harden_copy(scene, image: Image, leaf_node) -> tuple[np.ndarray, Geometry]:
    """Copy of ``image`` placed under ``leaf_node`` and hardened by Slicer: voxels and geometry."""
    node = mrml.add_volume_node(scene, image, "hardened")
    node.SetAndObserveTransformNodeID(leaf_node.GetID())
    node.HardenTransform()
    return slicer.util.arrayFromVolume(node).copy(), mrml.geometry_from_volume_node(node)


def test_volume_geometry_matches_slicer_reader(scene, t1_path, t1):
    """Slicer's NIfTI reader (RAS) and SimpleITK (LPS) agree through the bridge, oblique included."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T1")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(t1_path))
    assert storage.ReadData(node)
    image = mrml.image_from_volume_node(node)
    assert image.geometry == t1.geometry
    assert not np.allclose(image.geometry.direction, np.eye(3), atol=0.05), "the test volume should be oblique"
    np.testing.assert_array_equal(image.array, t1.array)


def test_volume_node_round_trip_through_slicer_writer(scene, t1, tmp_path):
    node = mrml.add_volume_node(scene, t1, "T1 copy")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / "copy.nrrd"))
    assert storage.WriteData(node)
    again = read_image(tmp_path / "copy.nrrd")
    assert again.geometry == t1.geometry
    np.testing.assert_array_equal(again.array, t1.array)


def test_linear_parent_transform_is_part_of_the_geometry(scene, t1):
    node = mrml.add_volume_node(scene, t1, "T1")
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    to_parent = np.eye(4)
    to_parent[:3, 3] = (5.0, -3.0, 2.0)  # RAS
    shift.SetMatrixTransformToParent(mrml.vtk_matrix(to_parent))
    node.SetAndObserveTransformNodeID(shift.GetID())
    expected_origin = np.asarray(t1.geometry.origin) + (-5.0, 3.0, 2.0)  # LPS
    np.testing.assert_allclose(mrml.geometry_from_volume_node(node).origin, expected_origin, atol=1e-9)


def test_non_linear_parent_transform_is_refused(scene, t1, known_warp):
    node = mrml.add_volume_node(scene, t1, "T1")
    grid = mrml.add_grid_transform_node(scene, known_warp.displacement, known_warp.field_geometry, "grid")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear transform"):
        mrml.image_from_volume_node(node)


def test_unusable_volume_nodes_give_clear_errors(scene, t1):
    labelmap = mrml.add_volume_node(scene, t1.with_array((t1.array > 50).astype(np.uint8)), "lesion", labelmap=True)
    with pytest.raises(InputError, match="is a labelmap"):
        mrml.image_from_volume_node(labelmap, "fixed volume")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        mrml.image_from_volume_node(empty)
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    slicer.util.updateVolumeFromArray(colour, np.zeros((4, 5, 6, 3), np.uint8))
    with pytest.raises(InputError, match="3 components per voxel"):
        mrml.image_from_volume_node(colour)


def test_masks_from_labelmap_and_segmentation(scene, t1):
    volume = mrml.add_volume_node(scene, t1, "T1")
    brain = (t1.array > 20).astype(np.uint8) * 3
    labelmap = mrml.add_volume_node(scene, t1.with_array(brain), "brain", labelmap=True)
    from_labelmap = mrml.mask_from_node(labelmap, volume)
    np.testing.assert_array_equal(from_labelmap.array, brain > 0)

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    nodes_before = scene.GetNumberOfNodes()
    from_segmentation = mrml.mask_from_node(segmentation, volume)
    assert scene.GetNumberOfNodes() == nodes_before, "the temporary export node must be removed"
    assert from_segmentation.geometry == t1.geometry
    assert np.mean(from_segmentation.array == from_labelmap.array) > 0.999

    empty = mrml.add_volume_node(scene, t1.with_array(np.zeros_like(brain)), "empty mask", labelmap=True)
    with pytest.raises(InputError, match="empty"):
        mrml.mask_from_node(empty, volume)


@pytest.mark.parametrize("composed", [False, True], ids=["nested", "composed"])
def test_hardening_matches_simpleitk_on_oblique_volume(scene, t1, known_warp, composed):
    """A moving volume under the result transform, hardened by Slicer, equals SimpleITK's
    resampling with the same transform (to interpolation rounding)."""
    nodes = mrml.add_result_transform_nodes(scene, known_warp, "warp", mrml.ResultDescription("known-warp"), composed=composed)
    if composed:
        assert nodes.top is nodes.leaf and nodes.top.IsA("vtkMRMLGridTransformNode")
    else:
        assert nodes.top.IsA("vtkMRMLGridTransformNode") and nodes.leaf.IsA("vtkMRMLLinearTransformNode")
        assert nodes.leaf.GetParentTransformNode() is nodes.top
    grid = nodes.top.GetTransformFromParent()
    assert grid.IsA("vtkOrientedGridTransform") and not grid.GetInverseFlag(), "the grid must be stored FromParent"

    hardened, geometry = harden_copy(scene, t1, nodes.leaf)
    expected = sitk_resample(t1, geometry, to_sitk_transform(known_warp))
    intensity_range = float(t1.array.max() - t1.array.min())
    assert np.abs(hardened - expected).max() < 1e-4 * intensity_range
    assert np.abs(hardened - expected).mean() < 1e-5 * intensity_range


def test_inverse_nodes_undo_the_forward_transform(scene, known_warp):
    description = mrml.ResultDescription("known-warp")
    forward = mrml.add_result_transform_nodes(scene, known_warp, "warp", description)
    inverse = mrml.add_result_transform_nodes(scene, known_warp, "warp", description, inverse=True)
    composed_inverse = mrml.add_result_transform_nodes(scene, known_warp, "warp", description, composed=True, inverse=True)
    assert inverse.top.IsA("vtkMRMLLinearTransformNode") and inverse.leaf.IsA("vtkMRMLGridTransformNode")
    import vtk

    # fixed-space points (RAS) inside the fixed volume
    geometry = known_warp.fixed_geometry
    rng = np.random.default_rng(0)
    index = rng.uniform(0, 1, (500, 3)) * (np.asarray(geometry.size) - 1)
    points_ras = geometry.physical_points(index) * (-1, -1, 1)
    from_world = vtk.vtkGeneralTransform()
    forward.leaf.GetTransformFromWorld(from_world)
    moving_points = mrml.transform_points_ras(from_world, points_ras)
    # the moving-space points match the backend's own evaluation of T (LPS)
    np.testing.assert_allclose(moving_points * (-1, -1, 1), known_warp.resampling_points(points_ras * (-1, -1, 1)), atol=1e-3)
    for nodes in (inverse, composed_inverse):
        back = vtk.vtkGeneralTransform()
        nodes.leaf.GetTransformFromWorld(back)
        error = np.linalg.norm(mrml.transform_points_ras(back, moving_points) - points_ras, axis=1)
        assert error.max() < 0.2, f"{nodes.leaf.GetName()}: inverse error {error.max():.3f} mm"


def test_saved_transform_resamples_identically_in_simpleitk(scene, t1, known_warp, tmp_path):
    """Saving through vtkMRMLTransformStorageNode gives an .h5 SimpleITK applies as the backend does."""
    nodes = mrml.add_result_transform_nodes(scene, known_warp, "warp", mrml.ResultDescription("known-warp"))
    path = str(tmp_path / "warp.h5")
    mrml.save_transform_to_world(nodes.leaf, path)
    saved = sitk.ReadTransform(path)
    geometry = t1.geometry
    np.testing.assert_allclose(sitk_resample(t1, geometry, saved), sitk_resample(t1, geometry, to_sitk_transform(known_warp)), atol=1e-3)
    back = read_result(path, known_warp.fixed_geometry, known_warp.moving_geometry)
    np.testing.assert_allclose(back.affine, known_warp.affine, atol=1e-9)
    np.testing.assert_allclose(back.displacement, known_warp.displacement, atol=1e-6)

    read_node = mrml.read_transform_node(scene, path, "read back")
    hardened, hardened_geometry = harden_copy(scene, t1, read_node)
    expected = sitk_resample(t1, hardened_geometry, saved)
    assert np.abs(hardened - expected).max() < 0.01 * float(t1.array.max())


def test_result_nodes_say_what_they_are(scene, known_warp):
    description = mrml.ResultDescription("optimise", model="", settings={"quality": "fast"}, fixed="T1", moving="FLAIR")
    nodes = mrml.add_result_transform_nodes(scene, known_warp, "FLAIR to T1", description)
    assert nodes.top.GetName() == "FLAIR to T1 deformable" and nodes.leaf.GetName() == "FLAIR to T1 affine"
    attributes = {name: nodes.leaf.GetAttribute(mrml.ATTRIBUTE_PREFIX + name) for name in
                  ("Role", "Method", "Settings", "Fixed", "Moving", "Date")}
    assert attributes["Role"] == "forward affine" and attributes["Method"] == "optimise"
    assert '"quality": "fast"' in attributes["Settings"] and attributes["Fixed"] == "T1"
    assert attributes["Date"][:4].isdigit()


def test_initial_transform_matrix_is_the_resampling_direction(scene, tmp_path):
    from dmmreg.transform_io import affine_to_sitk

    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
    to_parent = np.eye(4)
    to_parent[:3, 3] = (10.0, 20.0, 30.0)  # moves the moving volume 10 mm to the right (RAS)
    node.SetMatrixTransformToParent(mrml.vtk_matrix(to_parent))
    path = str(tmp_path / "initial.tfm")
    sitk.WriteTransform(affine_to_sitk(mrml.resampling_matrix_lps(node)), path)
    # resampling direction in LPS: a fixed point p maps to the moving point p - shift
    mapped = sitk.ReadTransform(path).TransformPoint((0.0, 0.0, 0.0))
    np.testing.assert_allclose(mapped, (10.0, 20.0, -30.0), atol=1e-9)


def test_single_slice_result_in_slicer(scene, t1):
    """A 2D result in plane coordinates, embedded in an oblique slice's plane, maps points as
    the 2D result does, both nested and composed (single-slice VTK grids)."""
    import vtk

    g = t1.geometry
    one_slice = Image(t1.array[70:71], Geometry((*g.size[:2], 1), g.spacing, g.physical_points(np.array([0.0, 0.0, 70.0])), g.direction))
    plane_image, plane = mrml.split_plane(one_slice)
    assert plane_image.dim == 2
    assert mrml.image_on_plane(plane_image, plane).geometry == one_slice.geometry
    warp2d = random_known_warp(plane_image.geometry, seed=1)
    warp3d = mrml.result_on_planes(warp2d, plane, plane, one_slice.geometry, one_slice.geometry)

    points_plane = plane_image.geometry.physical_points(np.array([[10.0, 20.0], [60.0, 100.0], [120.0, 150.0]]))
    expected_plane = warp2d.resampling_points(points_plane)

    def to_ras(p):
        lps = (plane.lps_from_plane @ np.c_[p, np.zeros(len(p)), np.ones(len(p))].T).T[:, :3]
        return lps * (-1, -1, 1)

    for composed in (False, True):
        nodes = mrml.add_result_transform_nodes(scene, warp3d, "slice", mrml.ResultDescription("known-warp"), composed=composed)
        from_world = vtk.vtkGeneralTransform()
        nodes.leaf.GetTransformFromWorld(from_world)
        np.testing.assert_allclose(mrml.transform_points_ras(from_world, to_ras(points_plane)), to_ras(expected_plane), atol=1e-3)
