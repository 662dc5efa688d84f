"""Registration quality metrics, with the geometry explicit (spacing and direction are read from
:class:`~dmmreg.geometry.Geometry`, never assumed to be 1 mm).

Inputs and outputs are numpy arrays (label maps in array order (z, y, x), points LPS ``(n, dim)``
in mm) or :class:`~dmmreg.image.Image`; transforms are :class:`~dmmreg.result.RegistrationResult`
resampling transforms ``T`` from fixed-space to moving-space points.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from . import spatial
from .geometry import Geometry
from .image import Image
from .result import RegistrationResult


def _label_ids(fixed_labels: np.ndarray, warped_labels: np.ndarray, labels) -> np.ndarray:
    if np.shape(fixed_labels) != np.shape(warped_labels):
        raise ValueError(f"label maps differ in shape: {np.shape(fixed_labels)} vs {np.shape(warped_labels)}")
    if labels is None:
        present = np.union1d(np.unique(fixed_labels), np.unique(warped_labels))
        return present[present != 0]
    return np.asarray(labels).ravel()


def dice_per_label(fixed_labels: np.ndarray, warped_labels: np.ndarray, labels=None) -> dict[int, float]:
    """Dice overlap ``2|F & W| / (|F| + |W|)`` per label.

    ``labels``: the label values to score; default all non-zero values present in either map.
    A label absent from both maps is skipped (it has no defined overlap)."""
    fixed_labels = np.asarray(fixed_labels)
    warped_labels = np.asarray(warped_labels)
    ids = _label_ids(fixed_labels, warped_labels, labels)
    # one pass over the voxels: counts per label in each map and in their agreement
    values = np.union1d(np.unique(fixed_labels), np.unique(warped_labels))
    f = np.searchsorted(values, fixed_labels.ravel())
    w = np.searchsorted(values, warped_labels.ravel())
    n = values.size
    count_fixed = np.bincount(f, minlength=n)
    count_warped = np.bincount(w, minlength=n)
    count_both = np.bincount(f[f == w], minlength=n)
    out = {}
    for label in ids:
        k = np.searchsorted(values, label)
        if k == n or values[k] != label:
            continue
        out[int(label)] = float(2 * count_both[k] / (count_fixed[k] + count_warped[k]))
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (the array border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95_per_label(
    fixed_labels: np.ndarray, warped_labels: np.ndarray, geometry: Geometry, labels=None
) -> dict[int, float]:
    """95th percentile of the symmetric surface distances (mm) per label.

    The surface of a label is its voxels with a face-neighbour outside it; the distances from
    every surface voxel of one map to the nearest surface voxel of the other, both ways, are
    pooled and their 95th percentile taken (medpy's ``hd95``).  Distances use the voxel spacing
    of ``geometry`` (an orthonormal direction is assumed, as for any MRI grid).

    A label present in only one of the maps gets ``inf``; a label absent from both is skipped."""
    fixed_labels = np.asarray(fixed_labels)
    warped_labels = np.asarray(warped_labels)
    if fixed_labels.shape != geometry.shape:
        raise ValueError(f"label map shape {fixed_labels.shape} does not match the geometry's {geometry.shape}")
    sampling = geometry.spacing[::-1]  # array order (z, y, x)
    out = {}
    for label in _label_ids(fixed_labels, warped_labels, labels):
        in_fixed = fixed_labels == label
        in_warped = warped_labels == label
        has_fixed, has_warped = in_fixed.any(), in_warped.any()
        if not (has_fixed or has_warped):
            continue
        if not (has_fixed and has_warped):
            out[int(label)] = float("inf")
            continue
        # crop to the union's bounding box plus one voxel: all surface voxels lie inside it
        box = ndimage.find_objects((in_fixed | in_warped).astype(np.int8))[0]
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        surface_fixed = _surface(in_fixed[box])
        surface_warped = _surface(in_warped[box])
        to_fixed = ndimage.distance_transform_edt(~surface_fixed, sampling=sampling)
        to_warped = ndimage.distance_transform_edt(~surface_warped, sampling=sampling)
        distances = np.concatenate([to_warped[surface_fixed], to_fixed[surface_warped]])
        out[int(label)] = float(np.percentile(distances, 95))
    return out


def jacobian_statistics(det: Image, mask: np.ndarray | None = None) -> dict[str, float]:
    """Summary of a Jacobian-determinant map ``det`` (e.g. :meth:`RegistrationResult.jacobian_determinant`)
    over the voxels where ``mask`` > 0 (default: all).

    * ``folding_percent``: percentage of voxels with ``J <= 0``;
    * ``sdlogj``: standard deviation of ``log J`` over the voxels with ``J > 0`` (folded voxels
      are counted by ``folding_percent`` instead; Learn2Reg clips them to 1e-9, which lets a few
      folds dominate), nan when no voxel has ``J > 0``;
    * ``min``, ``max``, ``mean`` of ``J``;
    * ``mean_abs_grad_j``: mean magnitude of the physical gradient of ``J`` (mm^-1), the
      smoothness measure ``|grad J|`` of MIDIR (003_2f2aa96e65959a3c.txt sec. 4.2), computed on
      the whole grid (central differences) then averaged inside the mask.
    """
    values = np.asarray(det.array, dtype=np.float64)
    inside = np.ones(values.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    if inside.shape != values.shape:
        raise ValueError(f"mask shape {inside.shape} does not match the determinant's {values.shape}")
    j = values[inside]
    if j.size == 0:
        raise ValueError("the mask selects no voxel")
    positive = j[j > 0]
    gradient = spatial.spatial_gradient(torch.from_numpy(values)[None, None], det.geometry)[0, 0]
    gradient_magnitude = torch.linalg.vector_norm(gradient, dim=0).numpy()
    return {
        "folding_percent": float(100.0 * np.mean(j <= 0)),
        "sdlogj": float(np.std(np.log(positive))) if positive.size else float("nan"),
        "min": float(j.min()),
        "max": float(j.max()),
        "mean": float(j.mean()),
        "mean_abs_grad_j": float(gradient_magnitude[inside].mean()),
    }


def inverse_consistency_error(
    forward: RegistrationResult, inverse: RegistrationResult | None = None, mask: np.ndarray | None = None
) -> Image:
    """``|T_inv(T(p)) - p|`` (mm) at every voxel ``p`` of the forward result's fixed grid.

    ``inverse`` is a result whose fixed space is ``forward``'s moving space (e.g. the registration
    run the other way); when None, ``forward``'s own inverse (:meth:`RegistrationResult.inverse_points`)
    is used.  With ``mask``, only the voxels where it is > 0 are computed and the others are nan
    (so ``np.nanmean`` summarises the mask)."""
    geometry = forward.fixed_geometry
    if inverse is not None and inverse.fixed_geometry != forward.moving_geometry:
        raise ValueError("the inverse result's fixed grid must be the forward result's moving grid")
    points = spatial.grid_points(geometry, dtype=torch.float64).numpy()
    inside = np.ones(geometry.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    mapped = forward.resampling_points(points[inside])
    back = inverse.resampling_points(mapped) if inverse is not None else forward.inverse_points(mapped)
    error = np.full(geometry.shape, np.nan, dtype=np.float32)
    error[inside] = np.linalg.norm(back - points[inside], axis=-1)
    return Image(error, geometry)


def landmark_errors(fixed_points: np.ndarray, moving_points: np.ndarray, result: RegistrationResult) -> np.ndarray:
    """``|T(p_fixed) - p_moving|`` (mm) per landmark; points are LPS ``(n, dim)`` in mm."""
    fixed_points = np.asarray(fixed_points, dtype=np.float64)
    moving_points = np.asarray(moving_points, dtype=np.float64)
    if fixed_points.shape != moving_points.shape or fixed_points.ndim != 2 or fixed_points.shape[1] != result.dim:
        raise ValueError(
            f"landmarks must be two (n, {result.dim}) arrays of the same shape, got "
            f"{fixed_points.shape} and {moving_points.shape}"
        )
    return np.linalg.norm(result.resampling_points(fixed_points) - moving_points, axis=-1)
