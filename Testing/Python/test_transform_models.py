"""The transform model (``--transform rigid|affine|deformable``) and the picture's physical aspect.

On the real stroke pair: the T2 deformed by a known rigid or affine transform (fixed) and the
T1 (moving).  A rigid registration has a linear part with determinant 1 and singular values 1
(no scaling or shear) and recovers a known rigid transform; an affine registration recovers a
known affine (scaling and shear included); neither has a displacement field.  Learned methods
stop at their pre-alignment (FIRE, affine: its network's affine part).  The picture shows each
view at its physical aspect, on a thick-slice (0.5 x 0.5 x 5 mm) volume, straight and oblique.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import KnownWarpCase, affine_about_centre, stroke_slice_2d

from dmmreg import cli, spatial
from dmmreg.errors import InputError
from dmmreg.geometry import Geometry
from dmmreg.image import Image
from dmmreg.image_io import write_image
from dmmreg.known_warp import deform
from dmmreg.methods import method_class
from dmmreg.model_io import save_model
from dmmreg.picture import registration_figure, save_registration_picture, view_aspects
from dmmreg.registration import register_pair
from dmmreg.result import RegistrationResult
from dmmreg.transform_io import read_result

#: Known transforms of the stroke T2 (shift mm, angles degrees, scales, shear), each about 10 mm
#: mean endpoint error before registration.
RIGID = ((7.0, -5.0, 4.0), (8.0, 6.0, -5.0), (1.0, 1.0, 1.0), None)
AFFINE = ((6.0, -4.0, 3.0), (6.0, -5.0, 4.0), (1.08, 0.93, 1.05), (0.05, -0.03, 0.04))
MAX_MEAN_ERROR_MM = 0.5  # measured 0.21 mm (rigid) and 0.24 mm (affine): a quarter of a voxel
LINEAR_TOLERANCE = 1e-6


def known_affine_case(source: Image, shift, angles_deg, scales, shear) -> KnownWarpCase:
    """``source`` deformed by a known affine about its centre (the truth ``G``)."""
    g = source.geometry
    truth = RegistrationResult(g, g, affine_about_centre(g, shift, np.deg2rad(angles_deg)[: 1 if g.dim == 2 else 3],
                                                         scales, shear))
    return KnownWarpCase(deform(source, truth), truth)


@pytest.fixture(scope="module")
def cases(stroke) -> dict[str, KnownWarpCase]:
    return {"rigid": known_affine_case(stroke["T2"], *RIGID), "affine": known_affine_case(stroke["T2"], *AFFINE)}


def assert_rigid(result: RegistrationResult) -> None:
    linear = result.affine[: result.dim, : result.dim]
    assert abs(np.linalg.det(linear) - 1) < LINEAR_TOLERANCE
    np.testing.assert_allclose(np.linalg.svd(linear)[1], 1.0, atol=LINEAR_TOLERANCE)
    assert result.displacement is None


@pytest.mark.parametrize("truth", ["rigid", "affine"])
def test_rigid_keeps_determinant_one_and_no_scaling(cases, stroke, truth):
    """Also when the truth scales and shears (then a rigid transform cannot recover it)."""
    case = cases[truth]
    result = register_pair(case.fixed, stroke["T1"], transform="rigid", device="cpu")
    assert_rigid(result)
    assert result.settings["transform"] == "rigid"
    if truth == "rigid":
        assert case.initial_endpoint_error > 10.0
        error = case.mean_endpoint_error(result)
        assert error < MAX_MEAN_ERROR_MM, f"mean endpoint error {error:.2f} mm"


def test_affine_recovers_a_known_affine_warp(cases, stroke):
    case = cases["affine"]
    result = register_pair(case.fixed, stroke["T1"], transform="affine", device="cpu")
    assert result.displacement is None and result.inverse_displacement is None
    initial, error = case.initial_endpoint_error, case.mean_endpoint_error(result)
    assert initial > 10.0
    assert error < MAX_MEAN_ERROR_MM, f"mean endpoint error {error:.2f} mm (initially {initial:.1f} mm)"
    # the scaling and shear are found, not only the points: linear parts agree to 1 %
    np.testing.assert_allclose(result.affine[:3, :3], case.truth.affine[:3, :3], atol=0.01)


def test_rigid_refuses_a_scaling_initial_transform(cases, stroke):
    scaling = np.diag([1.1, 1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="rigid registration cannot start from an initial transform that scales"):
        register_pair(cases["rigid"].fixed, stroke["T1"], transform="rigid", initial_affine=scaling)
    with pytest.raises(InputError, match="unknown transform 'similarity'; choose one of rigid, affine, deformable"):
        register_pair(cases["rigid"].fixed, stroke["T1"], transform="similarity")


# --------------------------------------------------------------------------------------------
# Learned methods (2D slices, freshly initialised models: the interface, not accuracy)


@pytest.fixture(scope="module")
def slices(stroke) -> tuple[KnownWarpCase, Image]:
    """The T2 mid slice deformed by a known 2D affine (fixed) and the T1 mid slice (moving)."""
    case = known_affine_case(stroke_slice_2d(stroke, "T2"), (5.0, -4.0), (7.0,), (1.06, 0.95), (0.04,))
    return case, stroke_slice_2d(stroke, "T1")


def fresh_model_file(name: str, folder) -> str:
    torch.manual_seed(0)
    cls = method_class(name)
    return str(save_model(cls(cls.config_class(dim=2, spacing_mm=2.0)), folder / f"{name}-2d.safetensors"))


@pytest.mark.parametrize("name", ["midir", "fire"])
def test_learned_methods_stop_at_the_rigid_or_affine_part(name, slices, tmp_path):
    case, moving = slices
    model = fresh_model_file(name, tmp_path)
    rigid = register_pair(case.fixed, moving, method=name, model=model, transform="rigid", device="cpu")
    assert_rigid(rigid)
    assert rigid.method == name and rigid.settings["network"] == "not run: the rigid pre-alignment"
    affine = register_pair(case.fixed, moving, method=name, model=model, transform="affine", device="cpu")
    assert affine.displacement is None and affine.settings["transform"] == "affine"
    if name == "fire":  # the network's affine part, after the centre-of-mass shift
        assert affine.settings["refine"] == 0 and "moving_in_fixed_contrast" in affine.synthesised
    else:  # the affine pre-alignment recovers the known affine
        assert case.mean_endpoint_error(affine) < 0.3 * case.initial_endpoint_error
    with pytest.raises(InputError, match="refinement .* adds a displacement field, which a rigid transform has not"):
        register_pair(case.fixed, moving, method=name, model=model, transform="rigid", refine=5)


def test_command_line_transform_option(slices, tmp_path, capsys):
    """``--transform affine`` writes an affine-only transform and a picture; ``--refine`` with a
    rigid transform is refused before any work (exit code 2)."""
    case, moving = slices
    write_image(case.fixed, tmp_path / "fixed.nii.gz")
    write_image(moving, tmp_path / "moving.nii.gz")
    common = ["register", "--fixed", str(tmp_path / "fixed.nii.gz"), "--moving", str(tmp_path / "moving.nii.gz"),
              "--progress", "none", "--output-transform", str(tmp_path / "t.h5")]
    assert cli.main([*common, "--transform", "affine", "--output-picture", str(tmp_path / "p.png")]) == 0
    written = read_result(tmp_path / "t.h5", case.fixed.geometry, moving.geometry)
    assert written.displacement is None
    assert case.mean_endpoint_error(written) < MAX_MEAN_ERROR_MM
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "t.h5").unlink()
    assert cli.main([*common, "--transform", "rigid", "--method", "midir", "--refine", "5"]) == 2
    assert "choose --transform deformable" in capsys.readouterr().err and not (tmp_path / "t.h5").exists()


# --------------------------------------------------------------------------------------------
# The picture's physical aspect


def thick_slice_volume(direction: np.ndarray) -> Image:
    """An ellipsoid on a 64 x 48 x 12 grid of 0.5 x 0.5 x 5 mm voxels (32 x 24 x 60 mm)."""
    geometry = Geometry((64, 48, 12), (0.5, 0.5, 5.0), (0.0, 0.0, 0.0), direction)
    z, y, x = np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij")
    radii = ((z - 5.5) * 5 / 25) ** 2 + ((y - 23.5) * 0.5 / 10) ** 2 + ((x - 31.5) * 0.5 / 14) ** 2
    return Image((radii < 1).astype(np.float32), geometry)


def shown_aspects(fig) -> np.ndarray:
    """Height / width in mm per mm of one image pixel as drawn, for every image axis (rows: views)."""
    fig.canvas.draw()
    image_axes = [ax for ax in fig.axes if ax.images]
    aspects = []
    for ax in image_axes:
        box = ax.get_window_extent()
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        aspects.append((box.height / abs(y1 - y0)) / (box.width / abs(x1 - x0)))
    return np.reshape(aspects, (-1, 4))


@pytest.mark.parametrize("oblique", [False, True], ids=["straight", "oblique"])
def test_picture_shows_every_view_at_its_physical_aspect(oblique, tmp_path):
    direction = spatial.rotation_matrix(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)).numpy() if oblique else np.eye(3)
    volume = thick_slice_volume(direction)
    assert view_aspects(volume.geometry) == pytest.approx([1.0, 10.0, 10.0])  # axial, coronal, sagittal
    shift = RegistrationResult(volume.geometry, volume.geometry, affine_about_centre(volume.geometry, (1.0, 0.5, 2.0), (0.0,) * 3, (1.0,) * 3))
    fig = registration_figure(volume, volume, shift)
    np.testing.assert_allclose(shown_aspects(fig), [[1.0] * 4, [10.0] * 4, [10.0] * 4], rtol=0.02)
    save_registration_picture(volume, volume, shift, tmp_path / "picture.png")
    assert (tmp_path / "picture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("transform", ["affine", "deformable"])
def test_affine_stage_stops_at_2_mm_only_where_a_deformable_stage_follows(slices, transform):
    """The 1 mm affine level runs for rigid/affine results (raw thick-slice series need it) and
    is skipped before the deformable stage (``affine_iterations_before_deformable`` has three
    levels), which works at 1 mm itself."""
    case, moving = slices
    messages = []
    register_pair(case.fixed, moving, method="optimise", device="cpu", transform=transform,
                  affine_iterations=(2, 2, 2, 2), affine_iterations_before_deformable=(2, 2, 2),
                  deformable_iterations=(1, 1, 1),
                  progress=lambda stage, fraction, message: messages.append((stage, message)))
    affine_levels = {message.split(" mm")[0].split()[-1] for stage, message in messages if stage == "affine"}
    assert affine_levels == ({"8", "4", "2", "1"} if transform == "affine" else {"8", "4", "2"})
    assert any(stage == "deformable" and message.startswith("deformable 1 mm") for stage, message in messages) == (
        transform == "deformable")
