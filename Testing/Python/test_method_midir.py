"""MIDIR (003_2f2aa96e65959a3c.txt): B-spline velocity network, scaling and squaring, NMI/LNCC.

On the stroke known-warp pairs (``stroke_batches``): output shapes and gradient flow in 2D and
3D, the paper's loss terms, the B-spline geometry (eq. 6 evaluated exactly on the model grid),
the identity for a zero velocity, and brief training in 2D: the loss falls, the registration
beats the identity, the field does not fold and ``exp(-v)`` inverts ``exp(v)``.

Models use fewer channels than the paper's (8/16 instead of 16/32) so the file runs in seconds."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_gradients_reach, mean_loss

from dmmreg import spatial
from dmmreg.errors import InputError
from dmmreg.methods.learned import warp_on_grid
from dmmreg.methods.midir import Midir, MidirConfig
from dmmreg.training.trainer import endpoint_error, train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(encoder_channels=(8, 16, 16, 16, 16), decoder_channels=(16, 16, 16, 16), resize_channels=(16, 16))
SPACING_MM = {2: 2.0, 3: 4.0}  # those of the stroke_batches fixture
# The 2D slice has 7680 voxels, 3840 sampled per step: at the paper's 64 bins (for 3D brains of
# millions of voxels) that is under one sample per joint-histogram bin and the NMI gradient is
# noise (measured: no progress in 300 steps); 32 bins (the paper's for SVFFD on its 2D cardiac
# images, appendix C) learn.  Learning rate 1e-3 instead of 1e-4 to train in 100 steps.
BRIEF_TRAINING = {"nmi": dict(bins=32, learning_rate=1e-3), "lncc": dict(similarity="lncc", learning_rate=1e-3)}
STEPS = 100


def small_model(dim: int, **settings) -> Midir:
    torch.manual_seed(0)
    return Midir(MidirConfig(dim=dim, spacing_mm=SPACING_MM[dim], **SMALL, **settings))


def test_default_config_is_the_papers_and_round_trips():
    config = MidirConfig()
    assert (config.control_spacing_voxels, config.regularisation_weight, config.similarity) == (2, 0.1, "nmi")
    assert (config.bins, config.nmi_sample_fraction, config.lncc_window, config.learning_rate) == (64, 0.5, 7, 1e-4)
    assert config.encoder_channels == (16, 32, 32, 32, 32) and config.resize_channels == (32, 32)
    assert MidirConfig.from_dict(asdict(config)) == config
    with pytest.raises(InputError, match="similarity must be one of"):
        Midir(MidirConfig(similarity="mse"))
    with pytest.raises(InputError, match="network_inputs must be one of"):
        Midir(MidirConfig(network_inputs="gradients"))
    with pytest.raises(InputError, match="control_spacing_voxels must be 1 .. 16"):
        Midir(MidirConfig(control_spacing_voxels=17))


@pytest.mark.parametrize("dim, similarity", [(2, "nmi"), (2, "lncc"), (3, "nmi")])
def test_outputs_loss_terms_and_gradients(dim, similarity, stroke_batches):
    batch = stroke_batches[dim]
    model = small_model(dim, similarity=similarity)
    control = model.control_grid(batch.geometry)
    coefficients = model.network(torch.cat([batch.fixed, batch.moving], dim=1), control.shape)
    assert coefficients.shape == (1, dim, *control.shape)

    prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
    field_shape = (1, dim, *batch.geometry.shape)
    assert prediction.displacement.shape == field_shape and prediction.inverse_displacement.shape == field_shape
    assert prediction.affine is None and prediction.inverse_affine is None and prediction.synthesised == {}

    terms = model.loss_terms(batch, "train")
    assert set(terms) == {"similarity", "regularisation", "total"}
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    low, high = (-2.0, -1.0) if similarity == "nmi" else (-1.0, 0.0)  # -NMI in [-2, -1], -LNCC in [-1, 0]
    assert low <= terms["similarity"].item() <= high and terms["regularisation"].item() >= 0
    torch.testing.assert_close(terms["total"], terms["similarity"] + 0.1 * terms["regularisation"])
    assert_gradients_reach(model, terms["total"])


@pytest.mark.parametrize("dim", [2, 3])
def test_velocity_is_the_bspline_sum_at_every_model_voxel(dim, stroke_batches):
    """Eq. 6 evaluated directly at model voxels equals the transposed-convolution field."""
    geometry = stroke_batches[dim].geometry  # the 3D one is oblique
    model = small_model(dim)
    delta = model.config.control_spacing_voxels
    control = model.control_grid(geometry)
    dense = spatial.dense_grid(control, delta)
    assert dense.spacing == geometry.spacing and np.allclose(dense.direction, geometry.direction)
    np.testing.assert_allclose(dense.origin, geometry.origin, atol=1e-9)
    assert all(n <= m < n + delta for n, m in zip(geometry.size, dense.size))

    torch.manual_seed(1)
    coefficients = torch.randn(1, dim, *control.shape, dtype=torch.float64)
    velocity = model.dense_velocity(coefficients, geometry)
    # the corner voxels and random ones: continuous control-grid index t, weights prod_d beta(t_d - c_d)
    voxels = np.concatenate([np.asarray(np.meshgrid(*[[0, n - 1] for n in geometry.size])).reshape(dim, -1).T,
                             np.random.default_rng(0).integers(0, geometry.size, (100, dim))])
    t = torch.as_tensor(geometry.physical_points(voxels.astype(float)) @ control.physical_to_index[:dim, :dim].T
                        + control.physical_to_index[:dim, dim])
    axes = [torch.arange(n, dtype=torch.float64) for n in control.shape]
    c = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1)  # (x, y, z) index of every control point
    weights = spatial.cubic_bspline(t[:, None, :] - c.reshape(1, -1, dim)).prod(dim=-1)  # (voxels, control points)
    direct_voxels = weights @ coefficients.reshape(dim, -1).T  # (voxels, dim), index units
    direct = direct_voxels @ torch.as_tensor(geometry.index_to_physical[:dim, :dim]).T
    at_voxels = velocity[0][(slice(None), *torch.as_tensor(voxels[:, ::-1].copy()).T)].T  # (voxels, dim)
    torch.testing.assert_close(at_voxels, direct, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dim", [2, 3])
def test_zero_velocity_gives_the_moving_image_exactly(dim, stroke_batches):
    batch = stroke_batches[dim]
    model = small_model(dim)
    with torch.no_grad():
        model.network.head.weight.zero_()
        model.network.head.bias.zero_()
        prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
        moved = warp_on_grid(batch.moving, batch.geometry, prediction.displacement)
    assert torch.count_nonzero(prediction.displacement) == 0
    assert torch.count_nonzero(prediction.inverse_displacement) == 0
    torch.testing.assert_close(moved, batch.moving, rtol=0, atol=1e-5)  # float32 rounding of the sample points
    # the public code's convention (a linspace(-1, 1) identity grid sampled with align_corners=False)
    # would fail this by far: it scales the image by (n - 1) / n about the centre
    identity = torch.eye(dim, dim + 1)[None]
    grid = F.affine_grid(identity, list(batch.moving.shape), align_corners=True)
    public_code = F.grid_sample(batch.moving, grid, align_corners=False)
    assert float((public_code - batch.moving).abs().max()) > 1e-2


@pytest.fixture(scope="module", params=["nmi", "lncc"])
def trained(request, stroke_batches):
    """A small 2D model briefly trained on the 2D known-warp pair: ``(model, history, batch)``."""
    batch = stroke_batches[2]
    model = small_model(2, **BRIEF_TRAINING[request.param])
    history = train(model, lambda step: batch, STEPS)
    return model, history, batch


def test_brief_training_lowers_the_loss_and_beats_the_identity(trained):
    model, history, batch = trained
    first, last = mean_loss(history, "train", True), mean_loss(history, "train", False)
    before, after = endpoint_error(model, batch)
    print(f"{model.config.similarity}: loss {first:.4f} -> {last:.4f}, EPE {before:.2f} -> {after:.2f} mm, "
          f"{history[-1]['seconds']:.1f} s")
    # measured: NMI -1.080 -> -1.109, EPE 11.1 -> 4.8 mm; LNCC -0.081 -> -0.192, 11.1 -> 3.3 mm
    assert last < first - 0.01
    assert after < 0.6 * before


def test_trained_field_is_diffeomorphic(trained):
    model, _, batch = trained
    with torch.no_grad():
        prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
    determinant = spatial.jacobian_determinant(prediction.displacement, batch.geometry)
    print(f"Jacobian determinant {float(determinant.min()):.3f} .. {float(determinant.max()):.3f}")
    assert float(prediction.displacement.norm(dim=1).max()) > 5, "a trivial field proves nothing"
    assert float(determinant.min()) > 0, "the predicted transformation folds"


def test_exp_of_minus_v_inverts_exp_of_v(trained):
    model, _, batch = trained
    geometry = batch.geometry
    with torch.no_grad():
        prediction = model.predict(batch.fixed, batch.moving, geometry)
    u, w = prediction.displacement, prediction.inverse_displacement
    magnitude = float(u.norm(dim=1).mean())
    assert magnitude > 5, "a trivial field proves nothing"  # measured 11.1 mm (NMI), 7.9 mm (LNCC)
    for residual in (spatial.compose(u, w, geometry), spatial.compose(w, u, geometry)):
        error = residual.norm(dim=1)[0]  # |exp(v)(exp(-v)(p)) - p| and the reverse, mm
        inside = error[4:-4, 4:-4]  # away from the border, where the fields are edge-clamped
        print(f"|u| {magnitude:.2f} mm, residual mean {float(error.mean()):.4f} mm, "
              f"max inside {float(inside.max()):.3f} mm")
        # measured: mean <= 0.062 mm, max inside <= 0.061 mm (2 mm voxels)
        assert float(error.mean()) < 0.1
        assert float(inside.max()) < 0.2


def _input_sensitivity(model: Midir, shape: tuple[int, int], control_point: tuple[int, int]) -> np.ndarray:
    """|d velocity(control_point) / d input| summed over both input channels and both outputs,
    with every weight made positive so that the receptive field has no sign cancellations."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.abs_().add_(1e-3)
    fixed = torch.ones(1, 1, *shape, requires_grad=True)
    moving = torch.ones(1, 1, *shape, requires_grad=True)
    control_shape = model.control_grid(spatial_geometry(shape)).shape
    velocity = model.network(torch.cat([fixed, moving], dim=1), control_shape)
    velocity[0, :, control_point[0], control_point[1]].sum().backward()
    return (fixed.grad.abs() + moving.grad.abs())[0, 0].numpy()


def spatial_geometry(shape):
    from dmmreg.geometry import Geometry

    return Geometry(tuple(reversed(shape)), (2.0, 2.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))


@pytest.mark.parametrize("delta, feature_level", [(4, None), (8, None), (8, 0), (4, 1)])
def test_a_control_point_reads_the_features_of_its_own_position(delta, feature_level):
    """Control point k sits on model voxel (k - 1) * delta; the input voxels its velocity depends
    on are centred there (within half a voxel), at the paper's decoder level and finer ones."""
    model = small_model(2, control_spacing_voxels=delta, feature_level=feature_level)
    shape = (64, 64)
    point = (64 // delta // 2 + 1, 64 // delta // 2 + 1)  # the control point on voxel 32 (or its neighbour)
    sensitivity = _input_sensitivity(model, shape, point)
    centre = [float((sensitivity.sum(axis=1 - axis) * np.arange(n)).sum() / sensitivity.sum())
              for axis, n in enumerate(shape)]
    assert centre == pytest.approx([(point[0] - 1) * delta, (point[1] - 1) * delta], abs=0.5)


def test_the_decoder_can_reach_full_resolution_for_coarse_control_grids():
    """delta 8: the paper's decoder stops at 1/8 resolution; feature_level 0 decodes every level
    up to the model grid and the control points average the features of their cells."""
    paper, full = small_model(2, control_spacing_voxels=8), small_model(2, control_spacing_voxels=8, feature_level=0)
    assert (paper.network.unet.reduction, full.network.unet.reduction) == (8, 1)
    assert len(full.network.unet.decoder) == len(SMALL["encoder_channels"]) - 1
    x = torch.rand(1, 1, 32, 48)
    assert full.network.unet(torch.cat([x, x], dim=1)).shape[2:] == x.shape[2:]
    with pytest.raises(InputError, match="feature_level must be 0 .. 3"):
        Midir(MidirConfig(control_spacing_voxels=8, feature_level=4))


@pytest.mark.parametrize("dim", [2, 3])
def test_mind_inputs_give_the_same_velocity_for_any_linear_contrast(dim, stroke_batches):
    """With ``network_inputs="mind"`` the network sees MIND-SSC descriptors: a contrast change
    ``a I + b`` (inversion included) of either image leaves the prediction unchanged, while the
    intensity network's changes; gradients reach the weights."""
    batch = stroke_batches[dim]
    model = small_model(dim, network_inputs="mind")
    velocity = model.velocity(batch.fixed, batch.moving, batch.geometry)
    recontrasted = model.velocity(3 * batch.fixed + 1, 1 - 0.5 * batch.moving, batch.geometry)
    assert velocity.abs().max() > 0
    assert torch.allclose(velocity, recontrasted, atol=1e-4 * velocity.abs().max().item())
    intensity = small_model(dim)
    changed = intensity.velocity(1 - 0.5 * batch.fixed, batch.moving, batch.geometry)
    assert not torch.allclose(intensity.velocity(batch.fixed, batch.moving, batch.geometry), changed)
    assert_gradients_reach(model, model.loss_terms(batch)["total"])
