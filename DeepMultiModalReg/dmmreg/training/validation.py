"""Validation through the whole registration: what a user gets, not what the network sees.

The trainer's pair validation (:func:`dmmreg.training.trainer.validate`) scores the network on its model
grid, on pairs drawn like the training pairs.  A learned registration is more than that: an
affine pre-alignment, resampling onto the model grid, the network, and the map back at full
resolution (:func:`~dmmreg.methods.learned.register_with_model`).  The two can disagree: a 3D
MIDIR can improve on its model-grid pairs while its whole registrations of held-out cases are
worse than their pre-alignment alone (benchmarks/README.md, "Training: pair validation against
the whole registration").

A :class:`RegistrationCase` is a held-out subject's contrast (for a 2D model, an axial slice
of it) deformed at full resolution by a random known warp
(:func:`~dmmreg.known_warp.random_known_warp`, the registration benchmark's generator) as the
fixed image and another contrast, undeformed, as the moving one; its pre-alignment is computed
once.  :func:`validate_registration` runs the whole registration of
every case from that pre-alignment and returns the endpoint error in the brain (mm) of the
pre-alignment alone and of the registration, and the folding %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .cohorts import Subject
from ..errors import InputError
from ..image import Image, axial_slice
from ..image_io import read_image
from ..known_warp import deform, endpoint_error, random_known_warp
from ..methods.learned import LearnedMethod, register_with_model
from ..result import RegistrationResult
from .pairs import middle_slices

SCORED_VOXEL_STRIDE = 2  # endpoint errors on every 2nd voxel per axis of the brain (1/8 of them)


@dataclass
class RegistrationCase:
    """``fixed(p) = contrast(G(p))`` with ``truth`` = G; ``moving`` is aligned with the undeformed
    contrast; ``scored``: fixed-grid voxels (a boolean array) where errors are measured;
    ``initial_affine``: the pre-alignment (fixed point -> moving point, LPS)."""

    name: str
    fixed: Image
    moving: Image
    truth: RegistrationResult
    scored: np.ndarray
    initial_affine: np.ndarray

    def prealignment(self) -> RegistrationResult:
        return RegistrationResult(self.fixed.geometry, self.moving.geometry, affine=self.initial_affine)


def registration_cases(subjects: list[Subject], contrast_pairs, count: int, model: LearnedMethod,
                       seed: int = 20_000, progress=None) -> list[RegistrationCase]:
    """``count`` known-warp cases from ``subjects`` (volumes; for a 2D model, an axial slice of
    each through the middle 60 % of the brain, drawn from the case's seed), cycling through the
    subjects and their usable ``(fixed, moving)`` contrast pairs (None: each contrast against the
    first one), warp seeds ``seed``, ``seed + 1``...; each pre-aligned as ``model``'s
    registrations are."""
    from ..methods.optimise import prealign

    report = progress or (lambda *_: None)
    plans = []
    for subject in subjects:
        names = list(subject.images)
        if contrast_pairs:
            pairs = [tuple(p) for p in contrast_pairs]
        else:
            pairs = [(c, names[0]) for c in names[1:]] or [(names[0], names[0])]
        plans += [(subject, f, m) for f, m in pairs if f in subject.images and m in subject.images]
    if not plans:
        raise InputError("no held-out subject has the contrast pairs asked for; validation through the whole "
                         "registration needs held-out subjects with those contrasts")
    read = {}  # (subject, contrast) -> Image, each file read once

    def image(subject: Subject, contrast: str) -> Image:
        key = (subject.name, contrast)
        if key not in read:
            read[key] = read_image(subject.images[contrast], f"{contrast} image of subject {subject.name!r}")
        return read[key]

    cases = []
    for k in range(count):
        subject, fixed_contrast, moving_contrast = plans[k % len(plans)]
        report("validate", k / count, f"preparing registration case {k + 1}/{count} ({subject.name}, "
                                      f"{moving_contrast} to deformed {fixed_contrast})")
        source, moving = image(subject, fixed_contrast), image(subject, moving_contrast)
        brain = ndimage.binary_fill_holes(source.array > source.array.min())
        name = f"{subject.name}-{moving_contrast}-to-{fixed_contrast}-{seed + k}"
        if model.dim == 2:
            if moving.geometry != source.geometry:
                raise InputError(f"subject {subject.name!r}: its {fixed_contrast} and {moving_contrast} volumes are on "
                                 "different grids; a 2D model is validated on one axial slice of both, so resample them "
                                 "onto one grid")
            index = _brain_slice(brain, np.random.default_rng(seed + k))
            source, moving, brain = axial_slice(source, index), axial_slice(moving, index), brain[index]
            name += f"-slice{index}"
        truth = random_known_warp(source.geometry, seed + k, mask=brain)
        fixed = deform(source, truth)
        scored = deform(source.with_array(brain.astype(np.uint8)), truth, label=True).array > 0
        grid = np.zeros_like(scored)
        grid[(slice(None, None, SCORED_VOXEL_STRIDE),) * grid.ndim] = True
        affine = prealign(fixed, moving, transform="translation" if model.predicts_affine else "affine")
        cases.append(RegistrationCase(name, fixed, moving, truth, scored & grid, affine))
    return cases


def _brain_slice(brain: np.ndarray, rng: np.random.Generator) -> int:
    """A slice index (first array axis) through the middle 60 % of the brain mask's extent."""
    occupied = np.flatnonzero(brain.any(axis=(1, 2)))
    start, stop = middle_slices(int(occupied.min()), int(occupied.max()))
    return int(rng.integers(start, stop + 1))


def validate_registration(model: LearnedMethod, cases: list[RegistrationCase], device="cpu") -> dict[str, float]:
    """Means over ``cases`` of the endpoint error (mm) of the pre-alignment alone
    (``registration_epe_before_mm``) and of the whole registration (``registration_epe_mm``),
    and the folding % of the registration (``registration_folding_percent``) in the brain."""
    was_training = model.training
    before, after, folding = [], [], []
    for case in cases:
        result = register_with_model(model, case.fixed, case.moving, initial_affine=case.initial_affine, device=device)
        before.append(endpoint_error(case.prealignment(), case.truth, case.scored).mean())
        after.append(endpoint_error(result, case.truth, case.scored).mean())
        folding.append(100 * float((result.jacobian_determinant().array[case.scored] <= 0).mean()))
    model.train(was_training)
    return {"registration_epe_before_mm": float(np.mean(before)), "registration_epe_mm": float(np.mean(after)),
            "registration_folding_percent": float(np.mean(folding))}
