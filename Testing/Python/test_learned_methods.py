"""The path every learned method shares: registry, model files, ``register_pair`` and the command
line with ``--model`` / ``--refine``, on real known-warp cases (stroke slices).

Models here are freshly initialised (their networks start near the identity) or briefly
trained: what is tested is the interface and geometry, not accuracy (each method's own test
file trains it and checks that it learns)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import assert_same_resampling, known_warp_case, sitk_resample, stroke_slice_2d

from dmmreg import cli, model_io
from dmmreg.errors import InputError
from dmmreg.image_io import write_image
from dmmreg.methods import LEARNED_METHODS, available_methods, available_models, method_class
from dmmreg.methods.learned import model_grid
from dmmreg.model_io import find_model, load_model, save_model
from dmmreg.registration import register_pair
from dmmreg.transform_io import write_transform

pytestmark = pytest.mark.usefixtures("one_thread")

SYNTHESISING = {"fire", "disentangled", "hierarchical"}


def fresh_model(name: str, dim: int = 2):
    torch.manual_seed(0)
    cls = method_class(name)
    return cls(cls.config_class(dim=dim, spacing_mm=2.0))


@pytest.fixture(scope="module")
def case_2d(stroke):
    """T1 slice (moving) and the T2 slice deformed by known warp 1 (fixed)."""
    moving = stroke_slice_2d(stroke, "T1")
    return known_warp_case(stroke_slice_2d(stroke, "T2"), seed=1), moving


def test_the_registry_lists_the_five_papers():
    names = [name for name, _ in available_methods()]
    assert names == ["optimise", *LEARNED_METHODS]
    assert LEARNED_METHODS == ("fire", "variational", "disentangled", "midir", "hierarchical")


@pytest.mark.parametrize("name", LEARNED_METHODS)
def test_a_saved_model_registers_through_the_registry(name, case_2d, tmp_path):
    case, moving = case_2d
    model = fresh_model(name)
    card_path = save_model(model, tmp_path / f"{name}-2d.safetensors", training={"data": "none (test)"})
    card = json.loads(card_path.read_text())
    assert card["method"] == name and card["dimension"] == 2 and (tmp_path / f"{name}-2d.safetensors").exists()
    loaded, _ = load_model(card_path, method=name)
    for key, value in model.state_dict().items():  # training-only parts (discriminators) are not saved
        assert key.startswith(model.training_only) or torch.equal(value, loaded.state_dict()[key]), key

    result = register_pair(case.fixed, moving, method=name, model=str(card_path), device="cpu")
    grid = model_grid(case.fixed.geometry, 2.0, model.config.margin_mm)
    assert result.method == name and result.field_geometry == grid
    assert result.displacement.shape == (*grid.shape, 2) and result.inverse_displacement.shape == (*grid.shape, 2)
    assert np.isfinite(result.displacement).all() and np.isfinite(result.affine).all()
    # the model grid covers the fixed image with its margin, as written transforms must
    corners = result.fixed_geometry.corners
    index = corners @ grid.physical_to_index[:2, :2].T + grid.physical_to_index[:2, 2]
    assert (index >= 0).all() and (index <= np.asarray(grid.size) - 1).all()
    if not model.predicts_affine:  # the affine pre-alignment already brings the pair closer
        assert case.mean_endpoint_error(result) < 0.8 * case.initial_endpoint_error
    if name in SYNTHESISING:
        assert "moving_in_fixed_contrast" in result.synthesised
        assert result.synthesised["moving_in_fixed_contrast"].geometry == grid
    # the written transform reproduces the warped image through SimpleITK
    write_transform(result, tmp_path / "t.h5")
    ours = result.warp(moving).array
    theirs = sitk_resample(moving, case.fixed.geometry, sitk.ReadTransform(str(tmp_path / "t.h5")))
    assert_same_resampling(ours, theirs, ".h5", float(np.ptp(moving.array)))


def test_refinement_improves_the_network_answer_and_is_the_default(case_2d, tmp_path):
    """``refine=0``: the network alone; by default (the accurate mode) the network's answer is
    refined by as many optimise iterations as the balanced optimisation does at its finest level."""
    from dmmreg.methods import DEFAULT_REFINE_ITERATIONS
    from dmmreg.methods.optimise import settings_for

    assert DEFAULT_REFINE_ITERATIONS == settings_for("balanced").deformable_iterations[-1]
    case, moving = case_2d
    path = save_model(fresh_model("midir"), tmp_path / "midir-2d.safetensors")
    alone = register_pair(case.fixed, moving, method="midir", model=str(path), refine=0)
    default = register_pair(case.fixed, moving, method="midir", model=str(path))
    assert (alone.settings["refine"], default.settings["refine"]) == (0, DEFAULT_REFINE_ITERATIONS)
    assert case.mean_endpoint_error(default) < 0.9 * case.mean_endpoint_error(alone)
    refined = register_pair(case.fixed, moving, method="midir", model=str(path), refine=40)
    assert refined.field_geometry == alone.field_geometry
    before, after = case.mean_endpoint_error(alone), case.mean_endpoint_error(refined)
    assert after < 0.8 * before, f"refinement: {before:.2f} -> {after:.2f} mm"
    # the refined inverse still undoes the refined transform
    points = case.fixed.geometry.physical_points(np.array([[40.0, 60.0], [70.0, 90.0]]))
    np.testing.assert_allclose(refined.inverse_points(refined.resampling_points(points)), points, atol=0.3)


def test_command_line_runs_a_learned_method(case_2d, tmp_path):
    case, moving = case_2d
    path = save_model(fresh_model("variational"), tmp_path / "variational-2d.safetensors")
    write_image(case.fixed, tmp_path / "fixed.nii.gz")
    write_image(moving, tmp_path / "moving.nii.gz")
    code = cli.main(["register", "--fixed", str(tmp_path / "fixed.nii.gz"), "--moving", str(tmp_path / "moving.nii.gz"),
                     "--method", "variational", "--model", str(path), "--refine", "5", "--progress", "none",
                     "--output-transform", str(tmp_path / "t.h5"), "--output-volume", str(tmp_path / "w.nii.gz")])
    assert code == 0 and (tmp_path / "t.h5").exists() and (tmp_path / "w.nii.gz").exists()


def test_model_errors_name_the_problem_and_the_fix(case_2d, tmp_path, capsys, monkeypatch):
    case, moving = case_2d
    monkeypatch.setattr(model_io, "BUNDLED_MODELS", tmp_path / "no-bundled-models")
    path = save_model(fresh_model("midir"), tmp_path / "m.safetensors")
    with pytest.raises(InputError, match="is a 'midir' model, not a 'fire' one"):
        load_model(path, method="fire")
    with pytest.raises(InputError, match="no trained 3D model of method 'fire' is bundled.*--model"):
        find_model("fire", 3)
    with pytest.raises(InputError, match="not found"):
        find_model("fire", 2, str(tmp_path / "absent.safetensors"))
    path3d = save_model(fresh_model("midir", dim=3), tmp_path / "m3.safetensors")
    with pytest.raises(InputError, match="is 3D but the images are 2D"):
        register_pair(case.fixed, moving, method="midir", model=str(path3d))
    with pytest.raises(InputError, match="does not take similarity"):
        register_pair(case.fixed, moving, method="midir", model=str(path), similarity="lncc")
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(InputError, match="weights .* are missing"):
        load_model(path, method="midir")
    write_image(case.fixed, tmp_path / "fixed.nii.gz")
    code = cli.main(["register", "--fixed", str(tmp_path / "fixed.nii.gz"), "--moving", str(tmp_path / "fixed.nii.gz"),
                     "--output-transform", str(tmp_path / "t.h5"), "--model", str(path)])
    assert code == 2 and "--model and --refine apply to the learned methods" in capsys.readouterr().err
    assert available_models("optimise") == []
