"""Training pairs and the training loop shared by the learned methods.

A *known-warp pair* follows the FIRE protocol (000_9877b33c2dcaa129.txt sec. 4.1) on real,
aligned multi-contrast images of one subject: the fixed image is one contrast deformed by a
random known warp ``G``, the moving image another contrast, undeformed, so ``G`` is the exact
answer (used for validation only, never in an unsupervised loss).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from .image import Image
from .known_warp import KnownWarpSettings, deform, random_known_warp
from .methods.learned import LearnedMethod, TrainingBatch, image_tensor, model_grid, onto_model_grid

BatchSource = Callable[[int], TrainingBatch]


def known_warp_batch(fixed_contrast: Image, moving_contrast: Image, config, seed: int,
                     settings: KnownWarpSettings = KnownWarpSettings()) -> TrainingBatch:
    """A known-warp pair on the model grid of ``config`` (a :class:`ModelConfig`).

    ``fixed_contrast`` and ``moving_contrast`` are aligned images of one subject (same grid);
    the fixed image is ``fixed_contrast`` deformed by the random warp ``G`` of ``seed``.  Masks
    are the images' non-zero voxels (the data are skull-stripped)."""
    if fixed_contrast.geometry != moving_contrast.geometry:
        raise ValueError("a known-warp pair needs two aligned contrasts on one grid")
    foreground = fixed_contrast.array > fixed_contrast.array.min()
    truth = random_known_warp(fixed_contrast.geometry, seed, settings, mask=foreground)
    fixed = deform(fixed_contrast, truth)
    geometry = model_grid(fixed.geometry, config.spacing_mm, config.margin_mm)
    fixed_t = onto_model_grid(image_tensor(fixed, None, "cpu"), fixed.geometry, geometry)
    moving_t = onto_model_grid(image_tensor(moving_contrast, None, "cpu"), moving_contrast.geometry, geometry)
    true = torch.from_numpy(truth.resampling_displacement(geometry)).float()
    return TrainingBatch(
        fixed=fixed_t,
        moving=moving_t,
        geometry=geometry,
        fixed_mask=(fixed_t > 0.02).float(),
        moving_mask=(moving_t > 0.02).float(),
        true_displacement=torch.movedim(true, -1, 0)[None],
    )


def endpoint_error(model: LearnedMethod, batch: TrainingBatch) -> tuple[float, float]:
    """Mean endpoint error (mm) inside the fixed mask of a known-warp batch: ``(before, after)``
    (identity vs the model's prediction on the model grid)."""
    from . import spatial

    model.eval()
    with torch.no_grad():
        prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
        points = spatial.grid_points(batch.geometry, device=batch.fixed.device)
        truth = points + spatial.to_channels_last(batch.true_displacement)
        estimate = spatial.transform_points(batch.geometry, prediction.affine, prediction.displacement)
        inside = batch.fixed_mask[:, 0] > 0
        before = (points - truth).norm(dim=-1)[inside].mean()
        after = (estimate - truth).norm(dim=-1)[inside].mean()
    model.train()
    return float(before), float(after)


def train(model: LearnedMethod, batches: BatchSource, steps: int | dict[str, int], stages: Iterable[str] | None = None,
          device="cpu", progress: Callable[[str, float, str], None] | None = None) -> list[dict]:
    """Train ``model`` stage by stage (``stages``: default all of the model's, in order) for
    ``steps`` updates each (or ``{stage: steps}``); ``batches(step)`` gives the batch of a step.

    Returns one record per update: ``{"stage", "step", "seconds", <every loss term>}``."""
    report = progress or (lambda *_: None)
    stages = list(model.stages if stages is None else stages)
    per_stage = {stage: steps if isinstance(steps, int) else steps[stage] for stage in stages}
    total, done, history = sum(per_stage.values()), 0, []
    model.to(device).train()
    start = time.perf_counter()
    for stage in stages:
        optimisers = model.make_optimisers(stage)
        for step in range(per_stage[stage]):
            terms = model.training_step(batches(done).to(device), optimisers, stage)
            done += 1
            history.append({"stage": stage, "step": step, "seconds": time.perf_counter() - start, **terms})
            report("train", done / max(total, 1), f"{stage} step {step + 1}/{per_stage[stage]}: loss {terms['total']:.4f}")
    return history

