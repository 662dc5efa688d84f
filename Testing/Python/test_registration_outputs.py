"""The Registration module's outputs on a real slicer-core scene (dmmreg.slicer.registration_outputs),
from a known result, without the background process:

* output selectors: a chosen transform or volume node is overwritten and no other node changes;
  with none chosen, new nodes are added;
* the moving volume is left under the result transform (default) or hardened into the output
  volume; its voxels never change;
* output choices that would change an input are refused before anything changes;
* a second run registers the moving volume itself, not the first run's answer it sits under.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from dmmreg.errors import InputError  # noqa: E402
from dmmreg.geometry import Geometry  # noqa: E402
from dmmreg.image import Image  # noqa: E402
from dmmreg.known_warp import KnownWarpSettings, random_known_warp  # noqa: E402
from dmmreg.result import RegistrationResult  # noqa: E402
from dmmreg.slicer import mrml  # noqa: E402
from dmmreg.slicer.registration_inputs import (FIXED_ROLE, MOVING_ROLE, RegistrationParameters,  # noqa: E402
    check_parameters)
from dmmreg.slicer.registration_outputs import add_output_nodes  # noqa: E402

#: An oblique 3D grid (LPS, mm) for the fixed and moving volumes.
GEOMETRY = Geometry((24, 20, 16), (2.0, 2.0, 2.5), (-20.0, 10.0, 5.0),
                    np.array([[np.cos(0.2), -np.sin(0.2), 0.0], [np.sin(0.2), np.cos(0.2), 0.0], [0.0, 0.0, 1.0]]))
#: RAS points inside the fixed volume where transforms are compared.
POINTS = GEOMETRY.physical_points(np.array([[3.0, 4.0, 5.0], [12.5, 9.0, 7.5], [20.0, 15.0, 12.0]])) * (-1, -1, 1)


def smooth_image(seed: int) -> Image:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(0, np.pi, n) for n in GEOMETRY.shape], indexing="ij")
    array = 100 + 40 * np.sin(x + rng.uniform()) * np.cos(y) + 20 * np.sin(2 * z) + rng.normal(0, 1, x.shape)
    return Image(array.astype(np.float32), GEOMETRY)


@pytest.fixture(scope="module")
def deformable_result() -> RegistrationResult:
    """Affine + smooth displacement field (fixed to moving), as the backend returns one."""
    return random_known_warp(GEOMETRY, seed=4, settings=KnownWarpSettings(field_spacing_mm=8.0))


@pytest.fixture(scope="module")
def affine_result(deformable_result) -> RegistrationResult:
    r = deformable_result
    return RegistrationResult(r.fixed_geometry, r.moving_geometry, r.affine)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def volumes(scene):
    """Fixed and moving volumes, and more nodes of the output classes that must stay untouched."""
    nodes = {"fixed": mrml.add_volume_node(scene, smooth_image(1), "fixed"),
             "moving": mrml.add_volume_node(scene, smooth_image(2), "moving")}
    for name in ("other transform", "chosen transform"):
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLTransformNode", name)
    nodes["other linear"] = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "other linear")
    for index, name in enumerate(("other volume", "chosen volume")):
        nodes[name] = mrml.add_volume_node(scene, smooth_image(10 + index), name)
    return nodes


def snapshot(scene, leave_out=()) -> dict:
    """Modification time of every node but ``leave_out``: equal snapshots = those nodes unchanged."""
    nodes = (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
    return {node.GetID(): node.GetMTime() for node in nodes if node not in leave_out}


def mapped_points(node) -> np.ndarray:
    """RAS points of :data:`POINTS` mapped from world to ``node`` (the resampling direction)."""
    transform = vtk.vtkGeneralTransform()
    node.GetTransformFromWorld(transform)
    return np.array([transform.TransformPoint(*point) for point in POINTS])


def expected_points(result, composed: bool) -> np.ndarray:
    """The same points mapped by new result nodes in a scene of their own."""
    scene = slicer.vtkMRMLScene()  # kept while the nodes are used: a nested node finds its parent in it
    nodes = mrml.add_result_transform_nodes(scene, result, "reference", mrml.ResultDescription("known-warp"), composed)
    return mapped_points(nodes.leaf)


def warped_image() -> Image:
    """A stand-in for the backend's hardened moving volume (on the fixed grid)."""
    return smooth_image(3)


@pytest.mark.parametrize("composed", [False, True], ids=["exact", "composed"])
def test_chosen_output_nodes_alone_are_overwritten(scene, volumes, deformable_result, composed):
    chosen_transform, chosen_volume = volumes["chosen transform"], volumes["chosen volume"]
    moving_voxels = slicer.util.arrayFromVolume(volumes["moving"]).copy()
    chosen = (chosen_transform, chosen_volume, chosen_volume.GetDisplayNode())  # its display follows its image
    before, count = snapshot(scene, leave_out=chosen), scene.GetNumberOfNodes()
    parameters = RegistrationParameters(fixed_volume=volumes["fixed"], moving_volume=volumes["moving"],
                                        output_transform_node=chosen_transform, composed_transform=composed,
                                        harden_moving_volume=True, output_volume_node=chosen_volume)
    check_parameters(parameters)
    outputs = add_output_nodes(scene, parameters, deformable_result, warped_image())

    assert scene.GetNumberOfNodes() == count, "no node is added when both outputs are chosen"
    assert snapshot(scene, leave_out=chosen) == before, "only the chosen nodes change"
    assert outputs.nodes == [chosen_transform, chosen_volume]
    assert outputs.transform.top is outputs.transform.leaf is chosen_transform
    assert chosen_transform.GetName() == "chosen transform"
    np.testing.assert_allclose(mapped_points(chosen_transform), expected_points(deformable_result, composed), atol=1e-6)
    assert chosen_transform.GetTransformFromParent().IsA("vtkGridTransform") == composed
    assert chosen_transform.GetAttribute("DeepMultiModalReg.Method") == "optimise"
    assert chosen_transform.GetNodeReference(FIXED_ROLE) is volumes["fixed"]
    assert chosen_transform.GetNodeReference(MOVING_ROLE) is volumes["moving"]
    assert outputs.warped_volume is outputs.moved_volume is chosen_volume
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(chosen_volume), warped_image().array)
    assert mrml.geometry_from_volume_node(chosen_volume) == GEOMETRY
    assert chosen_volume.GetAttribute("DeepMultiModalReg.Role") == "warped volume"
    # hardened: the moving volume as it was
    assert volumes["moving"].GetParentTransformNode() is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumes["moving"]), moving_voxels)


def test_new_nodes_when_none_is_chosen(scene, volumes, deformable_result):
    before, count = snapshot(scene), scene.GetNumberOfNodes()
    parameters = RegistrationParameters(fixed_volume=volumes["fixed"], moving_volume=volumes["moving"],
                                        harden_moving_volume=True)
    outputs = add_output_nodes(scene, parameters, deformable_result, warped_image())

    assert {key: value for key, value in snapshot(scene).items() if key in before} == before, "no existing node changes"
    new_volume = outputs.warped_volume
    assert len(outputs.transform.nodes) == 2 and new_volume not in volumes.values()
    assert scene.GetNumberOfNodes() == count + 3 + new_volume.GetNumberOfDisplayNodes()
    assert new_volume.GetName() == "moving to fixed (optimise) warped"
    np.testing.assert_allclose(mapped_points(outputs.transform.leaf), expected_points(deformable_result, False), atol=1e-9)


def test_a_chosen_transform_under_another_is_moved_to_the_top(scene, volumes, affine_result):
    chosen = volumes["chosen transform"]
    chosen.SetAndObserveTransformNodeID(volumes["other linear"].GetID())
    parameters = RegistrationParameters(fixed_volume=volumes["fixed"], moving_volume=volumes["moving"],
                                        transform="affine", output_transform_node=chosen)
    outputs = add_output_nodes(scene, parameters, affine_result, None)
    assert chosen.GetParentTransformNode() is None and chosen.IsTransformToWorldLinear()
    np.testing.assert_allclose(mapped_points(chosen), expected_points(affine_result, False), atol=1e-9)
    assert outputs.moved_volume is volumes["moving"] and outputs.warped_volume is None


@pytest.mark.parametrize("harden", [False, True], ids=["left under the transform", "hardened"])
def test_moving_volume_left_under_the_result_or_hardened(scene, volumes, deformable_result, harden):
    """Either way the moving volume keeps its voxels and geometry; by default it is only placed
    under the result transform, hardened it stays where it was and the output volume is new."""
    moving = volumes["moving"]
    voxels, ijk_to_ras = slicer.util.arrayFromVolume(moving).copy(), mrml.ijk_to_world_ras(moving, None)
    parameters = RegistrationParameters(fixed_volume=volumes["fixed"], moving_volume=moving, harden_moving_volume=harden)
    check_parameters(parameters)
    outputs = add_output_nodes(scene, parameters, deformable_result, warped_image() if harden else None)

    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), voxels)
    np.testing.assert_array_equal(mrml.ijk_to_world_ras(moving, None), ijk_to_ras)
    if harden:
        assert moving.GetParentTransformNode() is None
        assert outputs.moved_volume is outputs.warped_volume and outputs.warped_volume is not moving
    else:
        assert moving.GetParentTransformNode() is outputs.transform.leaf
        assert outputs.moved_volume is moving and outputs.warped_volume is None


def test_output_choices_that_would_change_an_input_are_refused(scene, volumes):
    fixed, moving = volumes["fixed"], volumes["moving"]
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
    manual = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "manual")
    fixed_parent = scene.AddNewNodeByClass("vtkMRMLTransformNode", "fixed parent")
    fixed.SetAndObserveTransformNodeID(fixed_parent.GetID())
    cases = {
        "no transform to leave the moving volume under": (dict(output_transform=False), "keep the transform output"),
        "deformable into a linear node": (dict(output_transform_node=volumes["other linear"]), "is a linear transform node"),
        "the initial transform": (dict(initial_transform=initial, transform="affine", output_transform_node=initial),
                                  "is or moves the initial transform"),
        "above the fixed volume": (dict(output_transform_node=fixed_parent), "is or moves the fixed volume"),
        "the moving volume as output volume": (dict(harden_moving_volume=True, output_volume_node=moving),
                                               "is an input volume"),
        "the fixed volume as output volume": (dict(harden_moving_volume=True, output_volume_node=fixed),
                                              "is an input volume"),
    }
    before = snapshot(scene, leave_out=(moving,))
    for name, (overrides, message) in cases.items():
        with pytest.raises(InputError, match=message):
            check_parameters(RegistrationParameters(fixed_volume=fixed, moving_volume=moving, **overrides))
    # a moving volume under the user's own transform cannot be left under the result (that would
    # drop the user's transform), but it can be hardened
    moving.SetAndObserveTransformNodeID(manual.GetID())
    with pytest.raises(InputError, match="under the transform 'manual'"):
        check_parameters(RegistrationParameters(fixed_volume=fixed, moving_volume=moving))
    check_parameters(RegistrationParameters(fixed_volume=fixed, moving_volume=moving, harden_moving_volume=True))
    moving.SetAndObserveTransformNodeID(None)
    assert snapshot(scene, leave_out=(moving,)) == before


@pytest.mark.parametrize("chosen", [False, True], ids=["new nodes", "chosen node"])
def test_a_second_run_registers_the_moving_volume_not_the_first_answer(scene, volumes, affine_result, chosen):
    """After a run the moving volume sits under its result; a second run reads the moving volume
    without the transforms it replaces (earlier results of this moving volume, the chosen output)."""
    moving = volumes["moving"]
    parameters = RegistrationParameters(fixed_volume=volumes["fixed"], moving_volume=moving, transform="affine",
                                        output_transform_node=volumes["chosen transform"] if chosen else None)
    first = check_parameters(parameters).moving.geometry
    outputs = add_output_nodes(scene, parameters, affine_result, None)
    assert moving.GetParentTransformNode() is outputs.transform.leaf
    assert mrml.geometry_from_volume_node(moving) != first, "as displayed, the moving volume moved"
    assert check_parameters(parameters).moving.geometry == first
    second = add_output_nodes(scene, parameters, affine_result, None)
    assert moving.GetParentTransformNode() is second.transform.leaf
