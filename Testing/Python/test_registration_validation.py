"""Validation through the whole registration (pre-alignment, network, full resolution) of held-out
known-warp cases, and the trainer keeping the weights that are best at it."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import STROKE
from dmmreg.training.cohorts import Subject
from dmmreg.errors import InputError
from dmmreg.methods.midir import Midir, MidirConfig
from dmmreg.training.validation import registration_cases, validate_registration
from dmmreg.training.trainer import Trainer
from dmmreg.training.jobs import TrainingJob, run_job

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_3D = dict(dim=3, spacing_mm=8.0, encoder_channels=(4, 8, 8, 8), decoder_channels=(8, 8, 8),
               resize_channels=(8,), learning_rate=1e-3)


def tiny_model(dim: int = 3) -> Midir:
    torch.manual_seed(0)
    return Midir(MidirConfig(**{**TINY_3D, "dim": dim}))


@pytest.fixture(scope="module")
def stroke_subject() -> Subject:
    return Subject("stroke", {c.lower(): STROKE / f"{c}.nii.gz" for c in ("T1", "T2", "FLAIR")})


def test_cases_are_prealigned_known_warps_and_an_untrained_network_keeps_the_prealignment(stroke_subject):
    model = tiny_model()
    cases = registration_cases([stroke_subject], [("t2", "t1"), ("flair", "t1")], 2, model)
    assert [c.name for c in cases] == ["stroke-t1-to-t2-20000", "stroke-t1-to-flair-20001"]
    assert cases[0].fixed.geometry == cases[0].moving.geometry and cases[0].scored.sum() > 10_000
    metrics = validate_registration(model, cases)
    assert 1.0 < metrics["registration_epe_before_mm"] < 4.0  # the affine leaves the non-rigid part
    assert metrics["registration_epe_mm"] == pytest.approx(metrics["registration_epe_before_mm"], abs=0.05)
    assert metrics["registration_folding_percent"] == 0.0
    assert model.training  # left as it was


def test_2d_cases_are_axial_slices_through_the_brain(stroke_subject):
    model = tiny_model(dim=2)
    cases = registration_cases([stroke_subject], [("t2", "t1")], 2, model)
    assert [c.name.rsplit("-slice", 1)[0] for c in cases] == ["stroke-t1-to-t2-20000", "stroke-t1-to-t2-20001"]
    slices = [int(c.name.rsplit("-slice", 1)[1]) for c in cases]
    assert all(0.2 * 140 < k < 0.8 * 140 for k in slices) and slices[0] != slices[1]
    assert cases[0].fixed.dim == 2 and cases[0].fixed.geometry == cases[0].moving.geometry
    assert cases[0].scored.sum() > 500
    metrics = validate_registration(model, cases)
    assert 0.5 < metrics["registration_epe_before_mm"] < 4.0
    assert metrics["registration_epe_mm"] == pytest.approx(metrics["registration_epe_before_mm"], abs=0.05)


def test_cases_need_the_asked_contrasts(stroke_subject):
    with pytest.raises(InputError, match="no held-out subject has the contrast pairs"):
        registration_cases([stroke_subject], [("pd", "t1")], 1, tiny_model())


def test_trainer_keeps_the_weights_best_at_the_whole_registration(cohort_folder):
    from dmmreg.training.cohorts import read_cohort
    from dmmreg.training.pairs import PairSampler, PairSettings, load_cohort

    model = tiny_model(dim=2)
    volumes = load_cohort(read_cohort(cohort_folder), 8.0, 8.0)
    sampler = PairSampler(volumes, PairSettings(dim=2, contrast_pairs=(("t2", "t1"),)))
    figures = iter([3.0, 2.0, 1.0, 5.0])  # before training, then after updates 2, 4, 6
    trainer = Trainer(model, sampler, {"train": 6}, validation=sampler.validation_pairs(1), epoch_steps=2,
                      registration_validation=lambda m: {"registration_epe_mm": next(figures)})
    trainer.run()
    best = trainer.best_validation()
    assert best["done"] == 4 and best["registration_epe_mm"] == 1.0 and "epe_mm" in best


def test_a_stage_keeps_the_weights_it_started_from_when_no_epoch_beats_them(cohort_folder):
    from dmmreg.training.cohorts import read_cohort
    from dmmreg.methods.hierarchical import HierarchicalConfig, HierarchicalRegistration
    from dmmreg.training.pairs import PairSampler, PairSettings, load_cohort

    torch.manual_seed(0)
    model = HierarchicalRegistration(HierarchicalConfig(dim=2, spacing_mm=8.0, encoder=(4, 8, 8, 8), decoder=(8, 8, 8)))
    volumes = load_cohort(read_cohort(cohort_folder), 8.0, 8.0)
    sampler = PairSampler(volumes, PairSettings(dim=2, contrast_pairs=(("t2", "t1"),)))
    # before training, coarse epoch; before translation, its epoch; before fine, its epoch
    figures = iter([5.0, 4.0, 3.0, 6.0, 2.0, 3.0])
    trainer = Trainer(model, sampler, {"coarse": 2, "translation": 2, "fine": 2}, epoch_steps=2,
                      registration_validation=lambda m: {"registration_epe_mm": next(figures)})
    history = trainer.run()
    starts = [(r["stage"], r["done"]) for r in history if r["kind"] == "validation" and r["step"] == 0]
    assert starts == [("coarse", 0), ("translation", 2), ("fine", 4)]
    best = trainer.best_validation()
    assert best["done"] == 4 and best["registration_epe_mm"] == 2.0


def test_job_records_the_registration_validation_in_the_card(cohort_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DMMREG_MODELS", str(tmp_path / "models"))
    job = TrainingJob(method="midir", cohorts=[str(cohort_folder)], name="checked", config=TINY_3D,
                      contrast_pairs=[["t2", "t1"]], validation_subjects=["b"], validation_pairs=1,
                      registration_cases=1, steps=2, epoch_steps=2, device="cpu")
    card = json.loads(run_job(job).read_text())
    assert card["validation"]["registration_cases"] == ["b-t1-to-t2-20000"]
    for key in ("registration_epe_before_mm", "registration_epe_mm", "registration_folding_percent"):
        assert key in card["validation"] and key in card["validation_at_start"]
    assert card["validation_at_start"]["registration_epe_mm"] == pytest.approx(
        card["validation_at_start"]["registration_epe_before_mm"], abs=0.05)


def test_without_held_out_subjects_the_cases_are_new_warps_of_the_training_subjects(cohort_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DMMREG_MODELS", str(tmp_path / "models"))
    job = TrainingJob(method="midir", cohorts=[str(cohort_folder)], name="tuned", config={**TINY_3D, "dim": 2},
                      contrast_pairs=[["t2", "t1"]], validation_subjects=[], validation_pairs=1,
                      registration_cases=2, steps=2, epoch_steps=2, device="cpu")
    card = json.loads(run_job(job).read_text())
    names = [name.rsplit("-slice", 1)[0] for name in card["validation"]["registration_cases"]]
    assert names == ["a-t1-to-t2-20000", "b-t1-to-t2-20001"]
    assert card["validation"]["source"].startswith("held-out pairs")
