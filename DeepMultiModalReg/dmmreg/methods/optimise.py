"""Method ``optimise``: multi-resolution instance optimisation, no trained weights.

1. Intensities normalised by robust percentiles; the moving image's centre of mass is aligned
   with the fixed one (unless an initial affine is given).
2. Affine: rotation, scaling, shear and translation about the fixed image centre, optimised
   with Adam on a coarse-to-fine pyramid (default 8, 4, 2, 1 mm; 8, 4, 2 mm where the deformable
   stage follows).  A rigid transform
   (``transform="rigid"``) optimises the rotation (three angles; one in 2D) and translation
   only, so its determinant is 1 and it neither scales nor shears; ``"rigid"`` and ``"affine"``
   stop here (no displacement field).
3. Deformable: a stationary velocity field parameterised by cubic B-spline control points
   (003_2f2aa96e65959a3c.txt sec. 3.2.1: dense velocity by transposed convolution, displacement
   by scaling and squaring), optimised on the same similarity plus a diffusion penalty on the
   velocity (eq. 5), on a pyramid of image resolutions (4, 2, 1 mm).  The gradient is passed to
   the velocity as if d exp(v) / dv were the identity (as diffeomorphic demons do), so scaling
   and squaring runs without autograd: far faster, about as accurate on the known-warp cases
   (benchmarks/README.md, "optimise").  The field is evaluated on a grid coarser than the
   images (the B-spline is smooth at the control spacing) and interpolated linearly at the
   image points, which is also how the result is written and applied.

The similarity is NMI with Gaussian Parzen windows (32 bins, 20 000 voxels drawn anew at
each step; eqs. 1-3) by default; LNCC and MIND-SSC can be chosen (they use the whole level image instead of samples).
Fixed and moving masks restrict the similarity to the fixed mask and to points that map into
the moving mask.  Without a fixed mask the samples come from the dilated foreground, background
and scalp included, except on the levels at or finer than ``head_levels_mm`` (default 2 mm) of
the rigid and affine transforms' stage: there they come from the fixed image's head only
(``dmmreg.image.head_mask``), weighted by ``dmmreg.image.head_weight`` (the scalp band's bright
fat, whose edge the chemical shift moves differently in each series, down-weighted), as
background noise and scalp pulled raw clinical series off the brain's alignment; the coarse
levels keep the background (the head mask there sent a skull-stripped 2D slice off), and so
do the deformable transform's affine and deformable stages (benchmarks/README.md, "Raw clinical
visits"; on its skull-stripped known-warp cases the weighting cost 0.07 mm, on the raw series of
one sitting it changed the result by 0.02 mm, and it costs about 0.3 s a run).  For the affine and
deformable transforms that stage's NMI samples are also jittered across thick slices (a free
scale otherwise fitted the interpolation between coinciding slices).  Result: the
resampling transform ``T(p) = A(p + u(p))`` and the inverse field.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch

from .. import losses, regularisers, spatial
from . import check_transform
from ..adam import Adam
from ..errors import InputError
from ..geometry import Geometry
from ..image import Image, head_weight, normalise_intensity
from ..progress import ProgressCallback
from ..result import RegistrationResult


@dataclass(frozen=True)
class OptimiseSettings:
    """Settings of :func:`register_optimise`; lengths in mm."""

    similarity: str = "nmi"  # nmi | lncc | mind
    # pyramids end at the image resolution: multi-modal NMI optima at coarse levels are biased
    # (e.g. T1's dark CSF merges with the background once smoothed), so the last level decides
    affine_levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0)
    # 40 at 2 and 1 mm: with 20 and 10, Adam's last steps left raw thick-slice pairs 0.1-0.3 mm
    # apart between sampling seeds (a flat pitch of the 3 mm slices)
    affine_iterations: tuple[int, ...] = (60, 30, 40, 40)
    # where a deformable stage follows, the affine stage runs the first levels of
    # affine_levels_mm with these iterations (8, 4, 2 mm): its 1 mm level and the longer schedule
    # cost 1.4 s on 240x240x155 and moved the final error by under 0.01 mm (benchmarks/README.md,
    # "optimise"); the deformable stage works at 1 mm itself
    affine_iterations_before_deformable: tuple[int, ...] = (40, 20, 30)
    deformable_levels_mm: tuple[float, ...] = (4.0, 2.0, 1.0)
    deformable_iterations: tuple[int, ...] = (15, 15, 20)
    # 12 mm control points and diffusion weight 2 (were 10 mm and 0.5): on the registration
    # benchmark's known-warp cases the stiffer field cut the mean error by a quarter
    # (benchmarks/README.md, "optimise": chosen on seed 0, 1.76 -> 1.28 mm over seeds 0 and 1)
    control_spacing_mm: float = 12.0
    field_spacing_mm: float = 5.0
    regularisation: float = 2.0
    integration_steps: int = 4
    # 20 000 NMI samples and 15 steps at 4 mm (were 30 000 and 30): 21 % less time for +0.03 mm
    # on the registration benchmark's cases (benchmarks/README.md, "optimise")
    samples: int = 20_000
    # 32 bins (MIDIR uses 32 for its 2D cardiac task, 64 for 3D brains): 64 left too few samples
    # per joint-histogram cell on coarse 2D levels and misregistered slices; 3D results unchanged
    bins: int = 32
    margin_mm: float = 10.0
    transform: str = "deformable"  # rigid | affine | deformable (dmmreg.methods.TRANSFORMS)
    seed: int = 0
    # rigid and affine transforms: levels at or finer than this (mm) sample the fixed head only,
    # the outer scalp_band_mm weighted from scalp_floor up to 1 (dmmreg.image.head_weight); 0: never
    head_levels_mm: float = 2.0
    scalp_band_mm: float = 10.0
    scalp_floor: float = 0.1
    # affine stage of the affine and deformable transforms: NMI samples jittered across thick
    # slices (_Similarity); without it a free scale fitted the interpolation between slices
    # (a raw T1 to FLAIR pair shrank 1.5 % along the slices); rigid is better without it
    thick_slice_jitter: bool = True


QUALITY_PRESETS = {
    "fast": dict(affine_iterations=(40, 20, 10, 10), affine_iterations_before_deformable=(40, 20, 10),
                 deformable_iterations=(20, 10, 10), samples=20_000),
    "balanced": {},
    "accurate": dict(affine_iterations=(100, 50, 40, 40), affine_iterations_before_deformable=(100, 50, 40, 40),
                     deformable_iterations=(80, 40, 40), samples=80_000, field_spacing_mm=3.33),
}


def settings_for(quality: str = "balanced", **overrides) -> OptimiseSettings:
    """Settings of a named speed/accuracy preset ("fast", "balanced", "accurate") with overrides."""
    if quality not in QUALITY_PRESETS:
        raise InputError(f"unknown quality {quality!r}; choose one of {', '.join(QUALITY_PRESETS)}")
    return replace(OptimiseSettings(), **QUALITY_PRESETS[quality], **overrides)


@dataclass
class _Level:
    """One pyramid level: fixed and moving images (normalised, smoothed) at one resolution."""

    fixed: torch.Tensor
    fixed_geometry: Geometry
    fixed_weight: torch.Tensor | None
    moving: torch.Tensor  # channel 0 image, channel 1 the moving mask (only when one is given)
    moving_geometry: Geometry
    points: torch.Tensor  # (N, dim) physical points of fixed voxels with weight > 0
    values: torch.Tensor  # (N,) fixed intensities there
    point_weights: torch.Tensor  # (N,)


def _tensor(array: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)[None, None]


def _prepare_levels(fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None,
                    spacings, device) -> dict[float, _Level]:
    """Normalised images (moving with its mask, if any, as channel 1) and their pyramid at ``spacings`` mm."""
    fixed_t = _tensor(normalise_intensity(fixed.array, None if fixed_mask is None else fixed_mask.array), device)
    moving_norm = _tensor(normalise_intensity(moving.array, None if moving_mask is None else moving_mask.array), device)
    moving_t = moving_norm if moving_mask is None else torch.cat([moving_norm, _tensor(moving_mask.array > 0, device)], dim=1)
    fixed_mask_t = None if fixed_mask is None else _tensor(fixed_mask.array > 0, device)
    levels = _make_levels(fixed_t, fixed, fixed_mask_t, moving_t, moving, spacings, device)
    if any(lv.points.shape[0] < 8 for lv in levels.values()):
        raise InputError("the fixed mask selects (almost) no voxels; check the fixed mask")
    return levels


def _make_levels(fixed_t, fixed: Image, fixed_mask_t, moving_t, moving: Image, spacings, device) -> dict[float, _Level]:
    """Pyramid levels, finest first, each smoothed and resampled from the next finer one (only
    the first level touches the full-resolution images)."""
    levels = {}
    f, fg, m, mg, fw = fixed_t, fixed.geometry, moving_t, moving.geometry, fixed_mask_t
    for spacing in sorted(spacings):
        fg_next, mg_next = fixed.geometry.with_spacing(spacing), moving.geometry.with_spacing(spacing)
        f, m = spatial.resample_image(f, fg, fg_next), spatial.resample_image(m, mg, mg_next)
        if fw is not None:
            fw = (spatial.resample_image(fw, fg, fg_next, mode="nearest") > 0.5).float()
        fg, mg = fg_next, mg_next
        points = spatial.grid_points(fg, device=device).reshape(-1, fg.dim)
        values = f.reshape(-1)
        # sample where there is something to align: the mask, or the (dilated) foreground
        keep = (fw if fw is not None else _foreground(f, radius=2)).reshape(-1) > 0
        weights = torch.ones_like(values) if fw is None else fw.reshape(-1)
        levels[spacing] = _Level(f, fg, fw, m, mg, points[keep], values[keep], weights[keep])
    return levels


def _head_weighted(levels: dict[float, _Level], settings: OptimiseSettings) -> dict[float, _Level]:
    """``levels`` with those at or finer than ``settings.head_levels_mm`` sampling only the fixed
    image's head, each point weighted by :func:`dmmreg.image.head_weight`, computed on the
    coarsest of those levels (2 mm by default, where the 10 mm scalp band spans five voxels; on
    the 1 mm level of a 240x240x155 volume its distance transform and hole filling took 2.8 s)
    and resampled linearly to the finer ones; the other levels are returned as they are."""
    chosen = [spacing for spacing in levels if spacing <= settings.head_levels_mm]
    if not chosen:
        return levels
    coarsest = levels[max(chosen)]
    weight = _tensor(head_weight(coarsest.fixed[0, 0].cpu().numpy(), coarsest.fixed_geometry.spacing,
                                 settings.scalp_band_mm, settings.scalp_floor), coarsest.fixed.device)
    weighted = dict(levels)
    for spacing in chosen:
        lv = levels[spacing]
        w = spatial.resample_image(weight, coarsest.fixed_geometry, lv.fixed_geometry).reshape(-1)
        keep = w >= settings.scalp_floor / 2  # the head mask, its edge as resampled
        points = spatial.grid_points(lv.fixed_geometry, device=lv.fixed.device).reshape(-1, lv.fixed_geometry.dim)
        weighted[spacing] = replace(lv, points=points[keep], values=lv.fixed.reshape(-1)[keep], point_weights=w[keep])
    return weighted


def _foreground(image: torch.Tensor, radius: int, threshold: float = 0.02) -> torch.Tensor:
    """Voxels brighter than ``threshold`` (normalised intensity), dilated by ``radius`` voxels
    (a separable box sum of shifted copies, :func:`dmmreg.spatial.smooth_axis`, then > 0; torch's
    max pooling took 0.7 s at 240x240x155) so the object's boundary and a band of background stay in."""
    mask = (image > threshold).float()
    for axis in range(2, image.ndim):
        mask = spatial.smooth_axis(mask, [1.0] * (2 * radius + 1), axis)
    return mask > 0


class _Similarity:
    """Similarity of the fixed level image and the moving one seen through a transform."""

    def __init__(self, kind: str, level: _Level, samples: int, bins: int, generator: torch.Generator,
                 thick_slice_jitter: bool = False):
        """``thick_slice_jitter``: NMI samples move to a uniformly random point of their voxel
        along the axes whose spacing is over 1.5 times the level's finest (thick slices), the
        fixed intensity interpolated there, so no sample sits on a slice centre."""
        if kind not in ("nmi", "lncc", "mind"):
            raise InputError(f"unknown similarity {kind!r}; choose nmi, lncc or mind")
        self.kind, self.level, self.samples, self.bins, self.generator = kind, level, samples, bins, generator
        spacing = np.asarray(level.fixed_geometry.spacing, dtype=np.float64)
        thick = spacing * (spacing > 1.5 * spacing.min())  # mm per axis (x, y, z), 0 where not thick
        self.jitter_mm = torch.as_tensor(np.asarray(level.fixed_geometry.direction) * thick, dtype=torch.float32,
                                         device=level.points.device) if thick_slice_jitter and thick.any() else None

    def __call__(self, mapping: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``mapping`` takes fixed points ``(1, ..., dim)`` to moving points; returns the loss."""
        lv = self.level
        if self.kind == "nmi":
            n = lv.points.shape[0]
            if n > self.samples:
                # sorted: neighbouring samples read neighbouring memory of the images (cache hits)
                idx = torch.randint(n, (self.samples,), generator=self.generator, device="cpu").sort().values.to(lv.points.device)
                pts, vals, wts = lv.points[idx], lv.values[idx], lv.point_weights[idx]
            else:
                pts, vals, wts = lv.points, lv.values, lv.point_weights
            if self.jitter_mm is not None:
                offset = torch.rand(pts.shape[0], pts.shape[1], generator=self.generator).to(pts.device) - 0.5
                pts = pts + offset @ self.jitter_mm.T  # direction @ diag(thick spacing) @ offset, mm
                vals = spatial.sample(lv.fixed, lv.fixed_geometry, pts[None]).reshape(-1)
                wts = wts * spatial.inside_weight(pts[None], lv.fixed_geometry)[0]  # past the end slices: less
            moved, inside = self._moving_at(mapping(pts[None]))
            return -losses.normalised_mutual_information(vals[None], moved.reshape(1, -1), wts[None] * inside.reshape(1, -1), self.bins)[0]
        pts = spatial.grid_points(lv.fixed_geometry, device=lv.fixed.device)[None]
        moved, inside = self._moving_at(mapping(pts))
        weight = inside if lv.fixed_weight is None else inside * lv.fixed_weight
        measure = losses.local_normalised_cross_correlation if self.kind == "lncc" else losses.mind_similarity
        return -measure(lv.fixed, moved, weight)[0]

    def _moving_at(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Moving intensities ``(1, 1, ...)`` at moving-space ``points (1, ..., dim)`` and the weight
        of being inside the moving image (and its mask): the moving mask sampled linearly, or,
        without one, the same weight computed from the points (no second channel to sample)."""
        lv = self.level
        sampled = spatial.sample(lv.moving, lv.moving_geometry, points)
        if sampled.shape[1] == 2:
            return sampled[:, :1], sampled[:, 1:]
        return sampled, spatial.inside_weight(points, lv.moving_geometry)[:, None]


#: Adam learning rates of the affine parameters per mm of level spacing (mm, radians, log-factor, shear).
AFFINE_LEARNING_RATES = {"translation": 0.25, "angles": 0.004, "log_scale": 0.002, "shear": 0.002}


def _rigid_start(initial_affine: np.ndarray) -> np.ndarray:
    """``initial_affine`` with its linear part replaced by the nearest rotation (polar
    decomposition), so a rigid registration from it stays rigid; ``InputError`` when it scales,
    shears or mirrors by more than 0.1 %."""
    dim = initial_affine.shape[0] - 1
    u, singular_values, vt = np.linalg.svd(initial_affine[:dim, :dim])
    rotation = u @ vt
    if np.max(np.abs(singular_values - 1)) > 1e-3 or np.linalg.det(rotation) < 0:
        raise InputError(f"a rigid registration cannot start from an initial transform that scales, shears or mirrors "
                         f"(its singular values are {np.round(singular_values, 4).tolist()}); give a rigid initial "
                         "transform, or choose the affine or deformable transform")
    rigid = np.array(initial_affine, dtype=np.float64)
    rigid[:dim, :dim] = rotation
    return rigid


def _cosine_lr(optimiser, base: list[float], step: int, total: int) -> None:
    factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    for group, lr in zip(optimiser.param_groups, base):
        group["lr"] = lr * factor


def register_optimise(
    fixed: Image,
    moving: Image,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    device: str | torch.device = "cpu",
    settings: OptimiseSettings = OptimiseSettings(),
    initial_affine: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``; see the module docstring.  ``progress(stage, fraction,
    message)`` is called along the way and may raise :class:`dmmreg.errors.Cancelled`."""
    check_transform(settings.transform)
    rigid = settings.transform == "rigid"
    if rigid and initial_affine is not None:
        initial_affine = _rigid_start(np.asarray(initial_affine, dtype=np.float64))
    start = time.perf_counter()
    report = progress or (lambda *_: None)
    device = torch.device(device)
    dim = fixed.dim
    generator = torch.Generator().manual_seed(settings.seed)

    deformable = settings.transform == "deformable" and sum(settings.deformable_iterations) > 0
    affine_schedule = list(zip(settings.affine_levels_mm, settings.affine_iterations_before_deformable if deformable
                               else settings.affine_iterations))
    report("preprocess", 0.0, "normalising intensities and building the image pyramid")
    levels_mm = sorted({spacing for spacing, _ in affine_schedule} | set(settings.deformable_levels_mm if deformable else ()),
                       reverse=True)
    levels = _prepare_levels(fixed, moving, fixed_mask, moving_mask, levels_mm, device)

    if initial_affine is None:
        coarsest = levels[levels_mm[0]]
        shift = spatial.centre_of_mass(coarsest.moving.prod(dim=1, keepdim=True), coarsest.moving_geometry) - spatial.centre_of_mass(
            coarsest.fixed if coarsest.fixed_weight is None else coarsest.fixed * coarsest.fixed_weight, coarsest.fixed_geometry)
        initial_affine = np.eye(dim + 1)
        initial_affine[:dim, dim] = shift
    initial = torch.as_tensor(initial_affine, dtype=torch.float64, device=device)

    # ---- affine (or rigid) stage -------------------------------------------------------------
    n_rot = 1 if dim == 2 else 3
    sizes = {"translation": dim, "angles": n_rot} if rigid else {"translation": dim, "angles": n_rot, "log_scale": dim, "shear": n_rot}
    params = {name: torch.zeros(n, device=device, requires_grad=True) for name, n in sizes.items()}
    centre = fixed.geometry.centre

    def affine_now(dtype=torch.float32) -> torch.Tensor:
        p = {name: value.to(dtype) for name, value in params.items()}
        return initial.to(dtype) @ spatial.affine_matrix(centre, p["translation"], p["angles"], p.get("log_scale"), p.get("shear"))

    total_steps = sum(n for _, n in affine_schedule) + (sum(settings.deformable_iterations) if deformable else 0)
    done = 0
    affine_levels = levels if fixed_mask is not None or deformable else _head_weighted(
        {spacing: levels[spacing] for spacing, _ in affine_schedule}, settings)
    for spacing, iterations in affine_schedule:
        similarity = _Similarity(settings.similarity, affine_levels[spacing], settings.samples, settings.bins, generator,
                                 thick_slice_jitter=settings.thick_slice_jitter and not rigid)
        base = [AFFINE_LEARNING_RATES[name] * spacing for name in params]
        optimiser = Adam([{"params": [value], "lr": lr} for value, lr in zip(params.values(), base)])
        for step in range(iterations):
            _cosine_lr(optimiser, base, step, iterations)
            optimiser.zero_grad()
            a = affine_now()
            loss = similarity(lambda p: spatial.apply_matrix(p, a))
            loss.backward()
            optimiser.step()
            done += 1
            if step % 10 == 0 or step == iterations - 1:
                report("affine", done / total_steps, f"{'rigid' if rigid else 'affine'} {spacing:g} mm: step {step + 1}/{iterations}, similarity {-loss.item():.4f}")
    affine = affine_now(torch.float64).detach()  # float64: a rigid result's determinant is 1 to 1e-15

    result = RegistrationResult(
        fixed_geometry=fixed.geometry,
        moving_geometry=moving.geometry,
        affine=affine.double().cpu().numpy(),
        method="optimise",
        settings=asdict(settings),
    )
    if deformable:
        _deformable_stage(result, levels, settings, affine.float(), generator, report, done, total_steps, device)
    result.seconds = time.perf_counter() - start
    report("done", 1.0, f"registration finished in {result.seconds:.1f} s")
    return result


def _deformable_stage(result, levels, settings, affine, generator, report, done, total_steps, device) -> None:
    """Optimise a B-spline SVF ``v`` and store the field and its inverse in ``result``.

    Without a field in ``result`` the transform is ``A(p + exp(v)(p))``.  With one (``u0`` on
    its own grid, e.g. a network's answer) the SVF refines it from the fixed side,
    ``A(q + u0(q))`` with ``q = p + exp(v)(p)``, and the composed field (and inverse) is stored on
    ``u0``'s grid."""
    fixed_geometry = result.fixed_geometry
    control = spatial.control_grid(fixed_geometry.with_margin(settings.margin_mm), settings.control_spacing_mm)
    stride = max(1, int(round(settings.control_spacing_mm / settings.field_spacing_mm)))
    field_geometry = spatial.dense_grid(control, stride)
    coefficients = torch.zeros(1, fixed_geometry.dim, *control.shape, device=device, requires_grad=True)
    base = None if result.displacement is None else (
        result.field_geometry,
        spatial.to_channels_first(torch.as_tensor(result.displacement, dtype=torch.float32, device=device)[None]),
    )

    def velocity() -> torch.Tensor:
        return spatial.bspline_to_dense(coefficients, stride)

    def through_base(q: torch.Tensor) -> torch.Tensor:
        return q if base is None else q + spatial.field_at(base[1], base[0], q)

    optimiser = Adam([{"params": [coefficients], "lr": 0.0}])
    for spacing, iterations in zip(settings.deformable_levels_mm, settings.deformable_iterations):
        similarity = _Similarity(settings.similarity, levels[spacing], settings.samples, settings.bins, generator)
        lr = [0.05 * settings.control_spacing_mm]
        for step in range(iterations):
            _cosine_lr(optimiser, lr, step, iterations)
            optimiser.zero_grad()
            v = velocity()
            with torch.no_grad():
                u = spatial.integrate_velocity(v, field_geometry, settings.integration_steps)
            u = u + (v - v.detach())  # value exp(v); gradient passed to v as if du/dv = I

            def mapping(p, u=u):
                return spatial.apply_matrix(through_base(p + spatial.field_at(u, field_geometry, p)), affine)

            loss = similarity(mapping) + settings.regularisation * regularisers.diffusion(v, field_geometry)[0]
            loss.backward()
            optimiser.step()
            done += 1
            if step % 10 == 0 or step == iterations - 1:
                report("deformable", done / total_steps, f"deformable {spacing:g} mm: step {step + 1}/{iterations}, loss {loss.item():.4f}")

    with torch.no_grad():
        v = velocity()
        u = spatial.integrate_velocity(v, field_geometry, settings.integration_steps)
        w = spatial.integrate_velocity(-v, field_geometry, settings.integration_steps)
        if base is not None:
            # u_total(p) = u(p) + u0(p + u(p)); w_total(r) = w0(r) + w(r + w0(r)), on u0's grid
            grid, u0 = base
            w0 = spatial.to_channels_first(torch.as_tensor(result.inverse_displacement, dtype=torch.float32, device=device)[None])
            points = spatial.grid_points(grid, device=device)[None]
            moved = points + spatial.field_at(u, field_geometry, points)
            u = spatial.to_channels_first(through_base(moved) - points)
            back = points + spatial.to_channels_last(w0)
            w = spatial.to_channels_first(back + spatial.field_at(w, field_geometry, back) - points)
            field_geometry = grid
    result.field_geometry = field_geometry
    result.displacement = spatial.to_channels_last(u)[0].double().cpu().numpy()
    result.inverse_displacement = spatial.to_channels_last(w)[0].double().cpu().numpy()


def prealign(fixed: Image, moving: Image, fixed_mask: Image | None = None, moving_mask: Image | None = None,
             device="cpu", transform: str = "affine", initial_affine: np.ndarray | None = None,
             progress: ProgressCallback | None = None) -> np.ndarray:
    """A starting affine for a network (fixed point -> moving point, LPS): this method's
    ``transform`` stage ("rigid" or "affine") on the 8, 4 and 2 mm levels from ``initial_affine``
    (default: the centre-of-mass shift), or, for ``"translation"``, only the centre-of-mass shift."""
    if transform not in ("translation", "rigid", "affine"):
        raise InputError(f"a pre-alignment is a translation, rigid or affine, not {transform!r}")
    levels = dict(affine_levels_mm=(8.0,), affine_iterations=(0,)) if transform == "translation" else dict(
        affine_levels_mm=(8.0, 4.0, 2.0), affine_iterations=(60, 30, 20))
    settings = settings_for("balanced", transform="rigid" if transform == "rigid" else "affine",
                            deformable_levels_mm=(), deformable_iterations=(), **levels)
    return register_optimise(fixed, moving, fixed_mask, moving_mask, device, settings, initial_affine,
                             _as_stage(progress, "prealign", 0.0, 0.3)).affine


def refine_result(result: RegistrationResult, fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None,
                  device, iterations: int, progress: ProgressCallback | None = None) -> RegistrationResult:
    """``result`` (e.g. a network's) refined by ``iterations`` steps of this method's deformable
    stage at the finest level, from the fixed side; the affine is kept.  Returns a new result."""
    settings = settings_for("balanced")
    finest = min(settings.deformable_levels_mm)
    settings = replace(settings, deformable_levels_mm=(finest,), deformable_iterations=(iterations,))
    device = torch.device(device)
    levels = _prepare_levels(fixed, moving, fixed_mask, moving_mask, [finest], device)
    refined = replace(result, settings={**result.settings, "refine_settings": asdict(settings)})
    affine = torch.as_tensor(result.affine, dtype=torch.float32, device=device)
    _deformable_stage(refined, levels, settings, affine, torch.Generator().manual_seed(settings.seed),
                      _as_stage(progress, "refine", 0.6, 0.4), 0, iterations, device)
    return refined


def _as_stage(progress: ProgressCallback | None, stage: str, start: float, span: float) -> ProgressCallback:
    """``progress`` for a part of a larger run: every report becomes stage ``stage`` with its
    fraction mapped to ``start + span * fraction``."""
    report = progress or (lambda *_: None)
    return lambda _, fraction, message: report(stage, start + span * fraction, message)


def register(fixed, moving, fixed_mask=None, moving_mask=None, device="cpu", quality="balanced",
             initial_affine=None, progress=None, transform="deformable", **overrides) -> RegistrationResult:
    """Entry point of the method registry: :func:`register_optimise` with a quality preset and
    ``transform`` (rigid, affine or deformable)."""
    return register_optimise(fixed, moving, fixed_mask, moving_mask, device,
                             settings_for(quality, transform=transform, **overrides), initial_affine, progress)
