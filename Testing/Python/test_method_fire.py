"""FIRE (dmmreg.methods.fire, 000_9877b33c2dcaa129.txt) on the real stroke known-warp pairs:
outputs and gradients in 2D and 3D, the paper's loss terms and settings, its normalised STN
coordinates, brief training, and the effect of its inverse-consistency loss (eq. 8)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_gradients_reach, mean_loss

from dmmreg import spatial
from dmmreg.methods import method_class
from dmmreg.methods.fire import Fire, FireConfig, affine_from_normalised, normalised_to_mm
from dmmreg.methods.learned import TrainingBatch, compose_maps, warp_on_grid
from dmmreg.training.trainer import endpoint_error, train

# fewer channels and residual blocks than the paper, so one 2D update takes ~0.13 s of one core
SMALL = dict(synthesis_channels=(4, 8, 16), resnet_blocks=1, nonrigid_channels=8)
# 100 updates instead of 144,000: the paper's rates (1e-5, 5e-5, 1e-4) scaled up, the affine
# part most; with the paper's ratios the fast non-rigid part learns noise while the synthesis
# is still meaningless, and the 100 steps end in a transient
BRIEF_RATES = dict(learning_rate_affine=1e-3, learning_rate_nonrigid=5e-4, learning_rate_synthesis=3e-3)
STEPS = 100
PAPER_TERMS = ("synthesis_accuracy", "synthesis_feature", "synthesis_cycle", "synthesis_alignment",
               "registration_accuracy", "inverse_consistency", "synthesis_regularisation",
               "registration_regularisation", "bending_energy")


def small_fire(dim: int, **settings) -> Fire:
    """A seeded small FIRE on the test grids (2 mm in 2D, 4 mm in 3D)."""
    torch.manual_seed(0)
    return Fire(FireConfig(dim=dim, spacing_mm=2.0 if dim == 2 else 4.0, **SMALL, **settings))


def centre_crop(batch: TrainingBatch, margin_mm: float) -> TrainingBatch:
    """The batch on its grid shrunk by ``margin_mm`` on every side (exact voxels, same spacing)."""
    geometry = batch.geometry.with_margin(-margin_mm)
    crop = lambda t: spatial.resample_image(t, batch.geometry, geometry, mode="nearest")  # noqa: E731
    return TrainingBatch(crop(batch.fixed), crop(batch.moving), geometry, crop(batch.fixed_mask), crop(batch.moving_mask))


def inverse_consistency_error(model: Fire, batch: TrainingBatch) -> float:
    """Mean ``|phi_BA(phi_AB(p)) - p|`` (mm) over the fixed mask: the predicted forward map
    followed by the predicted inverse."""
    with torch.no_grad():
        p = model.predict(batch.fixed, batch.moving, batch.geometry)
        back = compose_maps(p.affine, p.displacement, p.inverse_affine, p.inverse_displacement, batch.geometry)
        points = spatial.grid_points(batch.geometry)
        return float((back - points).norm(dim=-1)[batch.fixed_mask[:, 0] > 0].mean())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(stroke_batches):
    """The small FIRE with the paper's loss (inverse-consistency weight 1) after STEPS updates
    on the 2D pair: ``(model, history)``."""
    batch = stroke_batches[2]
    model = small_fire(2, **BRIEF_RATES)
    return model, train(model, lambda step: batch, STEPS)


def test_defaults_are_the_papers_settings():
    config = FireConfig()
    # sec. 3.8: three Adam optimisers, affine 1e-5, non-rigid 5e-5, G/F 1e-4
    assert (config.learning_rate_affine, config.learning_rate_nonrigid, config.learning_rate_synthesis) == (1e-5, 5e-5, 1e-4)
    assert config.inverse_consistency_weight == 1.0
    assert FireConfig.from_dict(asdict(config)) == config
    assert method_class("fire") is Fire and Fire.predicts_affine
    model = Fire(FireConfig(dim=2))
    # sec. 3.2: G = (7x7, 64), (3x3, 128) and (3x3, 256) stride 2, four residual blocks of 256
    assert model.encoder[0][0].weight.shape == (64, 1, 7, 7)
    assert model.encoder[2][0].weight.shape == (256, 128, 3, 3) and model.encoder[2][0].stride == (2, 2)
    assert len(model.encoder) == 3 + 4 and len(model.decoder_ab.residual) == 4
    # F ends in a (7x7, 3) block and a 1x1 convolution to the image
    assert model.decoder_ba.image_block[0].weight.shape == (3, 64, 7, 7) and model.decoder_ba.to_image.weight.shape == (1, 3, 1, 1)
    optimisers = model.make_optimisers("train")
    assert [o.param_groups[0]["lr"] for o in optimisers] == [1e-5, 5e-5, 1e-4]
    groups = [{id(p) for p in o.param_groups[0]["params"]} for o in optimisers]
    assert sum(map(len, groups)) == len(set().union(*groups)) == len(list(model.parameters()))
    assert {id(p) for p in model.transform_ab.affine.parameters()} <= groups[0]
    assert {id(p) for p in model.transform_ba.nonrigid.parameters()} <= groups[1]
    assert {id(p) for p in model.encoder.parameters()} <= groups[2]


@pytest.mark.parametrize("dim", [2, 3])
def test_outputs_loss_terms_and_gradients(stroke_batches, dim):
    batch = stroke_batches[dim] if dim == 2 else centre_crop(stroke_batches[3], 32.0)  # 3D: 32^3 voxels
    model = small_fire(dim)
    shape = tuple(batch.fixed.shape[2:])
    with torch.no_grad():
        prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
    for field in (prediction.displacement, prediction.inverse_displacement):
        assert field.shape == (1, dim, *shape)
        assert field.abs().max() < 0.5  # mm: the heads start near zero, an untrained FIRE is ~identity
    for matrix in (prediction.affine, prediction.inverse_affine):
        assert matrix.shape == (1, dim + 1, dim + 1)
        torch.testing.assert_close(matrix[0], torch.eye(dim + 1), atol=0.05, rtol=0)  # 0.05 mm of shift at most
    assert set(prediction.synthesised) == {"moving_in_fixed_contrast", "fixed_in_moving_contrast"}
    for image in prediction.synthesised.values():
        assert image.shape == (1, 1, *shape) and 0 <= image.min() and image.max() <= 1

    terms = model.loss_terms(batch, "train")
    assert set(terms) == {*PAPER_TERMS, "total"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    assert terms["total"] > terms["synthesis_accuracy"] > 0
    assert_gradients_reach(model, terms["total"])  # one stage: all of G, both F, both T


def test_stn_coordinates_match_grid_sample(stroke_batches):
    """The affine outputs are an STN matrix, and the Tanh output a displacement, on the
    normalised coordinates [-1, 1] of the grid (sec. 3.3), as ``affine_grid``/``grid_sample``."""
    batch = stroke_batches[3]  # an oblique 3D grid
    geometry, image = batch.geometry, batch.moving
    generator = torch.Generator().manual_seed(1)
    parameters = 0.1 * torch.randn(1, 12, generator=generator)
    theta = torch.cat([torch.eye(3) + parameters[:, :9].reshape(1, 3, 3), parameters[:, 9:, None]], dim=2)
    expected = F.grid_sample(image, F.affine_grid(theta, image.shape, align_corners=True), align_corners=True, padding_mode="border")
    ours = warp_on_grid(image, geometry, displacement=None, affine=affine_from_normalised(parameters, geometry))
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)

    normalised = 0.05 * torch.randn(1, 3, *image.shape[2:], generator=generator)
    identity = F.affine_grid(torch.eye(3, 4)[None], image.shape, align_corners=True)
    expected = F.grid_sample(image, identity + spatial.to_channels_last(normalised), align_corners=True, padding_mode="border")
    ours = warp_on_grid(image, geometry, normalised_to_mm(normalised, geometry))
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_brief_training_lowers_the_loss_and_registers(trained, stroke_batches):
    model, history = trained
    first, last = mean_loss(history, "train", first=True), mean_loss(history, "train", first=False)
    assert last < 0.35 * first  # measured: 7.8 -> 1.7
    for term in ("synthesis_accuracy", "registration_accuracy", "registration_regularisation"):
        assert mean_loss(history, "train", False, key=term) < 0.6 * mean_loss(history, "train", True, key=term)
    before, after = endpoint_error(model, stroke_batches[2])
    assert after < 0.7 * before  # measured: 11.1 -> 5.6 mm


def test_inverse_consistency_loss_makes_the_two_maps_inverse(trained, stroke_batches):
    """Eq. 8 trained with weight 1 (the paper) vs 0, same seed and steps: phi_BA o phi_AB is
    much closer to the identity with it."""
    batch = stroke_batches[2]
    with_loss = inverse_consistency_error(trained[0], batch)
    without = small_fire(2, **BRIEF_RATES, inverse_consistency_weight=0.0)
    train(without, lambda step: batch, STEPS)
    without_loss = inverse_consistency_error(without, batch)
    assert with_loss < 0.4 * without_loss  # measured: 0.6 vs 4.5 mm
    assert with_loss < 1.5  # mm, on a 2 mm grid
