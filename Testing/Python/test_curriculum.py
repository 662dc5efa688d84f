"""The training curriculum: the known-warp loss of its first phases, and the campaign script's
phases (each started from the previous one's model, resumable from run folders in campaign/)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_bundling_report import bundling_script

from dmmreg.errors import InputError
from dmmreg.methods.midir import Midir, MidirConfig
from dmmreg.training.trainer import Trainer, known_warp_terms, validate

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(dim=2, spacing_mm=2.0, encoder_channels=(8, 16, 16, 16, 16), decoder_channels=(16, 16, 16, 16),
             resize_channels=(16, 16), learning_rate=1e-3)


def test_known_warp_loss_is_the_endpoint_error_the_validation_reports(stroke_batches):
    torch.manual_seed(0)
    model = Midir(MidirConfig(**SMALL)).eval()
    batch = stroke_batches[2]
    with torch.no_grad():
        terms = known_warp_terms(model, batch)
    assert float(terms["total"]) == pytest.approx(validate(model, [batch])["epe_mm"], rel=1e-3)
    assert float(terms["known_warp_epe_mm"]) == float(terms["total"])


def test_training_on_the_known_warp_lowers_the_endpoint_error(stroke_batches):
    """Supervised by its known warp, a small MIDIR fits one pair: the endpoint error of its map
    falls well below the identity's within 150 updates."""
    torch.manual_seed(0)
    model = Midir(MidirConfig(**SMALL))
    batch = stroke_batches[2]
    before = validate(model, [batch])
    Trainer(model, lambda seed: batch, {"train": 150}, loss="known-warp", max_gradient_norm=1.0).run()
    after = validate(model, [batch])
    assert after["epe_mm"] < 0.6 * before["epe_before_mm"]
    assert after["folding_percent"] < 1.0


def test_known_warp_loss_needs_pairs_with_a_known_warp(stroke_batches):
    model = Midir(MidirConfig(**SMALL))
    without_truth = replace(stroke_batches[2], true_displacement=None)
    with pytest.raises(InputError, match="known-warp loss needs pairs with a known warp"):
        Trainer(model, lambda seed: without_truth, {"train": 1}, loss="known-warp").run()
    with pytest.raises(InputError, match="training loss 'mse'"):
        Trainer(model, lambda seed: without_truth, {"train": 1}, loss="mse")


def test_each_phase_starts_from_the_previous_phases_model():
    script = bundling_script()
    cohorts = {"ixi": Path("campaign/ixi.csv"), "multicontrast": Path("campaign/multicontrast.csv")}
    for name, curriculum in script.CURRICULA.items():
        jobs = [script.phase_job(name, curriculum, i, cohorts) for i in range(len(curriculum.phases))]
        assert jobs[0].base_model is None and jobs[0].config == curriculum.config
        for previous, job, phase in zip(jobs, jobs[1:], curriculum.phases[1:]):
            assert job.base_model == str(Path(previous.output).with_suffix(".json"))
            planned = phase.steps if phase.stages is None else {stage: phase.steps for stage in phase.stages}
            assert job.config == {} and job.loss == phase.loss and job.steps == planned
            assert not Path(job.output).is_absolute()  # run folders move with the repository
        assert jobs[-1].loss == "paper"  # the last phase trains on the method's own loss
        # the first phase keeps its best weights by the held-out pairs (by the whole registration it
        # would keep the untrained ones), the last by the whole registration
        assert jobs[-1].registration_cases > 0 and jobs[0].registration_cases == 0
        assert all(job.validation_subjects == ["stroke"] for job in jobs)


def test_phases_of_multi_stage_methods_count_every_stage():
    """Hierarchical trains G1, G2, G3 in turn in its first phase and its fine-tuning stages (G2, G3)
    afterwards; disentangled's known-warp phases run only R's stage, its own-loss phase both."""
    script = bundling_script()
    hierarchical, disentangled = script.CURRICULA["hierarchical-brain-3d"], script.CURRICULA["disentangled-brain-3d"]
    assert script.phase_stages(hierarchical, 0) == ("coarse", "translation", "fine")
    assert script.phase_stages(hierarchical, 1) == ("translation", "fine")
    assert script.phase_stages(disentangled, 0) == ("register",)
    assert script.phase_stages(disentangled, len(disentangled.phases) - 1) == ("disentangle", "register")
    assert script.phase_state("hierarchical-brain-3d", hierarchical, 0)["planned"] == 3 * hierarchical.phases[0].steps
