"""Tests of dmmreg.metrics: analytic cases with anisotropic, oblique grids, and one real label map."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dmmreg import metrics, spatial
from dmmreg.geometry import Geometry
from dmmreg.image_io import read_image
from dmmreg.known_warp import KnownWarpSettings, deform, random_known_warp
from dmmreg.result import RegistrationResult

DATA = Path(__file__).parents[3] / "shared" / "data"
IXI_LABELS = DATA / "brain-t1-labels" / "ixi" / "IXI012-HH-1211_T1_DLMUSE.nii.gz"


def oblique_geometry(size=(24, 20, 16), spacing=(1.0, 1.5, 2.5)) -> Geometry:
    angles = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    direction = spatial.rotation_matrix(angles).numpy()
    return Geometry(size, spacing, (-10.0, 5.0, 20.0), direction)


def field_result(geometry: Geometry, displacement: np.ndarray, affine: np.ndarray | None = None) -> RegistrationResult:
    """A result whose displacement ``(*shape, dim)`` is sampled on the fixed grid itself."""
    affine = np.eye(geometry.dim + 1) if affine is None else affine
    return RegistrationResult(geometry, geometry, affine, geometry, displacement)


def physical_coordinates(geometry: Geometry) -> np.ndarray:
    return spatial.grid_points(geometry, dtype=torch.float64).numpy()


# ------------------------------------------------------------------------------------------
# Dice


def test_dice_of_a_label_map_with_itself_is_one():
    labels = np.random.default_rng(0).integers(0, 5, size=(10, 12, 14))
    assert metrics.dice_per_label(labels, labels) == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}


def test_dice_of_disjoint_labels_is_zero_and_absent_labels_are_skipped():
    fixed = np.zeros((10, 10), dtype=np.int16)
    warped = np.zeros((10, 10), dtype=np.int16)
    fixed[:5] = 3
    warped[5:] = 3
    assert metrics.dice_per_label(fixed, warped) == {3: 0.0}
    # a label in only one map scores 0, a label in neither is skipped
    warped[0, 0] = 7
    assert metrics.dice_per_label(fixed, warped, labels=[3, 7, 9]) == {3: 0.0, 7: 0.0}


def test_dice_of_a_known_partial_overlap():
    fixed = np.zeros((20, 20, 20), dtype=np.uint8)
    warped = np.zeros_like(fixed)
    fixed[2:12, 3:7, 3:7] = 1  # 160 voxels
    warped[7:17, 3:7, 3:7] = 1  # 160 voxels, 80 shared
    fixed[15:19, 15:19, 15:19] = 2  # 64 voxels
    warped[15:19, 15:19, 17:19] = 2  # 32 voxels, all shared
    dice = metrics.dice_per_label(fixed, warped)
    assert dice[1] == pytest.approx(2 * 80 / 320)
    assert dice[2] == pytest.approx(2 * 32 / 96)


# ------------------------------------------------------------------------------------------
# Hausdorff distance


def sphere(geometry: Geometry, centre_index, radius_mm: float) -> np.ndarray:
    """Ball of ``radius_mm`` around a voxel index (x, y, z), measured with the grid's spacing."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.size], indexing="ij"), axis=-1)
    offset_mm = (index - np.asarray(centre_index)) * np.asarray(geometry.spacing)
    return (np.linalg.norm(offset_mm, axis=-1) <= radius_mm).transpose(2, 1, 0)  # (z, y, x)


def test_hausdorff95_of_a_shifted_sphere_is_the_shift_in_mm():
    geometry = Geometry((48, 48, 24), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0), np.eye(3))
    centre = np.array([24, 24, 10])
    fixed = sphere(geometry, centre, 16.0).astype(np.uint8)
    # 2 slices along z are 5 mm: the surface distance of a point at angle theta from the
    # shift is ~ 5 |cos theta|, uniform on [0, 5] mm, so the 95th percentile is ~ 4.75 mm
    shifted = sphere(geometry, centre + [0, 0, 2], 16.0).astype(np.uint8)
    hd_z = metrics.hausdorff95_per_label(fixed, shifted, geometry)[1]
    assert hd_z == pytest.approx(0.95 * 5.0, abs=0.6)
    # the same 2-voxel shift along x (1 mm voxels) is 2 mm
    shifted = sphere(geometry, centre + [2, 0, 0], 16.0).astype(np.uint8)
    hd_x = metrics.hausdorff95_per_label(fixed, shifted, geometry)[1]
    assert hd_x == pytest.approx(0.95 * 2.0, abs=0.6)
    assert metrics.hausdorff95_per_label(fixed, fixed, geometry) == {1: 0.0}


def test_hausdorff95_of_a_label_in_one_map_only_is_infinite():
    geometry = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    fixed = np.zeros(geometry.shape, dtype=np.uint8)
    warped = fixed.copy()
    fixed[2:5, 2:5, 2:5] = 1
    warped[2:5, 2:5, 2:5] = 2
    assert metrics.hausdorff95_per_label(fixed, warped, geometry) == {1: np.inf, 2: np.inf}


# ------------------------------------------------------------------------------------------
# Jacobian statistics


def test_jacobian_statistics_of_an_affine_are_its_determinant_everywhere():
    geometry = oblique_geometry()
    affine = spatial.affine_matrix(
        geometry.centre,
        torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64),
        torch.tensor([0.1, 0.05, -0.2], dtype=torch.float64),
        torch.log(torch.tensor([1.1, 0.9, 1.2], dtype=torch.float64)),
        torch.tensor([0.1, 0.0, -0.05], dtype=torch.float64),
    ).numpy()
    zero_field = np.zeros((*geometry.shape, 3))
    det = field_result(geometry, zero_field, affine).jacobian_determinant()
    stats = metrics.jacobian_statistics(det)
    expected = np.linalg.det(affine[:3, :3])
    assert expected == pytest.approx(1.1 * 0.9 * 1.2)
    assert stats["min"] == pytest.approx(expected, rel=1e-5)
    assert stats["max"] == pytest.approx(expected, rel=1e-5)
    assert stats["mean"] == pytest.approx(expected, rel=1e-5)
    assert stats["folding_percent"] == 0.0
    assert stats["sdlogj"] < 1e-6
    assert stats["mean_abs_grad_j"] < 1e-5


def test_mean_abs_grad_j_is_in_physical_units():
    # u_x = a x^2 / 2 gives J = 1 + a x and |grad J| = a (mm^-1), whatever the voxel spacing
    geometry = oblique_geometry(size=(20, 8, 6), spacing=(2.0, 1.0, 3.0))
    x = physical_coordinates(geometry) - geometry.centre
    a = 0.01
    displacement = np.zeros((*geometry.shape, 3))
    direction_x = geometry.direction[:, 0]  # measure x along the first index axis
    along = x @ direction_x
    displacement[:] = (a * along**2 / 2)[..., None] * direction_x
    det = field_result(geometry, displacement).jacobian_determinant()
    # one-sided differences at the border bias J there; two columns in from each side it is exact
    interior = np.zeros(geometry.shape, dtype=bool)
    interior[..., 2:-2] = True
    stats = metrics.jacobian_statistics(det, mask=interior)
    assert stats["mean_abs_grad_j"] == pytest.approx(a, rel=1e-6)
    assert stats["mean"] == pytest.approx(1.0, abs=0.02)
    assert stats["folding_percent"] == 0.0
    assert stats["sdlogj"] > 0.01


def test_a_folded_field_has_folding_and_a_mask_can_exclude_it():
    geometry = Geometry((30, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    x = physical_coordinates(geometry)[..., 0]
    displacement = np.zeros((*geometry.shape, 3))
    # a tent u_x = -2 (5 - |x - 15|) on 10 <= x <= 20 mm: u_x' = -2 (J = -1) on its first half
    displacement[..., 0] = np.where(np.abs(x - 15) <= 5, -2.0 * (5 - np.abs(x - 15)), 0.0)
    det = field_result(geometry, displacement).jacobian_determinant()
    stats = metrics.jacobian_statistics(det)
    # central differences give J = 0 at x = 10 and J = -1 at x = 11..14: 5 of 30 columns
    assert stats["folding_percent"] == pytest.approx(100 * 5 / 30)
    assert stats["min"] == pytest.approx(-1.0)
    outside = (x < 10) | (x > 14)
    assert metrics.jacobian_statistics(det, mask=outside)["folding_percent"] == 0.0


# ------------------------------------------------------------------------------------------
# Inverse consistency and landmarks


@pytest.fixture(scope="module")
def known_warp():
    geometry = oblique_geometry(size=(40, 36, 24), spacing=(2.0, 2.0, 3.0))
    settings = KnownWarpSettings(control_spacing_mm=30.0, mean_nonrigid_mm=3.0, field_spacing_mm=3.0)
    return random_known_warp(geometry, seed=3, settings=settings)


def test_inverse_consistency_of_a_known_warp_with_its_numerical_inverse_is_small(known_warp):
    ice = metrics.inverse_consistency_error(known_warp).array
    assert ice.max() < 0.1
    # the same inverse given as a separate result (moving -> fixed, a field on the moving grid)
    grid = known_warp.moving_geometry.with_margin(30.0)
    inverse = RegistrationResult(
        known_warp.moving_geometry, known_warp.fixed_geometry, np.eye(4), grid,
        known_warp.inverse_resampling_displacement(grid),
    )
    assert np.max(metrics.inverse_consistency_error(known_warp, inverse).array) < 0.1


def test_inverse_consistency_of_a_wrong_inverse_is_large_and_masked_voxels_are_nan(known_warp):
    identity = RegistrationResult(known_warp.moving_geometry, known_warp.fixed_geometry, np.eye(4))
    mask = np.zeros(known_warp.fixed_geometry.shape, dtype=bool)
    mask[5:-5, 5:-5, 5:-5] = True
    ice = metrics.inverse_consistency_error(known_warp, identity, mask=mask).array
    # with the identity as the "inverse", the error is the whole warp, |G(p) - p|
    points = physical_coordinates(known_warp.fixed_geometry)[mask]
    displacement = np.linalg.norm(known_warp.resampling_points(points) - points, axis=-1)
    np.testing.assert_allclose(ice[mask], displacement, rtol=1e-5, atol=1e-4)
    assert np.nanmean(ice) > 2.0
    assert np.all(np.isnan(ice[~mask]))


def test_landmark_errors_under_a_known_translation():
    geometry = oblique_geometry()
    shift = np.array([3.0, -4.0, 12.0])
    affine = np.eye(4)
    affine[:3, 3] = shift
    result = RegistrationResult(geometry, geometry, affine)
    fixed_points = np.random.default_rng(1).uniform(-50, 50, size=(7, 3))
    np.testing.assert_allclose(metrics.landmark_errors(fixed_points, fixed_points + shift, result), 0.0, atol=1e-9)
    np.testing.assert_allclose(metrics.landmark_errors(fixed_points, fixed_points, result), 13.0)
    with pytest.raises(ValueError):
        metrics.landmark_errors(fixed_points, fixed_points[:3], result)


# ------------------------------------------------------------------------------------------
# Real labels


@pytest.mark.skipif(not IXI_LABELS.exists(), reason=f"real IXI label map not found at {IXI_LABELS}")
def test_real_labels_warped_by_a_known_warp_and_back():
    labels = read_image(IXI_LABELS)
    warp = random_known_warp(labels.geometry, seed=0, mask=labels.array > 0)
    warped = deform(labels, warp, label=True)
    deformed_dice = np.mean(list(metrics.dice_per_label(labels.array, warped.array).values()))
    restored = warp.warp(warped, mode="nearest", inverse=True)
    restored_dice = metrics.dice_per_label(labels.array, restored.array)
    assert deformed_dice < 0.5
    # nearest neighbour twice on 2 mm voxels loses thin structures, but most overlap returns
    assert np.median(list(restored_dice.values())) > 0.9
    assert np.mean(list(restored_dice.values())) > deformed_dice + 0.4
    brain = [1]
    brain_mask = (labels.array > 0).astype(np.uint8)
    hd_deformed = metrics.hausdorff95_per_label(brain_mask, (warped.array > 0).astype(np.uint8), labels.geometry, brain)
    hd_restored = metrics.hausdorff95_per_label(brain_mask, (restored.array > 0).astype(np.uint8), labels.geometry, brain)
    assert hd_restored[1] <= 3.0  # within 1.5 voxels of 2 mm
    assert hd_deformed[1] > 6.0
