"""The trainer shared by every learned method: stages, epochs, validation, checkpoints, cancel.

:class:`Trainer` runs a model's training stages (``model.stages``, each for a number of updates
split into epochs of ``epoch_steps``).  After every epoch it validates on fixed known-warp pairs
(:func:`validate`: endpoint error, folding, Dice where labels exist) and keeps the best weights
of the stage, the ones it started from (validated before its first update) included; the next
stage starts from them.  With a ``run_folder`` it writes a checkpoint (model, optimisers,
position, history) at every epoch and on cancel, so a run can be resumed exactly; the batch of
update ``k`` is ``batches(seed + k)``, so a resumed run draws the same pairs as an
uninterrupted one.

Checkpoint files: ``checkpoint-STEP.safetensors`` (weights, optimiser tensors, random state) and
``checkpoint.json`` (which weights file, stage, step, history), written in that order through
temporary files: whatever moment a run is stopped, ``checkpoint.json`` names complete weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import spatial
from ..errors import Cancelled, InputError
from ..files import atomic_write
from ..methods.learned import LearnedMethod, TrainingBatch

BatchSource = Callable[[int], TrainingBatch]
CHECKPOINT = "checkpoint.json"


def endpoint_error(model: LearnedMethod, batch: TrainingBatch) -> tuple[float, float]:
    """Mean endpoint error (mm) inside the fixed mask of a known-warp batch: ``(before, after)``
    (identity vs the model's prediction on the model grid)."""
    metrics = validate(model, [batch])
    return metrics["epe_before_mm"], metrics["epe_mm"]


def validate(model: LearnedMethod, batches: list[TrainingBatch], device="cpu") -> dict[str, float]:
    """Mean over ``batches`` of: endpoint error (mm, inside the fixed mask) before and after
    registration (``epe_before_mm``, ``epe_mm``; known-warp pairs), folding (% of fixed-mask
    voxels with Jacobian determinant <= 0) and, where both label maps are given, the mean Dice
    of the labels present in the fixed map (``dice_before``, ``dice``)."""
    sums: dict[str, list[float]] = {}
    add = lambda key, value: sums.setdefault(key, []).append(float(value))  # noqa: E731
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            batch = batch.to(device)
            prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
            inside = batch.fixed_mask[:, 0] > 0
            points = spatial.grid_points(batch.geometry, device=batch.fixed.device)
            estimate = spatial.transform_points(batch.geometry, prediction.affine, prediction.displacement)
            if batch.true_displacement is not None:
                truth = points + spatial.to_channels_last(batch.true_displacement)
                add("epe_before_mm", (points - truth).norm(dim=-1)[inside].mean())
                add("epe_mm", (estimate - truth).norm(dim=-1)[inside].mean())
            affine = None if prediction.affine is None else prediction.affine[0]  # batches of one pair
            det = spatial.jacobian_determinant(prediction.displacement, batch.geometry, affine)
            add("folding_percent", 100 * (det[inside] <= 0).float().mean())
            if batch.fixed_labels is not None and batch.moving_labels is not None:
                warped = spatial.sample(batch.moving_labels.float(), batch.geometry, estimate, mode="nearest").round().long()
                add("dice_before", _mean_dice(batch.fixed_labels, batch.moving_labels))
                add("dice", _mean_dice(batch.fixed_labels, warped))
    model.train(was_training)
    return {key: float(np.mean(values)) for key, values in sums.items()}


def _mean_dice(fixed: torch.Tensor, warped: torch.Tensor) -> float:
    ids = [int(i) for i in torch.unique(fixed) if i > 0]
    scores = []
    for i in ids:
        a, b = fixed == i, warped == i
        scores.append(float(2 * (a & b).sum() / (a.sum() + b.sum()).clamp_min(1)))
    return float(np.mean(scores)) if scores else float("nan")


LOSSES = ("paper", "known-warp")


def known_warp_terms(model: LearnedMethod, batch: TrainingBatch) -> dict[str, torch.Tensor]:
    """The curriculum's supervised loss (no paper's): the mean endpoint error (mm) in the fixed
    mask between the model's whole map (affine and displacement) and the pair's known warp.
    It trains the registration path only (``predict``), whatever the stage."""
    prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
    points = spatial.grid_points(batch.geometry, device=batch.fixed.device)
    estimate = spatial.transform_points(batch.geometry, prediction.affine, prediction.displacement)
    truth = points + spatial.to_channels_last(batch.true_displacement)
    inside = batch.fixed_mask[:, 0] > 0
    error = ((estimate - truth).square().sum(dim=-1) + 1e-6).sqrt()[inside].mean()
    return {"known_warp_epe_mm": error, "total": error}


def score(metrics: dict[str, float]) -> float:
    """Lower is better: the endpoint error of the whole registration where validated so, else
    the endpoint error of the pairs where known, else 1 - Dice."""
    if "registration_epe_mm" in metrics:
        return metrics["registration_epe_mm"]
    if "epe_mm" in metrics:
        return metrics["epe_mm"]
    return 1.0 - metrics.get("dice", 0.0)


@dataclass
class TrainingState:
    """Where a run is: the stage (index into the plan), updates done in it, total updates done,
    the history (one record per update and per validation) and the best score of the stage."""

    stage_index: int = 0
    stage_step: int = 0
    done: int = 0
    best_score: float = float("inf")
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Train ``model`` on ``batches`` (``batches(seed)`` -> TrainingBatch) for ``steps``
    updates per stage (``{stage: n}``, in that order).

    ``validation``: fixed pairs scored after every ``epoch_steps`` updates and at the end of each
    stage; ``registration_validation(model)``: more figures at the same times (e.g.
    :func:`dmmreg.training.validation.validate_registration`), whose
    ``registration_epe_mm`` then chooses the best weights; ``run_folder``: where checkpoints go
    (None: none); ``cancel()``: polled after every update; ``progress(kind, fraction, message,
    record=...)``; ``learning_rate``: when given, the
    optimisers' rates are scaled so the largest equals it (the method's ratios are kept);
    ``decay_steps``: every that many updates of a stage the rates drop to a tenth (the step
    schedule of 003_2f2aa96e65959a3c.txt sec. 4.4, 1/10 every 50 epochs; None: constant);
    ``max_gradient_norm``: each optimiser's gradients are clipped to this global norm before its
    step (a guard against the loss spikes that can throw a network off; None: no clipping);
    ``device``: on CUDA the forward passes run in bfloat16 autocast (mixed precision);
    ``loss``: ``"paper"`` (the method's own loss, :meth:`LearnedMethod.training_step`) or
    ``"known-warp"`` (:func:`known_warp_terms`, for pairs with a known warp: the supervised
    start of a curriculum)."""

    def __init__(self, model: LearnedMethod, batches: BatchSource, steps: dict[str, int], *,
                 validation: list[TrainingBatch] = (), epoch_steps: int = 100, seed: int = 0,
                 run_folder: str | os.PathLike | None = None, device="cpu", learning_rate: float | None = None,
                 decay_steps: int | None = None, max_gradient_norm: float | None = None,
                 registration_validation: Callable[[LearnedMethod], dict[str, float]] | None = None,
                 cancel: Callable[[], bool] | None = None, progress=None, loss: str = "paper"):
        if loss not in LOSSES:
            raise InputError(f"training loss {loss!r}: choose {', '.join(LOSSES)}")
        unknown = [s for s in steps if s not in model.stages]
        if unknown:
            raise InputError(f"the {model.name} model has stages {', '.join(model.stages)}, not {', '.join(unknown)}")
        self.model, self.batches, self.seed = model, batches, seed
        self.steps = {stage: int(steps[stage]) for stage in model.stages if stage in steps}
        self.validation = list(validation)
        self.registration_validation = registration_validation
        self.epoch_steps = max(1, int(epoch_steps))
        self.run_folder = None if run_folder is None else Path(run_folder)
        self.device = torch.device(device)
        self.learning_rate = learning_rate
        self.decay_steps = decay_steps
        self.max_gradient_norm = max_gradient_norm
        self.cancel = cancel or (lambda: False)
        self.progress = progress or (lambda *args, **kwargs: None)
        self.loss = loss
        self.state = TrainingState()
        self.optimisers: list[torch.optim.Optimizer] = []
        self._best: dict[str, torch.Tensor] | None = None

    # ---------------------------------------------------------------- running

    @property
    def stage_names(self) -> list[str]:
        return list(self.steps)

    @property
    def total_steps(self) -> int:
        return sum(self.steps.values())

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _start_stage(self) -> None:
        stage = self.stage_names[self.state.stage_index]
        self.optimisers = self.model.make_optimisers(stage)
        if self.learning_rate is not None:
            top = max(group["lr"] for o in self.optimisers for group in o.param_groups)
            for optimiser in self.optimisers:
                for group in optimiser.param_groups:
                    group["lr"] = group["lr"] * self.learning_rate / top
        if self.max_gradient_norm is not None:
            for optimiser in self.optimisers:
                optimiser.register_step_pre_hook(self._clip_gradients)

    def _clip_gradients(self, optimiser: torch.optim.Optimizer, *_) -> None:
        parameters = [p for group in optimiser.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(parameters, self.max_gradient_norm)

    def run(self) -> list[dict]:
        """Train to the end (or raise :class:`~dmmreg.errors.Cancelled` after writing a checkpoint).
        Returns the history.  The model ends with the best validated weights of its last stage."""
        self.model.to(self.device).train()
        # seconds count on from a resumed run's last record
        start = time.perf_counter() - (self.state.history[-1]["seconds"] if self.state.history else 0.0)
        if self.state.done == 0:
            torch.manual_seed(self.seed)  # the methods' own random draws (e.g. NMI voxel samples)
        while self.state.stage_index < len(self.stage_names):
            stage = self.stage_names[self.state.stage_index]
            if self.state.stage_step == 0 and self.validates:  # the weights a stage starts from compete too
                self._validate(start, "before training" if self.state.done == 0 else f"before stage {stage}")
            if not self.optimisers:
                self._start_stage()
            while self.state.stage_step < self.steps[stage]:
                batch = self.batches(self.seed + self.state.done).to(self.device)
                with self._autocast():
                    terms = self._update(batch, stage)
                self.state.stage_step += 1
                self.state.done += 1
                if self.decay_steps and self.state.stage_step % self.decay_steps == 0:
                    for optimiser in self.optimisers:  # the rates travel in the checkpoints' optimiser groups
                        for group in optimiser.param_groups:
                            group["lr"] *= 0.1
                record = {"kind": "train", "stage": stage, "step": self.state.stage_step,
                          "seconds": round(time.perf_counter() - start, 3), **terms}
                self.state.history.append(record)
                self.progress("train", self.state.done / max(self.total_steps, 1),
                              f"{stage} step {self.state.stage_step}/{self.steps[stage]}: loss {terms['total']:.4f}", record=record)
                end_of_epoch = self.state.stage_step % self.epoch_steps == 0 or self.state.stage_step == self.steps[stage]
                if end_of_epoch:
                    if self.validates:
                        self._validate(start, f"{stage} epoch {-(-self.state.stage_step // self.epoch_steps)}")
                    self.save_checkpoint()
                if self.cancel():
                    self.save_checkpoint()
                    raise Cancelled(f"cancelled after {self.state.done} of {self.total_steps} updates; "
                                    f"resume from {self.run_folder}" if self.run_folder else "cancelled")
            self._end_stage()
        return self.state.history

    def _update(self, batch: TrainingBatch, stage: str) -> dict[str, float]:
        if self.loss == "paper":
            return self.model.training_step(batch, self.optimisers, stage)
        if batch.true_displacement is None:
            raise InputError("the known-warp loss needs pairs with a known warp (not pairs across subjects)")
        for optimiser in self.optimisers:
            optimiser.zero_grad(set_to_none=True)
        terms = known_warp_terms(self.model, batch)
        terms["total"].backward()
        for optimiser in self.optimisers:
            optimiser.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    @property
    def validates(self) -> bool:
        return bool(self.validation) or self.registration_validation is not None

    def _validate(self, start: float, when: str) -> None:
        metrics = validate(self.model, self.validation, self.device) if self.validation else {}
        if self.registration_validation is not None:
            metrics.update(self.registration_validation(self.model))
        stage = self.stage_names[min(self.state.stage_index, len(self.stage_names) - 1)]
        record = {"kind": "validation", "stage": stage, "step": self.state.stage_step, "done": self.state.done,
                  "seconds": round(time.perf_counter() - start, 3), **metrics}
        self.state.history.append(record)
        text = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        self.progress("validate", self.state.done / max(self.total_steps, 1), f"validation {when}: {text}", record=record)
        if score(metrics) < self.state.best_score:  # the starting weights compete too: never end worse
            self.state.best_score = score(metrics)
            self._best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _end_stage(self) -> None:
        if self._best is not None:
            self.model.load_state_dict(self._best)
        self._best = None
        self.state.stage_index += 1
        self.state.stage_step = 0
        self.state.best_score = float("inf")
        self.optimisers = []
        self.save_checkpoint()

    def best_validation(self) -> dict[str, float]:
        """The validation record of the weights the model ends with (the best of the last stage)."""
        last_stage = self.stage_names[-1]
        records = [r for r in self.state.history if r["kind"] == "validation" and r["stage"] == last_stage]
        if not records:
            return {}
        best = min(records, key=score)
        return {k: v for k, v in best.items() if k not in ("kind", "stage")}

    def baseline_validation(self) -> dict[str, float]:
        """Validation of the weights training started from (before any update)."""
        for record in self.state.history:
            if record["kind"] == "validation" and record["done"] == 0:
                return {k: v for k, v in record.items() if k not in ("kind", "stage", "step", "done", "seconds")}
        return {}

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        """Write the run's state (no-op without a run folder); see the module docstring."""
        if self.run_folder is None:
            return
        from safetensors.torch import save_file

        self.run_folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
        groups = []
        for i, optimiser in enumerate(self.optimisers):
            state = optimiser.state_dict()
            for index, values in state["state"].items():
                for name, value in values.items():
                    tensors[f"optimiser.{i}.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
            groups.append(state["param_groups"])
        if self._best is not None:
            tensors.update({f"best.{k}": v.cpu().contiguous() for k, v in self._best.items()})
        tensors["random.cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["random.cuda"] = torch.cuda.get_rng_state(self.device)
        weights = f"checkpoint-{self.state.done:07d}.safetensors"
        atomic_write(str(self.run_folder / weights), lambda tmp: save_file(tensors, tmp))
        contents = {"weights": weights, "optimiser_groups": groups, "stage_index": self.state.stage_index,
                    "stage_step": self.state.stage_step, "done": self.state.done,
                    "best_score": self.state.best_score if np.isfinite(self.state.best_score) else None,
                    "history": self.state.history}
        text = json.dumps(contents)
        atomic_write(str(self.run_folder / CHECKPOINT), lambda tmp: Path(tmp).write_text(text))
        for old in self.run_folder.glob("checkpoint-*.safetensors"):
            if old.name != weights:
                old.unlink(missing_ok=True)

    def load_checkpoint(self) -> bool:
        """Continue from the run folder's checkpoint; False when there is none."""
        if self.run_folder is None or not (self.run_folder / CHECKPOINT).exists():
            return False
        from safetensors.torch import load_file

        contents = json.loads((self.run_folder / CHECKPOINT).read_text())
        tensors = load_file(str(self.run_folder / contents["weights"]))
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        self._best = best or None
        self.state = TrainingState(contents["stage_index"], contents["stage_step"], contents["done"],
                                   float("inf") if contents["best_score"] is None else contents["best_score"],
                                   contents["history"])
        torch.set_rng_state(tensors["random.cpu"])
        if "random.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["random.cuda"], self.device)
        self.model.to(self.device)
        self.optimisers = []
        if self.state.stage_index < len(self.stage_names) and contents["optimiser_groups"]:
            self._start_stage()
            for i, (optimiser, groups) in enumerate(zip(self.optimisers, contents["optimiser_groups"])):
                state: dict[int, dict] = {}
                for key, value in tensors.items():
                    parts = key.split(".")
                    if parts[0] == "optimiser" and int(parts[1]) == i:
                        state.setdefault(int(parts[2]), {})[parts[3]] = value.to(self.device) if value.ndim else value
                optimiser.load_state_dict({"state": state, "param_groups": groups})
        return True


def train(model: LearnedMethod, batches: Callable[[int], TrainingBatch], steps: int | dict[str, int],
          stages=None, device="cpu", progress=None) -> list[dict]:
    """Train ``model`` in memory (no validation, no checkpoints) for ``steps`` updates per stage
    (``stages``: default all of the model's); ``batches(k)`` is the batch of update ``k``.
    Returns one record per update: ``{"stage", "step", "seconds", <every loss term>}``."""
    stages = list(model.stages if stages is None else stages)
    per_stage = {stage: steps if isinstance(steps, int) else steps[stage] for stage in stages}
    report = None if progress is None else (lambda stage, fraction, message, **_: progress(stage, fraction, message))
    trainer = Trainer(model, batches, per_stage, epoch_steps=max(per_stage.values()) or 1, device=device, progress=report)
    return [r for r in trainer.run() if r["kind"] == "train"]
