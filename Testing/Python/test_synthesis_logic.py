"""Synthesis preview: ``dmmreg register --output-synthesised`` (a subprocess, as a user runs it),
the module logic on a real slicer-core scene with the bundled stroke data, its similarity
measures and its display helpers.

Models are freshly initialised small FIRE networks (no trained model is bundled): the images
they synthesise are meaningless, but their path, grids, files, nodes and report are real.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from dmmreg.slicer import mrml  # noqa: E402
from dmmreg.slicer.background import run_to_end  # noqa: E402
from dmmreg.errors import InputError  # noqa: E402
from dmmreg.geometry import Geometry
from dmmreg.image import Image
from dmmreg.image_io import read_image, write_image  # noqa: E402
from dmmreg.methods.fire import Fire, FireConfig  # noqa: E402
from dmmreg.model_io import save_model  # noqa: E402
from dmmreg.synthesis import normalised_mutual_information, structural_similarity  # noqa: E402
from dmmreg.slicer.synthesis_logic import (SynthesisLogic, SynthesisParameters, checkerboard,
    show_checkerboard, show_fade, show_side_by_side)  # noqa: E402

SMALL = dict(synthesis_channels=(4, 8, 16), resnet_blocks=1, nonrigid_channels=8)
KEYS = {"moving_in_fixed_contrast", "fixed_in_moving_contrast"}


def small_fire_model(folder, dim: int) -> str:
    """A seeded, untrained small FIRE saved with its card; returns the card's path."""
    torch.manual_seed(0)
    model = Fire(FireConfig(dim=dim, spacing_mm=2.0 if dim == 2 else 4.0, **SMALL))
    return str(save_model(model, folder / f"fire{dim}d.safetensors"))


def dmmreg(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmmreg", *map(str, arguments)], capture_output=True, text=True,
                          timeout=600)


def axial_slice(path, offset: int = 0) -> Image:
    """The middle axial slice of a stroke volume as a 2D image (an off-origin, rotated plane)."""
    image = read_image(path)
    g = image.geometry
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return Image(image.array[g.size[2] // 2 + offset].astype(np.float32),
                 Geometry(g.size[:2], g.spacing[:2], (12.0, -30.0), rotation))


# --------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def slices(tmp_path_factory, stroke_paths):
    folder = tmp_path_factory.mktemp("slices")
    paths = {}
    for contrast in ("T1", "T2"):
        paths[contrast] = folder / f"{contrast}_slice.nii.gz"
        write_image(axial_slice(stroke_paths[contrast]), paths[contrast])
    paths["model"] = small_fire_model(folder, 2)
    return paths


def test_cli_writes_the_synthesised_images_on_the_fixed_grid(slices, tmp_path):
    prefix = tmp_path / "out" / "T1_to_T2"
    run = dmmreg("register", "--fixed", slices["T2"], "--moving", slices["T1"], "--method", "fire", "--model",
                 slices["model"], "--device", "cpu", "--threads", "1", "--progress", "json",
                 "--output-transform", tmp_path / "t.h5", "--output-synthesised", prefix)
    assert run.returncode == 0, run.stderr
    done = json.loads(run.stdout.splitlines()[-1])
    assert done["stage"] == "done"
    fixed = read_image(slices["T2"])
    for key in KEYS:
        path = tmp_path / "out" / f"T1_to_T2_{key}.nii.gz"
        assert done["outputs"][f"synthesised_{key}"] == str(path)
        image = read_image(path)
        assert image.geometry == fixed.geometry  # size, spacing, origin and rotation of the fixed slice
        assert np.all(np.isfinite(image.array)) and image.array.std() > 0
    assert not list((tmp_path / "out").glob(".partial-*"))


def test_cli_names_the_fix_when_the_method_synthesises_nothing(slices, tmp_path):
    prefix = tmp_path / "s"
    run = dmmreg("register", "--fixed", slices["T2"], "--moving", slices["T1"], "--method", "optimise",
                 "--output-transform", tmp_path / "t.h5", "--output-synthesised", prefix)
    assert run.returncode == 2
    assert "synthesises no images" in run.stderr and "fire" in run.stderr
    assert not list(tmp_path.iterdir())  # failed before any work: nothing written


# --------------------------------------------------------------------------------------------
# Module logic on a real scene


def volume_state(node):
    return (slicer.util.arrayFromVolume(node).copy(), mrml.ijk_to_world_ras(node).copy(), node.GetName())


@pytest.fixture(scope="module")
def preview(tmp_path_factory, stroke_paths):
    """A scene with the stroke T2 (fixed) and T1 (moving) and a finished preview run."""
    scene = slicer.vtkMRMLScene()
    nodes = {c: mrml.add_volume_node(scene, read_image(stroke_paths[c]), c) for c in ("T1", "T2")}
    before = {c: volume_state(n) for c, n in nodes.items()}
    model = small_fire_model(tmp_path_factory.mktemp("model"), 3)
    parameters = SynthesisParameters(fixed_volume=nodes["T2"], moving_volume=nodes["T1"], method="fire",
                                     model=model, device="cpu")
    logic = SynthesisLogic(scene)
    outputs = run_to_end(logic.start(parameters))
    return dict(scene=scene, nodes=nodes, before=before, outputs=outputs, parameters=parameters)


def test_run_adds_the_synthesised_volumes_on_the_fixed_grid(preview):
    outputs, fixed = preview["outputs"], preview["nodes"]["T2"]
    assert set(outputs.volumes) == KEYS
    assert outputs.volumes["moving_in_fixed_contrast"].GetName() == "T1 in T2 contrast"
    assert outputs.volumes["fixed_in_moving_contrast"].GetName() == "T2 in T1 contrast"
    for key, node in outputs.volumes.items():
        assert mrml.geometry_from_volume_node(node) == mrml.geometry_from_volume_node(fixed)
        assert node.GetAttribute("DeepMultiModalReg.Synthesised") == key
        assert node.GetAttribute("DeepMultiModalReg.Method") == "fire"
        assert node.GetAttribute("DeepMultiModalReg.Role") == f"synthesised {key}"
        assert np.all(np.isfinite(slicer.util.arrayFromVolume(node)))


def test_run_reports_nmi_and_ssim_as_a_dict_and_a_table(preview):
    report, table = preview["outputs"].report, preview["outputs"].table
    assert set(report) == KEYS
    for row in report.values():
        assert 1.0 <= row["nmi"] <= 2.0 and -1.0 <= row["ssim"] <= 1.0
    assert table.IsA("vtkMRMLTableNode") and table.GetNumberOfRows() == 2
    columns = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert columns == ["Image", "Compared with", "NMI", "SSIM"]
    rows = {table.GetCellText(r, 0): (float(table.GetCellText(r, 2)), float(table.GetCellText(r, 3))) for r in range(2)}
    for row in report.values():
        np.testing.assert_allclose(rows[row["node"]], (row["nmi"], row["ssim"]), rtol=1e-5)


def test_inputs_are_unchanged(preview):
    for contrast, node in preview["nodes"].items():
        array, matrix, name = preview["before"][contrast]
        now = volume_state(node)
        np.testing.assert_array_equal(now[0], array)
        np.testing.assert_array_equal(now[1], matrix)
        assert now[2] == name


def test_self_similarity_is_maximal(stroke):
    a = stroke["T2"].array / stroke["T2"].array.max()
    b = stroke["T1"].array / stroke["T1"].array.max()
    brain = a > 0
    assert structural_similarity(a, a, brain) == pytest.approx(1.0, abs=1e-9)
    assert structural_similarity(a, a, brain, sigma_voxels=None) == pytest.approx(1.0, abs=1e-9)
    assert normalised_mutual_information(a, a, brain) == pytest.approx(2.0, abs=1e-12)  # the maximum of NMI
    shifted = np.roll(a, 2, axis=-1)
    for other in (b, shifted, np.clip(a + 0.05 * np.random.default_rng(0).standard_normal(a.shape), 0, 1)):
        assert normalised_mutual_information(a, other, brain) < 2.0 - 1e-3
        assert structural_similarity(a, other, brain) < 1.0 - 1e-3


def test_checkerboard_alternates_real_and_synthesised_tiles(preview):
    real_node = preview["nodes"]["T2"]
    synthesised_node = preview["outputs"].volumes["moving_in_fixed_contrast"]
    node = show_checkerboard(real_node, synthesised_node, tile_mm=10.0)
    board = slicer.util.arrayFromVolume(node)
    real, synthesised = slicer.util.arrayFromVolume(real_node), slicer.util.arrayFromVolume(synthesised_node)
    assert mrml.geometry_from_volume_node(node) == mrml.geometry_from_volume_node(real_node)
    spacing = real_node.GetSpacing()[::-1]  # k, j, i like the array
    tiles = np.meshgrid(*[np.floor(np.arange(n) * s / 10.0 + 1e-9) for n, s in zip(board.shape, spacing)], indexing="ij")
    even = (sum(tiles) % 2) == 0
    assert 0.3 < even.mean() < 0.7
    np.testing.assert_array_equal(board[even], real[even])
    np.testing.assert_array_equal(board[~even], synthesised[~even])
    composite = preview["scene"].GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == node.GetID()
    with pytest.raises(InputError, match="tile size"):
        checkerboard(mrml.image_from_volume_node(real_node), mrml.image_from_volume_node(synthesised_node), 0)


def test_fade_and_side_by_side_set_the_slice_views(preview):
    scene, real_node = preview["scene"], preview["nodes"]["T2"]
    synthesised_node = preview["outputs"].volumes["moving_in_fixed_contrast"]
    composites = show_fade(real_node, synthesised_node, 0.3)
    assert composites
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == real_node.GetID()
        assert composite.GetForegroundVolumeID() == synthesised_node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    with pytest.raises(InputError, match="opacity"):
        show_fade(real_node, synthesised_node, 1.5)
    first, second = show_side_by_side(real_node, synthesised_node)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") >= 2
    assert (first.GetBackgroundVolumeID(), second.GetBackgroundVolumeID()) == (real_node.GetID(), synthesised_node.GetID())
    assert first.GetLayoutName() != second.GetLayoutName()


def test_bad_parameters_raise_input_error_and_change_nothing(preview, tmp_path):
    scene, nodes = preview["scene"], preview["nodes"]
    logic = SynthesisLogic(scene)
    count = scene.GetNumberOfNodes()
    model = preview["parameters"].model
    cases = [
        (SynthesisParameters(nodes["T2"], nodes["T1"], method="optimise", model=model), "synthesises no images"),
        (SynthesisParameters(nodes["T2"], nodes["T1"], method="midir", model=model), "synthesises no images"),
        (SynthesisParameters(nodes["T2"], nodes["T1"], method="fire", model=""), "select a trained fire model"),
        (SynthesisParameters(nodes["T2"], None, method="fire", model=model), "select both"),
        (SynthesisParameters(None, nodes["T1"], method="fire", model=model), "select both"),
        (SynthesisParameters(nodes["T2"], nodes["T1"], model=str(tmp_path / "missing.json")), "does not exist"),
        (SynthesisParameters(nodes["T2"], nodes["T2"], model=model), "same node"),
    ]
    for parameters, message in cases:
        with pytest.raises(InputError, match=message):
            logic.start(parameters)
    assert scene.GetNumberOfNodes() == count


def test_single_slice_volumes_give_single_slice_synthesised_volumes(slices):
    """2D path: single-slice volume nodes, a 2D model; the outputs lie on the fixed slice."""
    scene = slicer.vtkMRMLScene()
    nodes = {c: mrml.add_volume_node(scene, read_image(slices[c]), c) for c in ("T1", "T2")}
    logic = SynthesisLogic(scene)
    outputs = run_to_end(logic.start(SynthesisParameters(nodes["T2"], nodes["T1"], "fire", slices["model"], "cpu")))
    assert set(outputs.volumes) == KEYS and outputs.table.GetNumberOfRows() == 2
    for node in outputs.volumes.values():
        assert mrml.geometry_from_volume_node(node) == mrml.geometry_from_volume_node(nodes["T2"])
