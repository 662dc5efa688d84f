"""dmmreg.spatial against analytic answers and SimpleITK, on oblique and anisotropic grids."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import affine_about_centre, oblique_geometry, physical_coordinates, sitk_resample

from dmmreg import spatial
from dmmreg.geometry import Geometry
from dmmreg.result import RegistrationResult


def as_volume(array: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64)).to(dtype)[None, None]


def as_field(points_like: np.ndarray) -> torch.Tensor:
    """``(*shape, dim)`` array -> ``(1, dim, *shape)`` float64 tensor."""
    return spatial.to_channels_first(torch.tensor(points_like, dtype=torch.float64)[None])


def interior(geometry: Geometry, border: int) -> tuple[slice, ...]:
    return tuple(slice(border, n - border) for n in geometry.shape)


def smooth_field(geometry: Geometry, magnitude_mm: float, seed: int = 0, control_spacing_mm: float = 30.0) -> torch.Tensor:
    """A smooth random field ``(1, dim, *shape)`` on ``geometry`` whose largest vector is ``magnitude_mm``."""
    control = spatial.control_grid(geometry, control_spacing_mm)
    coefficients = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, geometry.dim, *control.shape)))
    field = spatial.resample_field(spatial.bspline_to_dense(coefficients, 4), spatial.dense_grid(control, 4), geometry)
    return field * (magnitude_mm / field.norm(dim=1).max())


@pytest.fixture(scope="module")
def grid_3d() -> Geometry:
    """Oblique, anisotropic 3D grid of about 80 x 80 x 60 mm."""
    return oblique_geometry(size=(40, 54, 24), spacing=(2.0, 1.5, 2.5))


# --------------------------------------------------------------------------------------------
# Identity and affine resampling


@pytest.fixture(params=["2D oblique", "3D oblique", "3D stroke"])
def image_on_grid(request, stroke):
    if request.param == "3D stroke":
        return stroke["T1"].array, stroke["T1"].geometry
    size = (37, 29) if request.param == "2D oblique" else (23, 19, 11)
    geometry = oblique_geometry(size=size, spacing=(0.9, 1.7, 3.0)[: len(size)])
    return np.random.default_rng(0).uniform(0, 100, geometry.shape), geometry


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_displacement_returns_the_input(image_on_grid, dtype):
    array, geometry = image_on_grid
    volume = as_volume(array, dtype)
    zero = torch.zeros(1, geometry.dim, *geometry.shape, dtype=dtype)
    for out in (spatial.warp(volume, geometry, geometry, displacement=zero),
                spatial.warp(volume, geometry, geometry, affine=np.eye(geometry.dim + 1))):
        assert out.dtype == dtype and out.shape == volume.shape
        error = (out - volume).abs().max().item()
        if dtype == torch.float64:
            assert error < 1e-9
        else:
            assert error < 1e-5 * (array.max() - array.min())


def test_affine_warp_matches_simpleitk_resample(stroke):
    moving = stroke["T1"]
    geometry = moving.geometry
    affine = affine_about_centre(geometry, [4.0, -6.0, 3.0], [0.08, -0.05, 0.12], [1.05, 0.93, 1.1], [0.05, -0.03, 0.02])
    # fixed grid: coarser, anisotropic and with another obliquity
    fixed = Geometry((70, 90, 40), (2.0, 1.7, 3.2), tuple(np.add(geometry.origin, (-5.0, 3.0, 2.0))),
                     oblique_geometry().direction @ geometry.direction)
    ours = spatial.warp(as_volume(moving.array), geometry, fixed, affine=affine)[0, 0].numpy()

    transform = sitk.AffineTransform(tuple(affine[:3, :3].ravel()), tuple(affine[:3, 3]))
    expected = sitk_resample(moving, fixed, transform)

    # compare where the mapped point is at least one voxel inside the moving grid
    mapped = physical_coordinates(fixed) @ affine[:3, :3].T + affine[:3, 3]
    index = mapped @ geometry.physical_to_index[:3, :3].T + geometry.physical_to_index[:3, 3]
    inside = np.all((index >= 1) & (index <= np.asarray(geometry.size) - 2), axis=-1)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-6 * moving.array.max())


# --------------------------------------------------------------------------------------------
# Diffeomorphisms: exponential and inverse


def test_exp_of_v_composed_with_exp_of_minus_v_is_the_identity(grid_3d):
    velocity = smooth_field(grid_3d, magnitude_mm=4.0)
    forward = spatial.integrate_velocity(velocity, grid_3d, steps=7)
    backward = spatial.integrate_velocity(-velocity, grid_3d, steps=7)
    assert forward.norm(dim=1).max() > 2.5
    inside = interior(grid_3d, 3)
    for inner, outer in ((forward, backward), (backward, forward)):
        residual = spatial.compose(inner, outer, grid_3d).norm(dim=1)[0]
        assert residual[inside].max() < 0.05


def test_numerical_inverse_undoes_the_displacement(grid_3d):
    displacement = smooth_field(grid_3d, magnitude_mm=4.0, seed=1)
    inverse = spatial.invert_displacement(displacement, grid_3d)
    inside = interior(grid_3d, 3)
    for inner, outer in ((displacement, inverse), (inverse, displacement)):
        residual = spatial.compose(inner, outer, grid_3d).norm(dim=1)[0][inside]
        assert residual.max() < 0.1 and residual.mean() < 0.02  # of a 4 mm field
    # the inverse is not the negated field (that would be off by the field's own variation)
    assert spatial.compose(displacement, -displacement, grid_3d).norm(dim=1)[0][inside].max() > 0.2


# --------------------------------------------------------------------------------------------
# Cubic B-splines


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("stride", [1, 2, 5])
def test_bspline_weights_sum_to_one(dim, stride):
    ones = torch.ones(1, 2, *([6, 7, 5][:dim]), dtype=torch.float64)
    dense = spatial.bspline_to_dense(ones, stride)
    assert dense.shape[2:] == tuple((n - 3) * stride + 1 for n in ones.shape[2:])
    torch.testing.assert_close(dense, torch.ones_like(dense), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_single_control_point_gives_the_separable_bspline_bump(dim):
    stride = 4
    control_index = np.array([5, 6, 4][:dim])  # (z, y, x) array order
    coefficients = torch.zeros(1, 1, *([11, 12, 10][:dim]), dtype=torch.float64)
    coefficients[(0, 0, *control_index)] = 1.0
    dense = spatial.bspline_to_dense(coefficients, stride)[0, 0].numpy()
    centre = (control_index - 1) * stride  # control point k sits at dense index (k - 1) * stride
    assert dense.max() == pytest.approx((2 / 3) ** dim)
    assert tuple(np.argwhere(dense == dense.max())[0]) == tuple(centre)
    profiles = [
        spatial.cubic_bspline(torch.arange(n, dtype=torch.float64) / stride - c / stride).numpy()
        for n, c in zip(dense.shape, centre)
    ]
    expected = profiles[0][:, None] * profiles[1][None, :]
    if dim == 3:
        expected = expected[..., None] * profiles[2][None, None, :]
    np.testing.assert_allclose(dense, expected, atol=1e-12)
    # support: |offset| < 2 control spacings along every axis
    nonzero = np.argwhere(dense > 0)
    np.testing.assert_array_equal(nonzero.min(axis=0), centre - 2 * stride + 1)
    np.testing.assert_array_equal(nonzero.max(axis=0), centre + 2 * stride - 1)


def test_control_points_sit_on_the_dense_grid_and_cover_the_image(grid_3d):
    control = spatial.control_grid(grid_3d, 20.0)
    dense = spatial.dense_grid(control, 4)
    k = np.array([2.0, 3.0, 1.0])  # a control point, index (x, y, z)
    np.testing.assert_allclose(dense.physical_points((k - 1) * 4), control.physical_points(k), atol=1e-9)
    # every image corner is inside the dense grid
    corners = grid_3d.corners @ dense.physical_to_index[:3, :3].T + dense.physical_to_index[:3, 3]
    assert np.all(corners >= -1e-9) and np.all(corners <= np.asarray(dense.size) - 1 + 1e-9)


# --------------------------------------------------------------------------------------------
# Jacobians


AFFINE = dict(shift=[3.0, -2.0, 1.0], angles=[0.1, 0.05, -0.2], scales=[1.1, 0.9, 1.2], shear=[0.1, 0.0, -0.05])


def test_jacobian_determinant_of_an_affine_is_its_determinant(grid_3d):
    affine = affine_about_centre(grid_3d, **AFFINE)
    expected = np.linalg.det(affine[:3, :3])
    assert expected == pytest.approx(1.1 * 0.9 * 1.2)
    zero = torch.zeros(1, 3, *grid_3d.shape, dtype=torch.float64)
    np.testing.assert_allclose(spatial.jacobian_determinant(zero, grid_3d, affine).numpy(), expected, rtol=1e-12)
    # the same map written as a displacement field A(p) - p: one-sided differences at the
    # border are exact for a linear field, so J = det(A) on every voxel
    points = physical_coordinates(grid_3d)
    linear_field = as_field(points @ affine[:3, :3].T + affine[:3, 3] - points)
    np.testing.assert_allclose(spatial.jacobian_determinant(linear_field, grid_3d).numpy(), expected, rtol=1e-10)


def test_result_jacobian_of_an_affine_only_result_is_its_determinant(grid_3d):
    affine = affine_about_centre(grid_3d, **AFFINE)
    det = RegistrationResult(grid_3d, grid_3d, affine).jacobian_determinant()
    assert det.geometry == grid_3d
    np.testing.assert_allclose(det.array, np.linalg.det(affine[:3, :3]), rtol=1e-5)


def test_translation_has_unit_jacobian(grid_3d):
    translation = as_field(np.broadcast_to([7.0, -3.0, 12.5], (*grid_3d.shape, 3)))
    np.testing.assert_allclose(spatial.jacobian_determinant(translation, grid_3d).numpy(), 1.0, atol=1e-12)


def test_spatial_gradient_is_physical(grid_3d):
    """The gradient of f(p) = c . p is c on an oblique, anisotropic grid."""
    c = np.array([0.3, -1.2, 2.0])
    f = as_volume(physical_coordinates(grid_3d) @ c)
    gradient = spatial.spatial_gradient(f, grid_3d)[0, 0]
    np.testing.assert_allclose(gradient.reshape(3, -1).numpy(), np.broadcast_to(c[:, None], (3, gradient[0].numel())), atol=1e-10)


# --------------------------------------------------------------------------------------------
# Smoothing and resampling


@pytest.mark.parametrize("shape, sigma", [((1, 3, 12, 15), (1.5, 0.7)), ((2, 1, 9, 12, 15), (2.0, 0.0, 1.2))])
def test_gaussian_smooth_preserves_constants(shape, sigma):
    constant = torch.full(shape, 3.25, dtype=torch.float64)
    torch.testing.assert_close(spatial.gaussian_smooth(constant, sigma), constant, atol=1e-12, rtol=0)


@pytest.mark.parametrize("target_kind", ["coarser", "rotated"])
def test_resample_image_preserves_a_linear_ramp(grid_3d, target_kind):
    c, offset = np.array([0.5, -0.8, 1.3]), 10.0
    ramp = as_volume(physical_coordinates(grid_3d) @ c + offset)
    if target_kind == "coarser":
        target = grid_3d.with_spacing(4.0)
    else:
        target = Geometry((30, 30, 20), (1.2, 1.2, 1.2), tuple(grid_3d.centre - 15.0),
                          oblique_geometry().direction.T @ grid_3d.direction)
    out = spatial.resample_image(ramp, grid_3d, target)[0, 0].numpy()
    points = physical_coordinates(target)
    # away from the source border (where smoothing pads by replication) the ramp is exact
    index = points @ grid_3d.physical_to_index[:3, :3].T + grid_3d.physical_to_index[:3, 3]
    keep = np.all((index >= 4) & (index <= np.asarray(grid_3d.size) - 5), axis=-1)
    assert keep.mean() > 0.2
    np.testing.assert_allclose(out[keep], (points @ c + offset)[keep], atol=1e-9)


def test_inside_weight_equals_sampling_an_image_of_ones():
    geometry = oblique_geometry()
    rng = np.random.default_rng(0)
    index = rng.uniform(-2, np.asarray(geometry.size) + 1, size=(1, 500, 3))
    points = torch.from_numpy(geometry.physical_points(index))
    ones = torch.ones(1, 1, *geometry.shape, dtype=torch.float64)
    expected = spatial.sample(ones, geometry, points)[:, 0]
    torch.testing.assert_close(spatial.inside_weight(points, geometry), expected, atol=1e-9, rtol=0)
    assert 0 < float((expected == 0).double().mean()) < 1  # points inside, on the ramps and outside
