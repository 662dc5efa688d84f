"""The Dai et al. hierarchical model (004_b2c378d3610a3326.txt): coarse registration G1, modal
translation G2, fine registration G3, trained stage by stage with the other networks frozen;
final map = coarse composed with fine.  Real stroke known-warp pairs (T1 moving, deformed T2
fixed), small networks, brief CPU training."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import pytest
import torch
from conftest import assert_gradients_reach, mean_loss, stroke_slice_2d

from dmmreg import spatial
from dmmreg.losses import mean_squared_error, mutual_information
from dmmreg.methods import method_class
from dmmreg.methods.hierarchical import TERM_WEIGHTS, HierarchicalConfig, HierarchicalRegistration
from dmmreg.methods.learned import TrainingBatch, compose_maps, warp_on_grid
from dmmreg.training.trainer import endpoint_error, train

pytestmark = pytest.mark.usefixtures("one_thread")

#: fewer channels than the paper's networks, and a faster learning rate, for brief CPU training
SMALL = dict(encoder=(8, 16, 16, 16), decoder=(16, 16, 16), learning_rate=2e-3)
STEPS = {"coarse": 60, "translation": 30, "fine": 60}
SPACING_MM = {2: 2.0, 3: 4.0}  # the grids of the stroke_batches fixture


def small_model(dim: int) -> HierarchicalRegistration:
    torch.manual_seed(0)
    return HierarchicalRegistration(HierarchicalConfig(dim=dim, spacing_mm=SPACING_MM[dim], **SMALL))


def coarse_displacement(model: HierarchicalRegistration, batch: TrainingBatch) -> torch.Tensor:
    return model.coarse(batch.fixed, batch.moving, batch.geometry)


def mean_endpoint_error(displacement: torch.Tensor, batch: TrainingBatch) -> float:
    """Mean |(p + u(p)) - G(p)| (mm) inside the fixed mask."""
    error = (displacement - batch.true_displacement).norm(dim=1)
    return float(error[batch.fixed_mask[:, 0] > 0].mean())


@dataclass
class Trained:
    model: HierarchicalRegistration
    batch: TrainingBatch
    history: list[dict]
    seconds: float


@pytest.fixture(scope="module")
def trained(stroke_batches) -> Trained:
    """The small model trained through its three stages on the 2D stroke pair."""
    batch = stroke_batches[2]
    model = small_model(2)
    start = time.perf_counter()
    history = train(model, lambda _: batch, STEPS)
    model.eval()
    return Trained(model, batch, history, time.perf_counter() - start)


def test_default_config_is_the_papers_and_round_trips():
    config = HierarchicalConfig()
    assert HierarchicalConfig.from_dict(json.loads(json.dumps(asdict(config)))) == config
    # 004_b2c378d3610a3326.txt sec. 3.1: alpha, beta, lambda of eqs. 1-3
    paper = {"coarse_smooth_weight": 0.02, "coarse_mi_weight": 0.15, "mask_mi_weight": 0.02,
             "translated_mi_weight": 0.02, "translation_mse_weight": 2.5, "fine_smooth_weight": 0.02,
             "fine_mi_weight": 0.1, "fine_mse_weight": 1.5}
    assert {name: getattr(config, name) for name in paper} == paper
    assert method_class("hierarchical") is HierarchicalRegistration
    assert HierarchicalRegistration.stages == ("coarse", "translation", "fine")
    assert not HierarchicalRegistration.predicts_affine


def test_mutual_information_is_the_papers_sum_on_real_images(stroke):
    t1 = torch.as_tensor(stroke_slice_2d(stroke, "T1").array)
    t1 = (t1 / t1.max())[None, None]
    t2 = torch.as_tensor(stroke_slice_2d(stroke, "T2").array)
    t2 = (t2 / t2.max())[None, None]
    shuffled = t2.flatten()[torch.randperm(t2.numel(), generator=torch.Generator().manual_seed(0))].reshape(t2.shape)
    self_information = float(mutual_information(t1, t1))
    assert float(mutual_information(t1, 1 - t1)) == pytest.approx(self_information, rel=1e-3)  # MI ignores relabelling
    assert 0.3 * self_information > float(mutual_information(t1, t2)) > 10 * float(mutual_information(t1, shuffled))
    assert abs(float(mutual_information(t1, shuffled))) < 0.02


@pytest.mark.parametrize("dim", [2, 3])
def test_outputs_and_each_stage_reaches_only_its_network(stroke_batches, dim):
    batch = stroke_batches[dim]
    model = small_model(dim)
    shape = batch.fixed.shape[2:]
    prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
    assert prediction.displacement.shape == (1, dim, *shape)
    assert prediction.affine is None and prediction.inverse_displacement is None
    assert set(prediction.synthesised) == {"moving_in_fixed_contrast"}
    assert prediction.synthesised["moving_in_fixed_contrast"].shape == (1, 1, *shape)
    assert torch.isfinite(prediction.displacement).all()
    for stage in model.stages:
        model.zero_grad(set_to_none=True)
        terms = model.loss_terms(batch, stage)
        assert set(terms) == {*TERM_WEIGHTS[stage], "total"}
        assert all(value.ndim == 0 and torch.isfinite(value) for value in terms.values()), terms
        own = model.stage_networks[stage]
        assert_gradients_reach(own, terms["total"])
        frozen = [net for net in model.stage_networks.values() if net is not own]
        assert all(p.grad is None for net in frozen for p in net.parameters()), f"{stage} sends gradients to frozen networks"


def test_each_stage_updates_only_its_network(stroke_batches):
    batch = stroke_batches[2]
    model = small_model(2)
    for stage in model.stages:
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        model.training_step(batch, model.make_optimisers(stage), stage)
        prefix = {"coarse": "coarse_net.", "translation": "translation_net.", "fine": "fine_net."}[stage]
        for name, p in model.named_parameters():
            changed = not torch.equal(before[name], p.detach())
            assert changed == name.startswith(prefix), f"stage {stage}: {name} {'changed' if changed else 'unchanged'}"


def test_final_field_is_coarse_composed_with_fine(trained):
    model, batch, geometry = trained.model, trained.batch, trained.batch.geometry
    with torch.no_grad():
        coarse = coarse_displacement(model, batch)
        _, translated = model.translate(batch.fixed, batch.moving)
        fine = model.fine(batch.fixed, warp_on_grid(batch.moving, geometry, coarse),
                          warp_on_grid(translated, geometry, coarse), geometry)
        prediction = model.predict(batch.fixed, batch.moving, geometry)
        points = spatial.grid_points(geometry)
        # T(p) = T_coarse(T_fine(p)): the fine map first, then the coarse one
        expected = compose_maps(None, fine, None, coarse, geometry) - points
        reversed_order = compose_maps(None, coarse, None, fine, geometry) - points
    actual = spatial.to_channels_last(prediction.displacement)
    assert fine.abs().amax() > 1.0 and coarse.abs().amax() > 3.0  # both nets move points (mm)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert (actual - reversed_order).abs().amax() > 0.1  # the order matters for these fields
    torch.testing.assert_close(prediction.synthesised["moving_in_fixed_contrast"], translated)


def test_staged_training_lowers_every_loss_and_registers(trained):
    for stage in HierarchicalRegistration.stages:
        assert mean_loss(trained.history, stage, first=False) < mean_loss(trained.history, stage, first=True), stage
    before, after = endpoint_error(trained.model, trained.batch)
    assert before > 10.0
    assert after < 0.3 * before  # measured: 11.1 mm -> 2.1 mm


def test_translation_brings_moving_into_fixed_contrast(trained):
    model, batch, geometry = trained.model, trained.batch, trained.batch.geometry
    with torch.no_grad():
        _, translated = model.translate(batch.fixed, batch.moving)
        coarse = coarse_displacement(model, batch)
        for field in (batch.true_displacement, coarse):  # aligned by the known warp, and by G1
            raw_error = float(mean_squared_error(batch.fixed, warp_on_grid(batch.moving, geometry, field), batch.fixed_mask))
            translated_error = float(mean_squared_error(batch.fixed, warp_on_grid(translated, geometry, field), batch.fixed_mask))
            assert translated_error < 0.4 * raw_error  # measured through the known warp: 0.152 -> 0.028


def test_fine_stage_improves_on_coarse_registration(trained):
    with torch.no_grad():
        coarse_error = mean_endpoint_error(coarse_displacement(trained.model, trained.batch), trained.batch)
        final = trained.model.predict(trained.batch.fixed, trained.batch.moving, trained.batch.geometry).displacement
        final_error = mean_endpoint_error(final, trained.batch)
    assert coarse_error < 0.5 * mean_endpoint_error(torch.zeros_like(final), trained.batch)  # measured: 11.1 -> 3.6 mm
    assert final_error < 0.8 * coarse_error  # measured: 2.1 mm
