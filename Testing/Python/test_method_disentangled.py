"""The ``disentangled`` method (Wu & Zhou, 002_0584f023bf238d80.txt) on real stroke slices: its
outputs and gradients in 2D and 3D, the paper's loss terms and settings, the two training stages
(the disentangling model trained adversarially, then frozen while R learns), and that brief
training disentangles content from contrast and registers a known-warp pair.

The models are the paper's networks with fewer channels and layers, so they train on a CPU."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict

import pytest
import torch
from conftest import assert_gradients_reach, mean_loss, stroke_slice_2d

from dmmreg import spatial
from dmmreg.errors import InputError
from dmmreg.methods.disentangled import Disentangled, DisentangledConfig
from dmmreg.methods.learned import TrainingBatch, image_tensor, onto_model_grid, warp_on_grid
from dmmreg.training.trainer import endpoint_error, train

SMALL_2D = dict(rdm_channels=8, residual_blocks=1, style_downsamplings=2, mlp_channels=16, discriminator_channels=8,
                discriminator_layers=3, discriminator_scales=2, registration_encoder=(8, 16, 16, 16),
                registration_decoder=(16, 16, 16))
TINY_3D = dict(rdm_channels=4, residual_blocks=1, style_downsamplings=2, mlp_channels=8, discriminator_channels=4,
               discriminator_layers=2, discriminator_scales=1, registration_encoder=(4, 8, 8), registration_decoder=(8, 8))
SPACING_MM = {2: 2.0, 3: 4.0}  # those of the stroke_batches fixture
TRAINING_SLICES = (-20, -15, -10, -5, 0, 5, 10, 15, 20)  # offsets from the middle axial slice
DISENTANGLE_STEPS = 250
REGISTER_STEPS = 150

DISENTANGLING_TERMS = {"reconstruction_x", "reconstruction_y", "latent_content_x", "latent_style_x", "latent_content_y",
                       "latent_style_y", "cross_cycle_x", "cross_cycle_y", "adversarial_x_to_y", "adversarial_y_to_x",
                       "reconstruction", "latent", "cross_cycle", "adversarial", "total"}
REGISTRATION_TERMS = {"smooth_forward", "smooth_backward", "content", "msd", "total"}


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(dim: int, **settings) -> Disentangled:
    torch.manual_seed(0)
    sizes = SMALL_2D if dim == 2 else TINY_3D
    return Disentangled(DisentangledConfig(dim=dim, spacing_mm=SPACING_MM[dim], **{**sizes, **settings}))


def aligned_pair(stroke, offset: int, geometry) -> TrainingBatch:
    """The T1 (moving, domain x) and T2 (fixed, domain y) axial slices ``offset`` from the middle,
    aligned as the stroke contrasts are, on the model grid ``geometry``."""
    on_grid = lambda image: onto_model_grid(image_tensor(image, None, "cpu"), image.geometry, geometry)  # noqa: E731
    return TrainingBatch(fixed=on_grid(stroke_slice_2d(stroke, "T2", offset)),
                         moving=on_grid(stroke_slice_2d(stroke, "T1", offset)), geometry=geometry)


def parameters_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}


@pytest.fixture(scope="module")
def disentangled_2d(stroke, stroke_batches):
    """A small 2D model after the "disentangle" stage on paired (aligned) T1/T2 slices, as the
    paper pre-trains its RDM; R learns at 1e-3 (10x the paper's 1e-4) for the brief test run."""
    geometry = stroke_batches[2].geometry
    pairs = [aligned_pair(stroke, offset, geometry) for offset in TRAINING_SLICES]
    model = small_model(2, registration_learning_rate=1e-3)
    start = time.perf_counter()
    history = train(model, lambda step: pairs[step % len(pairs)], DISENTANGLE_STEPS, stages=["disentangle"])
    print(f"disentangle: {DISENTANGLE_STEPS} steps in {time.perf_counter() - start:.1f} s")
    return model, history


def test_defaults_are_the_papers_and_the_config_round_trips():
    config = DisentangledConfig()
    # eq. (3) weights and eq. (12) gammas, learning rates (sec. II-D); MUNIT's sizes for the RDM
    assert (config.weight_reconstruction, config.weight_latent, config.weight_cross_cycle, config.weight_adversarial) == (10, 1, 10, 1)
    assert (config.weight_smooth_forward, config.weight_smooth_backward, config.weight_content, config.weight_msd) == (1, 1, 1, 5)
    assert (config.rdm_learning_rate, config.registration_learning_rate) == (1e-3, 1e-4)
    assert (config.rdm_channels, config.content_downsamplings, config.residual_blocks, config.style_dim) == (64, 2, 4, 8)
    assert Disentangled.stages == ("disentangle", "register") and not Disentangled.predicts_affine
    for c in (config, DisentangledConfig(dim=2, **SMALL_2D)):
        assert DisentangledConfig.from_dict(asdict(c)) == c


def test_a_model_grid_too_small_for_the_discriminators_is_a_clear_error():
    """The paper's discriminators (4 layers at 3 scales) on a 48x64x48 grid (a 4 mm brain): the
    error names the smallest grid and the fix instead of a convolution's kernel-size failure."""
    torch.manual_seed(0)
    model = Disentangled(DisentangledConfig(dim=3, **{**TINY_3D, "discriminator_layers": 4, "discriminator_scales": 3}))
    image = torch.rand(1, 1, 48, 64, 48)
    with pytest.raises(InputError, match=r"48x64x48 voxels.*at least 61 voxels.*finer spacing_mm"):
        model.discriminator_loss(image, image)
    assert len(model.discriminators["x"](torch.rand(1, 1, 61, 64, 61))) == 3  # the smallest that fits


@pytest.mark.parametrize("dim", [2, 3])
def test_outputs_loss_terms_and_gradients(dim, stroke_batches):
    batch = stroke_batches[dim]
    model = small_model(dim)
    shape = tuple(batch.fixed.shape[2:])

    prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
    assert prediction.affine is None and prediction.inverse_affine is None
    assert prediction.displacement.shape == prediction.inverse_displacement.shape == (1, dim, *shape)
    assert set(prediction.synthesised) == {"moving_in_fixed_contrast", "fixed_in_moving_contrast"}
    for image in prediction.synthesised.values():
        assert image.shape == (1, 1, *shape) and 0 <= image.min() and image.max() <= 1
    # an untrained R starts near the identity (near-zero output convolution)
    assert prediction.displacement.abs().max() < 0.01

    # stage 1: eq. (3) reaches every encoder and generator, the discriminator loss every discriminator
    model.make_optimisers("disentangle")
    terms = model.loss_terms(batch, "disentangle")
    assert set(terms) == DISENTANGLING_TERMS and all(torch.isfinite(t) and t.ndim == 0 for t in terms.values())
    assert_gradients_reach(model.rdm, terms["total"])
    assert_gradients_reach(model.discriminators, model.discriminator_loss(batch.moving, batch.fixed))

    # stage 2: eq. (12) reaches R (through both directions); the frozen RDM gets no gradient
    model.zero_grad(set_to_none=True)
    model.make_optimisers("register")
    terms = model.loss_terms(batch, "register")
    assert set(terms) == REGISTRATION_TERMS and all(torch.isfinite(t) and t.ndim == 0 for t in terms.values())
    assert_gradients_reach(model.registration, terms["total"])
    assert all(p.grad is None and not p.requires_grad for p in model.rdm.parameters())


def test_each_stage_updates_its_own_networks(stroke_batches):
    batch = stroke_batches[2]
    model = small_model(2)
    parts = {"rdm": model.rdm, "discriminators": model.discriminators, "registration": model.registration}

    before = {name: parameters_of(part) for name, part in parts.items()}
    record = model.training_step(batch, model.make_optimisers("disentangle"), "disentangle")
    assert set(record) == DISENTANGLING_TERMS | {"discriminator"}
    # one discriminator update and one encoder/generator update; R is not part of this stage
    assert changed(before["rdm"], model.rdm) == set(before["rdm"])
    assert changed(before["discriminators"], model.discriminators) == set(before["discriminators"])
    assert not changed(before["registration"], model.registration)

    before = {name: parameters_of(part) for name, part in parts.items()}
    record = model.training_step(batch, model.make_optimisers("register"), "register")
    assert set(record) == REGISTRATION_TERMS
    assert changed(before["registration"], model.registration) == set(before["registration"])
    assert not changed(before["rdm"], model.rdm) and not changed(before["discriminators"], model.discriminators)


def content_distance(model: Disentangled, t1: torch.Tensor, t2: torch.Tensor) -> float:
    """Mean |E_c^x(T1) - E_c^y(T2)| over the content map."""
    with torch.no_grad():
        return float((model.rdm.content["x"](t1) - model.rdm.content["y"](t2)).abs().mean())


def test_content_codes_of_aligned_contrasts_are_closer(disentangled_2d, stroke, stroke_batches):
    """The RDM's premise (sec. II-B): T1 and T2 of the same anatomy share a content code.  After
    the brief "disentangle" stage, the code of a T1 slice is closer to that of its aligned T2
    than to that of the T2 shifted by 8 mm in x and y, or of the T2 slice 15 mm away (measured:
    0.19 against 0.32-0.33 and 0.25-0.30); an untrained model shows no such order (1.22 against
    1.19-1.24): it is learnt, not built in."""
    model, history = disentangled_2d
    geometry = stroke_batches[2].geometry
    shift = torch.tensor([8.0, 8.0])[None, :, None, None].expand(1, 2, *geometry.shape)
    untrained = small_model(2)
    for offset in (0, 7):  # a training slice and one between training slices
        pair = aligned_pair(stroke, offset, geometry)
        misaligned = {"shifted 8 mm": (warp_on_grid(pair.fixed, geometry, shift), 0.75),
                      "15 mm away": (aligned_pair(stroke, offset + 15, geometry).fixed, 0.9)}
        for m, trained in ((model, True), (untrained, False)):
            aligned = content_distance(m, pair.moving, pair.fixed)
            for name, (t2, ratio) in misaligned.items():
                distance = content_distance(m, pair.moving, t2)
                print(f"slice {offset:+d}, {'trained' if trained else 'untrained'}: aligned {aligned:.3f}, {name} {distance:.3f}")
                if trained:
                    assert aligned < ratio * distance, f"slice {offset}: aligned {aligned:.3f} vs {name} {distance:.3f}"
                else:
                    assert aligned > 0.9 * distance, f"untrained, slice {offset}: aligned {aligned:.3f} vs {name} {distance:.3f}"
    # the stage learnt: reconstruction (eqs. 4-5) and the whole eq. (3) fell
    assert mean_loss(history, "disentangle", first=False, key="reconstruction") < 0.3 * mean_loss(history, "disentangle", first=True, key="reconstruction")
    assert mean_loss(history, "disentangle", first=False) < 0.5 * mean_loss(history, "disentangle", first=True)


def test_translation_swaps_the_contrast(disentangled_2d, stroke, stroke_batches):
    """``moving_in_fixed_contrast`` (T1 content, style of the given T2) looks like the aligned T2,
    and ``fixed_in_moving_contrast`` like the T1, much more than the other contrast does (measured:
    mean absolute differences 0.077 and 0.067 against 0.141)."""
    model, _ = disentangled_2d
    pair = aligned_pair(stroke, 0, stroke_batches[2].geometry)
    with torch.no_grad():
        synthesised = model.predict(pair.fixed, pair.moving, pair.geometry).synthesised
    contrast_gap = float((pair.moving - pair.fixed).abs().mean())
    t2_error = float((synthesised["moving_in_fixed_contrast"] - pair.fixed).abs().mean())
    t1_error = float((synthesised["fixed_in_moving_contrast"] - pair.moving).abs().mean())
    print(f"|T1 - T2| {contrast_gap:.3f}, |T1 as T2 - T2| {t2_error:.3f}, |T2 as T1 - T1| {t1_error:.3f}")
    assert t2_error < 0.7 * contrast_gap and t1_error < 0.7 * contrast_gap


def inverse_endpoint_error(model: Disentangled, batch: TrainingBatch) -> tuple[float, float]:
    """Mean error (mm) of the backward map ``phi_2`` (the fixed image registered to the moving one)
    against the inverse of the known warp, inside the moving mask: ``(identity, phi_2)``."""
    with torch.no_grad():
        truth = spatial.invert_displacement(batch.true_displacement, batch.geometry)
        backward = model.predict(batch.fixed, batch.moving, batch.geometry).inverse_displacement
        inside = batch.moving_mask[:, 0] > 0
        return float(truth.norm(dim=1)[inside].mean()), float((backward - truth).norm(dim=1)[inside].mean())


def test_registration_learns_both_directions_with_the_disentangling_model_frozen(disentangled_2d, stroke_batches):
    """Measured: loss 0.906 -> 0.621, EPE 11.1 -> 7.0 mm (phi_1), 11.3 -> 5.8 mm (phi_2)."""
    batch = stroke_batches[2]
    model = copy.deepcopy(disentangled_2d[0])
    frozen = {name: t.clone() for name, t in model.state_dict().items() if not name.startswith("registration.")}
    start = time.perf_counter()
    history = train(model, lambda step: batch, REGISTER_STEPS, stages=["register"])
    seconds = time.perf_counter() - start
    before, after = endpoint_error(model, batch)
    first, last = mean_loss(history, "register", first=True), mean_loss(history, "register", first=False)
    print(f"register: loss {first:.4f} -> {last:.4f}, EPE {before:.2f} -> {after:.2f} mm, {seconds:.1f} s")
    assert last < 0.85 * first
    assert after < 0.8 * before
    backward_before, backward_after = inverse_endpoint_error(model, batch)
    print(f"backward map: EPE {backward_before:.2f} -> {backward_after:.2f} mm")
    assert backward_after < 0.8 * backward_before
    # the paper fixes the RDM's parameters while R trains (sec. II-D)
    now = model.state_dict()
    assert all(torch.equal(frozen[name], now[name]) for name in frozen)
