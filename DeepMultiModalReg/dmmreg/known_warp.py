"""Random known warps: exact ground truth on real, aligned multi-contrast images.

The protocol of 000_9877b33c2dcaa129.txt (FIRE, sec. 4.1): an image is deformed by a random
transform and registered back.  Here the deformed image becomes the *fixed* image,
``F(p) = I(G(p))``, so the true resampling transform from ``F`` to any image aligned with ``I``
(e.g. the T1 of the same subject) is ``G`` itself:

``G(p) = A(p + b(p))`` with ``A`` an affine about the image centre (rotations, scaling, shifts)
and ``b`` a smooth cubic B-spline displacement (control points ``control_spacing_mm`` apart)
scaled so its mean magnitude inside the mask is ``mean_nonrigid_mm``, capped at
``max_nonrigid_mm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import spatial
from .geometry import Geometry
from .image import Image
from .result import RegistrationResult


@dataclass(frozen=True)
class KnownWarpSettings:
    max_rotation_deg: float = 10.0
    max_scaling: float = 0.10
    max_shift_mm: float = 10.0
    mean_nonrigid_mm: float = 3.0
    max_nonrigid_mm: float = 8.0
    control_spacing_mm: float = 40.0
    field_spacing_mm: float = 4.0
    margin_mm: float = 20.0


def random_known_warp(
    geometry: Geometry,
    seed: int,
    settings: KnownWarpSettings = KnownWarpSettings(),
    mask: np.ndarray | None = None,
) -> RegistrationResult:
    """A random resampling transform ``G`` on ``geometry`` (both fixed and moving space).

    ``mask`` (array on ``geometry``) selects where the non-rigid magnitude is measured; the
    inverse field is included so ``G`` can be written both ways."""
    rng = np.random.default_rng(seed)
    dim = geometry.dim
    n_angles = 1 if dim == 2 else 3
    angles = np.deg2rad(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, n_angles))
    log_scale = np.log1p(rng.uniform(-settings.max_scaling, settings.max_scaling, dim))
    shift = rng.uniform(-settings.max_shift_mm, settings.max_shift_mm, dim)
    affine = spatial.affine_matrix(
        geometry.centre,
        torch.tensor(shift, dtype=torch.float64),
        torch.tensor(angles, dtype=torch.float64),
        torch.tensor(log_scale, dtype=torch.float64),
    ).numpy()

    control = spatial.control_grid(geometry.with_margin(settings.margin_mm), settings.control_spacing_mm)
    stride = max(1, int(round(settings.control_spacing_mm / settings.field_spacing_mm)))
    field_geometry = spatial.dense_grid(control, stride)
    coefficients = torch.from_numpy(rng.standard_normal((1, dim, *control.shape)))
    displacement = spatial.bspline_to_dense(coefficients, stride)

    # scale the magnitude measured on the image voxels (inside the mask)
    points = spatial.grid_points(geometry, dtype=torch.float64)[None]
    on_image = spatial.field_at(displacement, field_geometry, points)[0].norm(dim=-1).numpy()
    inside = on_image[mask > 0] if mask is not None else on_image.ravel()
    scale = settings.mean_nonrigid_mm / inside.mean()
    scale = min(scale, settings.max_nonrigid_mm / inside.max())
    displacement = displacement * scale
    inverse = spatial.invert_displacement(displacement, field_geometry, iterations=50)
    return RegistrationResult(
        fixed_geometry=geometry,
        moving_geometry=geometry,
        affine=affine,
        field_geometry=field_geometry,
        displacement=spatial.to_channels_last(displacement)[0].numpy(),
        inverse_displacement=spatial.to_channels_last(inverse)[0].numpy(),
        method="known-warp",
        settings={"seed": seed, **settings.__dict__},
    )


def deform(image: Image, warp: RegistrationResult, label: bool = False) -> Image:
    """``I(G(p))``: the image as it looks after the known warp (the fixed image of a test case)."""
    return warp.warp(image, mode="nearest" if label else "linear")


def endpoint_error(estimate: RegistrationResult, truth: RegistrationResult, mask: np.ndarray | None = None) -> np.ndarray:
    """|T_est(p) - G(p)| (mm) at every fixed voxel, or at the voxels where ``mask`` > 0."""
    points = spatial.grid_points(truth.fixed_geometry, dtype=torch.float64).numpy()
    if mask is not None:
        points = points[np.asarray(mask) > 0]
    return np.linalg.norm(estimate.resampling_points(points) - truth.resampling_points(points), axis=-1)
