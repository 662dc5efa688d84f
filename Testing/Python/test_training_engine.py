"""The shared trainer and training jobs: seeded and resumable runs, cancel with a consistent
checkpoint and no model, best-weights keeping, cards, fine-tuning that helps, and the
``dmmreg train / finetune / models`` commands.  Small 2D MIDIR models on axial slices of the
bundled stroke data at 2 mm keep every run to seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dmmreg import model_io
from dmmreg.training.cohorts import read_cohort
from dmmreg.errors import Cancelled, InputError
from dmmreg.methods.disentangled import Disentangled, DisentangledConfig
from dmmreg.methods.midir import Midir, MidirConfig
from dmmreg.training.trainer import Trainer, validate
from dmmreg.training.pairs import PairSampler, PairSettings, load_cohort
from dmmreg.training.jobs import TrainingJob, cancel_on_signals, resume_job, run_job

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(dim=2, spacing_mm=2.0, encoder_channels=(8, 16, 16, 16, 16), decoder_channels=(16, 16, 16, 16),
             resize_channels=(16, 16), bins=32, learning_rate=1e-3)
PAIRS = [["t2", "t1"], ["flair", "t1"]]


@pytest.fixture(scope="module")
def sampler(cohort_folder) -> PairSampler:
    volumes = load_cohort(read_cohort(cohort_folder), SMALL["spacing_mm"], 8.0)
    return PairSampler(volumes, PairSettings(dim=2, contrast_pairs=(("t2", "t1"),)))


@pytest.fixture()
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    monkeypatch.setenv("DMMREG_MODELS", str(folder))
    return folder


def new_model() -> Midir:
    torch.manual_seed(0)
    return Midir(MidirConfig(**SMALL))


def test_resumed_run_equals_uninterrupted_run(sampler, tmp_path):
    validation = sampler.validation_pairs(2)
    straight = new_model()
    Trainer(straight, sampler, {"train": 6}, validation=validation, epoch_steps=2, seed=4).run()

    interrupted = new_model()
    trainer = Trainer(interrupted, sampler, {"train": 6}, validation=validation, epoch_steps=2, seed=4,
                      run_folder=tmp_path / "run", cancel=lambda: trainer.state.done == 3)
    with pytest.raises(Cancelled, match="cancelled after 3 of 6 updates"):
        trainer.run()
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*.safetensors")] == ["checkpoint-0000003.safetensors"]
    resumed = Midir(MidirConfig(**SMALL))  # other initial weights: all come from the checkpoint
    again = Trainer(resumed, sampler, {"train": 6}, validation=validation, epoch_steps=2, seed=4, run_folder=tmp_path / "run")
    assert again.load_checkpoint() and again.state.done == 3
    again.run()
    for key, value in straight.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-6), key


def test_learning_rate_drops_to_a_tenth_and_gradients_are_clipped_also_after_a_resume(sampler, tmp_path):
    schedule = dict(decay_steps=2, max_gradient_norm=1e-3, epoch_steps=1, seed=2)
    model = new_model()
    base = model.make_optimisers()[0].param_groups[0]["lr"]
    trainer = Trainer(model, sampler, {"train": 3}, run_folder=tmp_path / "run",
                      cancel=lambda: trainer.state.done == 3, **schedule)
    with pytest.raises(Cancelled):
        trainer.run()
    assert trainer.optimisers[0].param_groups[0]["lr"] == pytest.approx(base * 0.1)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert 0 < float(norm) <= 1e-3 * (1 + 1e-4)  # unclipped gradients of this net are about 0.01-0.5
    again = Trainer(new_model(), sampler, {"train": 5}, run_folder=tmp_path / "run",
                    cancel=lambda: again.state.done == 4, **schedule)
    assert again.load_checkpoint()
    assert again.optimisers[0].param_groups[0]["lr"] == pytest.approx(base * 0.1)  # from the checkpoint
    with pytest.raises(Cancelled):
        again.run()
    assert again.optimisers[0].param_groups[0]["lr"] == pytest.approx(base * 0.01)


def test_model_ends_with_its_best_validated_weights(sampler):
    validation = sampler.validation_pairs(2)
    model = new_model()
    trainer = Trainer(model, sampler, {"train": 9}, validation=validation, epoch_steps=3, seed=1)
    history = trainer.run()
    scores = [r["epe_mm"] for r in history if r["kind"] == "validation"]
    assert len(scores) == 4  # the start and three epochs
    assert validate(model, validation)["epe_mm"] == pytest.approx(min(scores), abs=1e-5)
    assert trainer.best_validation()["epe_mm"] == pytest.approx(min(scores))


def job(cohort_folder, name: str, **settings) -> TrainingJob:
    values = dict(method="midir", cohorts=[str(cohort_folder)], name=name, config=SMALL, contrast_pairs=PAIRS,
                  steps=4, epoch_steps=2, validation_pairs=2, device="cpu")
    return TrainingJob(**{**values, **settings})


def test_cancelled_job_leaves_a_checkpoint_and_no_model_then_resumes(cohort_folder, tmp_path, user_models):
    run = tmp_path / "run"
    calls = []
    with pytest.raises(Cancelled):
        run_job(job(cohort_folder, "m"), run, cancel=lambda: len(calls.append(1) or calls) >= 3)
    assert not (user_models / "m.json").exists() and not (user_models / "m.safetensors").exists()
    state = json.loads((run / "checkpoint.json").read_text())
    assert state["done"] == 3 and (run / state["weights"]).exists()
    card_path = resume_job(run)
    card = model_io.read_card(card_path)
    assert card_path == user_models / "m.json"
    assert card["training"]["steps"] == {"train": 4} and card["training"]["subjects"] == ["a"]
    assert card["validation"]["source"] == "held-out subjects b" and card["validation"]["pairs"] == 2
    assert {"epe_mm", "epe_before_mm", "folding_percent", "after_updates"} <= set(card["validation"])
    assert card["training"]["seconds"] > 0 and card["validation_at_start"]["epe_mm"] > 0


def test_finetuning_records_base_and_tuned_validation_and_never_ends_worse(cohort_folder, tmp_path, user_models):
    torch.manual_seed(0)
    base = Midir(MidirConfig(**{**SMALL, "similarity": "lncc"}))  # NMI needs more voxels than a 2D slice has
    model_io.save_model(base, tmp_path / "base.safetensors", training={"data": "none"})
    tuned_path = run_job(job(cohort_folder, "tuned", config={}, base_model=str(tmp_path / "base.json"), steps=40,
                             epoch_steps=10, validation_pairs=3, contrast_pairs=[["t2", "t1"]]))
    tuned = model_io.read_card(tuned_path)
    assert tuned["training"]["base_model"]["name"] == "base" and tuned["training"]["steps"] == {"train": 40}
    before, after = tuned["validation_at_start"]["epe_mm"], tuned["validation"]["epe_mm"]
    assert after <= before and tuned["validation"]["after_updates"] in (0, 10, 20, 30, 40)
    # the card's figure is the saved model's: recomputed on the same held-out pairs
    volumes = load_cohort(read_cohort(cohort_folder).split(["b"])[1], SMALL["spacing_mm"], 8.0)
    pairs = PairSampler(volumes, PairSettings(dim=2, contrast_pairs=(("t2", "t1"),))).validation_pairs(3)
    model, _ = model_io.load_model(tuned_path, "midir")
    assert validate(model, pairs)["epe_mm"] == pytest.approx(after, abs=1e-3)


def test_new_models_never_go_into_the_bundled_folder_or_over_a_model(cohort_folder, user_models, tmp_path):
    with pytest.raises(InputError, match="bundled models folder"):
        run_job(job(cohort_folder, "x", output=str(model_io.BUNDLED_MODELS / "x.safetensors")))
    model_io.save_model(new_model(), user_models / "taken.safetensors")
    with pytest.raises(InputError, match="exists already"):
        run_job(job(cohort_folder, "taken"))
    with pytest.raises(InputError, match="fine-tuned model keeps its base model's settings"):
        run_job(job(cohort_folder, "y", base_model=str(user_models / "taken.json")))


def test_saved_model_leaves_out_training_only_parts(tmp_path):
    small = dict(rdm_channels=4, residual_blocks=1, style_downsamplings=2, mlp_channels=8, discriminator_channels=4,
                 discriminator_layers=2, discriminator_scales=1, registration_encoder=(4, 8, 8), registration_decoder=(8, 8))
    model = Disentangled(DisentangledConfig(dim=2, **small))
    card = model_io.save_model(model, tmp_path / "d.safetensors")
    keys = load_file(str(tmp_path / "d.safetensors"))
    assert keys and not any(k.startswith("discriminators.") for k in keys)
    loaded, _ = model_io.load_model(card, "disentangled")
    for key, value in model.state_dict().items():
        if not key.startswith("discriminators."):
            assert torch.equal(value, loaded.state_dict()[key])


def dmmreg(*arguments, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmmreg", *map(str, arguments)], capture_output=True, text=True,
                          timeout=600, env=env)


def test_train_finetune_and_models_commands(cohort_folder, tmp_path):
    env = {**os.environ, "DMMREG_MODELS": str(tmp_path / "models"), "OMP_NUM_THREADS": "1"}
    config = [f"--config={key}={','.join(map(str, value)) if isinstance(value, tuple) else value}"
              for key, value in SMALL.items() if key not in ("dim", "spacing_mm")]
    train = dmmreg("train", "--method", "midir", "--dim", "2", "--spacing", "2", *config, "--cohort", cohort_folder,
                   "--pair", "t2:t1", "--name", "cli-base", "--steps", "4", "--epoch-steps", "2", "--validation-pairs", "1",
                   "--progress", "json", "--threads", "1", env=env)
    assert train.returncode == 0, train.stderr
    lines = [json.loads(line) for line in train.stdout.splitlines()]
    assert [line["record"]["done"] for line in lines if line["stage"] == "validate"] == [0, 2, 4]
    assert lines[-1]["stage"] == "done" and lines[-1]["outputs"]["model"].endswith("cli-base.safetensors")

    tune = dmmreg("finetune", "--model", "cli-base", "--cohort", cohort_folder, "--pair", "flair:t1", "--name", "cli-tuned",
                  "--steps", "2", "--validation-pairs", "1", "--threads", "1", env=env)
    assert tune.returncode == 0, tune.stderr
    listed = json.loads(dmmreg("models", "--json", env=env).stdout)
    mine = {card["name"]: card for card in listed if card["origin"] == "user"}
    assert set(mine) == {"cli-base", "cli-tuned"}
    assert mine["cli-tuned"]["training"]["base_model"]["name"] == "cli-base"
    assert mine["cli-tuned"]["training"]["contrast_pairs"] == [["flair", "t1"]]
    text = dmmreg("models", env=env).stdout
    assert "cli-tuned: midir 2D (user:" in text

    again = dmmreg("finetune", "--model", "cli-base", "--cohort", cohort_folder, "--name", "cli-tuned", env=env)
    assert again.returncode == 2 and "exists already" in again.stderr
    missing = dmmreg("finetune", "--model", "no-such-model", "--cohort", cohort_folder, "--name", "z", env=env)
    assert missing.returncode == 2 and "model 'no-such-model' not found" in missing.stderr
    no_method = dmmreg("train", "--cohort", cohort_folder, "--name", "z", env=env)
    assert no_method.returncode == 2 and "--method" in no_method.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_requests_a_cancel(sig):
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cancel = cancel_on_signals()
        assert not cancel()
        os.kill(os.getpid(), sig)
        assert cancel()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
