"""Similarity measures (dmmreg.losses) on the real stroke T1/T2 pair, and the regularisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import oblique_geometry

from dmmreg import losses, regularisers, spatial
from dmmreg.geometry import Geometry
from dmmreg.image import normalise_intensity

SHIFTS_MM = (0.0, 1.0, 2.0, 4.0, 8.0)


class Pair:
    """The stroke T1 and T2 (aligned), normalised and resampled to 2 mm, as (1, 1, z, y, x) tensors."""

    def __init__(self, stroke):
        source = stroke["T1"].geometry
        self.geometry = source.with_spacing(2.0)
        self.t1, self.t2 = (
            spatial.resample_image(torch.from_numpy(normalise_intensity(stroke[c].array))[None, None], source, self.geometry)
            for c in ("T1", "T2")
        )
        self.brain = (self.t1 > 0.02).float()

    def shifted(self, volume: torch.Tensor, shift_mm: float, axis: int = 0) -> torch.Tensor:
        """``volume`` seen through a translation of ``shift_mm`` along physical axis ``axis``."""
        affine = np.eye(4)
        affine[axis, 3] = shift_mm
        return spatial.warp(volume, self.geometry, self.geometry, affine=affine)


@pytest.fixture(scope="module")
def pair(stroke) -> Pair:
    return Pair(stroke)


# --------------------------------------------------------------------------------------------
# Normalised mutual information


@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("sign", [1, -1])
def test_nmi_peaks_at_alignment_and_falls_with_the_shift(pair, axis, sign):
    nmi = [
        losses.normalised_mutual_information(pair.t1, pair.shifted(pair.t2, sign * s, axis)).item()
        for s in SHIFTS_MM
    ]
    assert all(1.0 < v < 2.0 for v in nmi)
    assert np.all(np.diff(nmi) < 0), f"NMI must fall with the shift, got {nmi}"
    assert nmi[0] - nmi[-1] > 0.05


def dense_parzen_nmi(fixed: torch.Tensor, moved: torch.Tensor, weight: torch.Tensor, bins: int) -> float:
    """Reference NMI: a Gaussian window at every one of the ``bins`` centres, FWHM one bin width."""
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    sigma = (1.0 / bins) / (2 * math.sqrt(2 * math.log(2)))

    def windows(values):
        return torch.exp(-0.5 * ((values.double().reshape(-1, 1) - centres) / sigma) ** 2)

    joint = (windows(fixed) * weight.double().reshape(-1, 1)).T @ windows(moved)
    joint = joint / joint.sum()

    def entropy(p):
        return -(p * torch.log(p + 1e-10)).sum()

    return ((entropy(joint.sum(1)) + entropy(joint.sum(0))) / entropy(joint)).item()


@pytest.mark.parametrize("bins", [32, 64])
def test_sparse_parzen_nmi_equals_the_dense_reference(pair, bins):
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(pair.t1.numel(), (20_000,), generator=generator)
    fixed = pair.t1.reshape(-1)[index]
    moved = pair.shifted(pair.t2, 3.0).reshape(-1)[index]
    weight = torch.rand(index.shape, generator=generator)
    sparse = losses.normalised_mutual_information(fixed[None], moved[None], weight[None], bins).item()
    assert sparse == pytest.approx(dense_parzen_nmi(fixed, moved, weight, bins), abs=1e-4)
    # values exactly at 0 and 1 (the clipped ends) are binned like the reference too
    ends = torch.tensor([[0.0, 1.0, 0.0, 0.5, 1.0, 0.25]])
    flipped = torch.tensor([[1.0, 0.0, 0.0, 0.5, 1.0, 0.75]])
    assert losses.normalised_mutual_information(ends, flipped, bins=bins).item() == pytest.approx(
        dense_parzen_nmi(ends, flipped, torch.ones(6), bins), abs=1e-4)


def test_nmi_ignores_points_of_zero_weight(pair):
    fixed = pair.t1.reshape(1, -1)
    moved = pair.t2.reshape(1, -1).clone()
    half = fixed.shape[1] // 2
    moved[:, half:] = torch.rand(1, fixed.shape[1] - half, generator=torch.Generator().manual_seed(1))
    weight = torch.zeros_like(fixed)
    weight[:, :half] = 1.0
    masked = losses.normalised_mutual_information(fixed, moved, weight).item()
    kept_only = losses.normalised_mutual_information(fixed[:, :half], moved[:, :half]).item()
    assert masked == pytest.approx(kept_only, abs=1e-6)
    assert losses.normalised_mutual_information(fixed, moved).item() < masked - 0.01


def test_nmi_is_batched():
    generator = torch.Generator().manual_seed(2)
    a = torch.rand(2, 5000, generator=generator)
    b = torch.stack([a[0], torch.rand(5000, generator=generator)])
    nmi = losses.normalised_mutual_information(a, b)
    assert nmi.shape == (2,)
    assert nmi[0] > 1.6 and nmi[1] < 1.05  # identical: high (the Parzen windows blur it below 2); independent ~1


# --------------------------------------------------------------------------------------------
# Other measures


def test_lncc_of_identical_images_is_about_one_and_falls_with_noise(pair):
    texture = torch.rand(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(3))
    assert losses.local_normalised_cross_correlation(texture, texture).item() > 0.99
    # on the brain the 1e-5 stabiliser damps near-flat tissue a little
    assert losses.local_normalised_cross_correlation(pair.t1, pair.t1, pair.brain).item() > 0.9
    generator = torch.Generator().manual_seed(4)
    lncc = [
        losses.local_normalised_cross_correlation(pair.t1, pair.t1 + s * torch.randn(pair.t1.shape, generator=generator), pair.brain).item()
        for s in (0.0, 0.05, 0.1, 0.2)
    ]
    assert np.all(np.diff(lncc) < -0.05), lncc


@pytest.mark.parametrize(
    "measure",
    [losses.mind_similarity, losses.parallel_level_sets, losses.local_normalised_cross_correlation],
    ids=["mind", "parallel level sets", "lncc"],
)
def test_multimodal_measures_prefer_the_aligned_pair(pair, measure):
    aligned = measure(pair.t1, pair.t2, pair.brain).item()
    for shift in (2.0, 6.0):
        assert measure(pair.t1, pair.shifted(pair.t2, shift, axis=1), pair.brain).item() < aligned


def test_mind_of_an_image_is_contrast_invariant(pair):
    """MIND describes local self-similarity: an intensity inversion leaves it unchanged."""
    assert losses.mind_similarity(pair.t1, 1 - pair.t1, pair.brain).item() == pytest.approx(1.0, abs=1e-6)
    assert losses.mind_similarity(pair.t1, pair.shifted(pair.t1, 4.0), pair.brain).item() < 0.99


def test_correlation_is_one_for_a_linear_relation():
    fixed = torch.rand(2, 1, 10, 12, generator=torch.Generator().manual_seed(5))
    for moved in (3 * fixed + 2, 1 - 0.5 * fixed):
        torch.testing.assert_close(losses.correlation_similarity(fixed, moved), torch.ones(2))
    independent = torch.rand(2, 1, 10, 12, generator=torch.Generator().manual_seed(6))
    assert losses.correlation_similarity(fixed, independent).max() < 0.1


def test_mean_squared_error_and_its_root():
    fixed = torch.zeros(1, 1, 4, 4)
    moved = torch.full((1, 1, 4, 4), 3.0)
    assert losses.mean_squared_error(fixed, moved).item() == pytest.approx(9.0)
    assert losses.root_mean_square_error(fixed, moved).item() == pytest.approx(3.0)


# --------------------------------------------------------------------------------------------
# Regularisers


@pytest.fixture(scope="module")
def grid() -> Geometry:
    return oblique_geometry(size=(20, 18, 14), spacing=(1.5, 1.0, 2.5))


def linear_field(geometry: Geometry, matrix: np.ndarray, offset=(1.0, -2.0, 3.0)) -> torch.Tensor:
    points = spatial.grid_points(geometry, dtype=torch.float64)
    return spatial.to_channels_first((points @ torch.as_tensor(matrix).T + torch.as_tensor(offset))[None])


MATRIX = np.array([[0.10, -0.05, 0.02], [0.03, 0.08, -0.04], [-0.02, 0.01, 0.06]])


def test_smoothness_of_constant_and_linear_fields(grid):
    constant = linear_field(grid, np.zeros((3, 3)))
    assert regularisers.diffusion(constant, grid).item() == pytest.approx(0.0, abs=1e-20)
    assert regularisers.bending_energy(constant, grid).item() == pytest.approx(0.0, abs=1e-20)
    linear = linear_field(grid, MATRIX)
    # |grad u|^2 = |M|_F^2 at every voxel, in physical units on an oblique anisotropic grid
    assert regularisers.diffusion(linear, grid).item() == pytest.approx(np.sum(MATRIX**2), rel=1e-9)
    assert regularisers.bending_energy(linear, grid).item() == pytest.approx(0.0, abs=1e-12)
    combined = regularisers.first_and_second_order(linear, grid, first=2.0, second=5.0).item()
    assert combined == pytest.approx(2 * np.sum(MATRIX**2), rel=1e-9)


def test_bending_energy_of_a_quadratic_field(grid):
    """u_x = a x^2 / 2 along the first axis direction: d2u/dx2 = a, the bending energy a^2 inside."""
    a = 0.02
    points = spatial.grid_points(grid, dtype=torch.float64)
    along = (points - torch.as_tensor(grid.centre)) @ torch.as_tensor(grid.direction[:, 0])
    field = spatial.to_channels_first((a * along[..., None] ** 2 / 2 * torch.as_tensor(grid.direction[:, 0]))[None])
    assert regularisers.bending_energy(field, grid).item() == pytest.approx(a**2, rel=0.2)
    assert regularisers.bending_energy(field, grid).item() > 0.5 * a**2


def folding_field(geometry: Geometry) -> torch.Tensor:
    """A tent along x whose rising side has du_x/dx = -2 (J = -1): folds a slab."""
    x = spatial.grid_points(geometry, dtype=torch.float64)[..., 0]
    centre = geometry.centre[0]
    field = torch.zeros(1, 3, *geometry.shape, dtype=torch.float64)
    field[0, 0] = torch.where((x - centre).abs() <= 5, -2.0 * (5 - (x - centre).abs()), torch.zeros_like(x))
    return field


def test_jacobian_penalty(grid):
    zero = torch.zeros(1, 3, *grid.shape, dtype=torch.float64)
    assert regularisers.jacobian_penalty(zero, grid).item() == pytest.approx(0.0, abs=1e-12)
    smooth = linear_field(grid, 0.1 * MATRIX)
    folded = folding_field(grid)
    assert spatial.jacobian_determinant(folded, grid).min() < 0
    assert regularisers.jacobian_penalty(folded, grid).item() > 100 * regularisers.jacobian_penalty(smooth, grid).item()
    assert regularisers.jacobian_penalty(folded, grid).item() > 10


def test_inverse_consistency_of_exp_v_and_exp_minus_v(grid):
    control = spatial.control_grid(grid, 15.0)
    coefficients = torch.from_numpy(np.random.default_rng(7).standard_normal((1, 3, *control.shape)))
    velocity = spatial.resample_field(spatial.bspline_to_dense(coefficients, 3), spatial.dense_grid(control, 3), grid)
    velocity = velocity * (3.0 / velocity.norm(dim=1).max())
    forward = spatial.integrate_velocity(velocity, grid)
    backward = spatial.integrate_velocity(-velocity, grid)
    assert regularisers.inverse_consistency(forward, backward, grid).item() < 0.01  # mm^2, of a 3 mm field
    assert regularisers.inverse_consistency(forward, forward, grid).item() > 1.0


# --------------------------------------------------------------------------------------------
# Gradients reach the transform


LOSSES = {
    "nmi": lambda f, m, w, u, g: losses.normalised_mutual_information(f, m, w),
    "lncc": lambda f, m, w, u, g: losses.local_normalised_cross_correlation(f, m, w),
    "mind": lambda f, m, w, u, g: losses.mind_similarity(f, m, w),
    "parallel level sets": lambda f, m, w, u, g: losses.parallel_level_sets(f, m, w),
    "correlation": lambda f, m, w, u, g: losses.correlation_similarity(f, m, w),
    "mse": lambda f, m, w, u, g: losses.mean_squared_error(f, m, w),
    "diffusion": lambda f, m, w, u, g: regularisers.diffusion(u, g),
    "bending": lambda f, m, w, u, g: regularisers.bending_energy(u, g),
    "jacobian": lambda f, m, w, u, g: regularisers.jacobian_penalty(u, g),
    "inverse consistency": lambda f, m, w, u, g: regularisers.inverse_consistency(u, u, g),
}


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_flow_to_the_displacement(pair, name):
    geometry = pair.geometry
    crop = (slice(None), slice(None), slice(10, 40), slice(20, 60), slice(15, 55))
    fixed, moving, weight = pair.t1[crop], pair.t2[crop], pair.brain[crop]
    box = Geometry(fixed.shape[:1:-1], geometry.spacing, tuple(geometry.physical_points(np.array([15.0, 20.0, 10.0]))), geometry.direction)
    start = 0.5 * torch.randn(1, 3, *box.shape, generator=torch.Generator().manual_seed(8))
    displacement = start.clone().requires_grad_(True)
    moved = spatial.warp(moving, box, box, displacement=displacement)
    loss = LOSSES[name](fixed, moved, weight, displacement, box).sum()
    loss.backward()
    grad = displacement.grad
    assert torch.isfinite(loss) and torch.all(torch.isfinite(grad))
    assert grad.abs().max() > 0
