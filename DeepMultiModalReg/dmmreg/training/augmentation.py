"""Random augmentation of training images on a model grid (torch, reproducible from a generator).

Spatial: a random affine about the grid centre (rotation, per-axis scaling, shear, shift) and a
smooth non-rigid displacement (random offsets on a coarse lattice, smoothly interpolated),
returned as the resampling map ``G(p) = A(p + b(p))`` in physical units (LPS, mm): the
augmented image is ``I(G(p))`` and ``G(p) - p`` is its exact ground truth.

Intensity: multiplicative bias field, gamma, Gaussian noise and blur, on images in [0, 1].

Synthetic contrasts from label maps (the idea of SynthMorph, Hoffmann et al. 2022): every label
gets a random intensity, then blur, bias field and noise; networks trained on them learn
features that do not depend on one MRI contrast.

FIRE trains with "moderate-to-strong (20-50% change across at least one dimension) affine and
non-rigid transformations" (000_9877b33c2dcaa129.txt sec. 4.1): :data:`STRONG_AFFINE` draws
those; deformable-only networks run after an affine pre-alignment and are trained with
:data:`RESIDUAL_AFFINE` (what is left after it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import spatial
from ..geometry import Geometry


@dataclass(frozen=True)
class SpatialAugmentation:
    """Ranges of the random spatial transform (each drawn uniformly in ``[-max, max]``).

    ``max_scaling``: relative change of each axis' length (0.5: up to 50 %); ``max_shear``:
    shear factors; ``mean_nonrigid_mm``: mean magnitude of the smooth displacement (drawn
    between 0 and twice this), control points ``control_spacing_mm`` apart."""

    max_rotation_deg: float = 3.0
    max_scaling: float = 0.03
    max_shear: float = 0.0
    max_shift_mm: float = 3.0
    mean_nonrigid_mm: float = 3.0
    control_spacing_mm: float = 40.0


RESIDUAL_AFFINE = SpatialAugmentation()
STRONG_AFFINE = SpatialAugmentation(max_rotation_deg=15.0, max_scaling=0.3, max_shear=0.1, max_shift_mm=15.0)
# what the pre-alignment leaves on the registration benchmark (affine error about 1 mm, the non-rigid rest)
PREALIGNED = SpatialAugmentation(max_rotation_deg=1.0, max_scaling=0.01, max_shift_mm=1.0)
SPATIAL_PRESETS = {"residual": RESIDUAL_AFFINE, "strong": STRONG_AFFINE, "prealigned": PREALIGNED}


@dataclass(frozen=True)
class IntensityAugmentation:
    """``bias``: max amplitude of the log bias field (0.3: up to about +-35 %); ``gamma``: the
    log of the gamma exponent is drawn in ``[-gamma, gamma]``; ``noise``: max standard deviation
    of Gaussian noise (images in [0, 1]); ``blur_voxels``: max Gaussian sigma (voxels)."""

    bias: float = 0.3
    gamma: float = 0.3
    noise: float = 0.03
    blur_voxels: float = 1.0


def _uniform(generator: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _smooth_noise(shape: tuple[int, ...], points: int, generator: torch.Generator, channels: int = 1) -> torch.Tensor:
    """Random values on a ``points``-per-axis lattice interpolated to ``(1, channels, *shape)``
    float32: bicubic in 2D; in 3D (PyTorch has no tricubic mode) trilinear onto a grid 4 times
    coarser, Gaussian-smoothed there to remove the lattice's kinks, then trilinear to ``shape``."""
    dim = len(shape)
    coarse = torch.randn(1, channels, *([points] * dim), generator=generator)
    if dim == 2:
        return F.interpolate(coarse, size=shape, mode="bicubic", align_corners=True)
    small = tuple(max(points, n // 4) for n in shape)
    field = F.interpolate(coarse, size=small, mode="trilinear", align_corners=True)
    field = spatial.gaussian_smooth(field, [n / points / 2 for n in small[::-1]])
    return F.interpolate(field, size=shape, mode="trilinear", align_corners=True)


def random_spatial_transform(geometry: Geometry, generator: torch.Generator,
                             settings: SpatialAugmentation) -> tuple[torch.Tensor, torch.Tensor]:
    """A random resampling map on ``geometry``: ``(A (dim+1, dim+1), b (1, dim, *shape))``,
    float64, physical (mm), so ``G(p) = A(p + b(p))``.  See the module docstring."""
    dim = geometry.dim
    s = settings
    angles = torch.deg2rad(_uniform(generator, -s.max_rotation_deg, s.max_rotation_deg, 1 if dim == 2 else 3))
    log_scale = torch.log1p(_uniform(generator, -s.max_scaling, s.max_scaling, dim))
    shear = _uniform(generator, -s.max_shear, s.max_shear, dim * (dim - 1) // 2)
    shift = _uniform(generator, -s.max_shift_mm, s.max_shift_mm, dim)
    affine = spatial.affine_matrix(geometry.centre, shift, angles, log_scale, shear)
    extent = float(np.max(geometry.extent))
    points = max(2, int(round(extent / s.control_spacing_mm)) + 1)
    displacement = _smooth_noise(geometry.shape, points, generator, channels=dim).double()
    magnitude = displacement.norm(dim=1).mean()
    target = float(_uniform(generator, 0.0, 2.0 * s.mean_nonrigid_mm))
    displacement = displacement * (target / magnitude.clamp_min(1e-9))
    return affine, displacement


def true_displacement(geometry: Geometry, affine: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """``G(p) - p`` (mm, ``(1, dim, *shape)``) of ``G(p) = A(p + b(p))`` on ``geometry``."""
    points = spatial.grid_points(geometry, device=displacement.device, dtype=displacement.dtype)
    mapped = spatial.transform_points(geometry, affine, displacement)
    return spatial.to_channels_first(mapped - points)


def random_intensity(image: torch.Tensor, generator: torch.Generator, settings: IntensityAugmentation,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """``image (1, 1, *shape)`` in [0, 1] with a random bias field, gamma, blur and noise, back in
    [0, 1]; outside ``mask`` (when given) stays 0.  The input is not modified."""
    s = settings
    shape = tuple(image.shape[2:])
    out = image.float().clamp(0, 1)
    bias = _smooth_noise(shape, 4, generator) * float(_uniform(generator, 0.0, s.bias))
    out = out * torch.exp(bias)
    out = out.clamp_min(0) ** float(torch.exp(_uniform(generator, -s.gamma, s.gamma)))
    sigma = float(_uniform(generator, 0.0, s.blur_voxels))
    out = spatial.gaussian_smooth(out, [sigma] * len(shape))
    noise = float(_uniform(generator, 0.0, s.noise))
    out = out + noise * torch.randn(out.shape, generator=generator)
    if mask is not None:
        out = out * (mask > 0)
    return _rescale(out).to(image.dtype)


def synthetic_contrast(labels: torch.Tensor, generator: torch.Generator,
                       settings: IntensityAugmentation = IntensityAugmentation()) -> torch.Tensor:
    """A random-contrast image ``(1, 1, *shape)`` in [0, 1] from an integer label map of the same
    shape: each label a random intensity in [0.1, 1] (label 0, the background, stays 0), then
    a partial-volume blur, and the blur, bias field and noise of :func:`random_intensity`."""
    ids = torch.unique(labels).long()
    table = torch.zeros(int(ids.max()) + 1)
    table[ids] = _uniform(generator, 0.1, 1.0, ids.numel()).float()
    table[0] = 0.0
    image = table[labels.long()]
    # partial-volume-like edges: a 3-voxel box blur (cheaper than a Gaussian, as smooth here)
    pool = F.avg_pool3d if labels.ndim == 5 else F.avg_pool2d
    image = pool(image, 3, stride=1, padding=1, count_include_pad=False)
    return random_intensity(image, generator, settings, mask=image > 0.02)


def _rescale(image: torch.Tensor) -> torch.Tensor:
    """To [0, 1] by the 99.5th percentile of the non-zero voxels (clipped)."""
    values = image[image > 0]
    top = torch.quantile(values[:: max(1, values.numel() // 100000)], 0.995) if values.numel() else image.new_tensor(1.0)
    return (image / top.clamp_min(1e-6)).clamp(0, 1)
