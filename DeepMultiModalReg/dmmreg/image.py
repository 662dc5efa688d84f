"""An image is an array with its :class:`~dmmreg.geometry.Geometry`; checks and intensity windows.

``Image.array`` is in (z, y, x) order (see :mod:`dmmreg.geometry` for the conventions).  Files
are read and written by :mod:`dmmreg.image_io`.  Needs numpy (and scipy for :func:`head_mask` and :func:`head_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .geometry import Geometry


@dataclass
class Image:
    """An image: ``array`` in (z, y, x) order with its ``geometry``; a vector image (e.g. a
    displacement field) has one more, last, axis for its components."""

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.shape[: self.geometry.dim] != self.geometry.shape or self.array.ndim > self.geometry.dim + 1:
            raise InputError(
                f"array shape {self.array.shape} does not match the geometry's {self.geometry.shape}"
            )

    @property
    def dim(self) -> int:
        return self.geometry.dim

    def with_array(self, array: np.ndarray) -> Image:
        return Image(np.asarray(array), self.geometry)


def axial_slice(image: Image, index: int) -> Image:
    """Slice ``index`` along the third index axis of a 3D ``image`` as a 2D image on the slice's
    first two index axes: their spacing, the slice's first voxel's (x, y) as origin, and as
    directions the in-plane block of the 3D directions (exact for axis-aligned volumes; for
    oblique ones, the orthonormal matrix nearest to it)."""
    if image.dim != 3:
        raise InputError(f"an axial slice needs a 3D image, got a {image.dim}D one")
    g = image.geometry
    if not 0 <= index < g.size[2]:
        raise InputError(f"slice {index} is outside the image's {g.size[2]} slices")
    u, _, vt = np.linalg.svd(g.direction[:2, :2])
    origin = g.physical_points(np.array([0.0, 0.0, float(index)]))[:2]
    return Image(image.array[index].copy(), Geometry(g.size[:2], g.spacing[:2], tuple(origin), u @ vt))


#: Most distinct values an image may have and still be taken for a label map.
LABEL_MAP_MAX_VALUES = 128


def label_count(image: Image) -> int | None:
    """The number of distinct values when ``image`` looks like a label map (whole numbers
    only, at most :data:`LABEL_MAP_MAX_VALUES` of them), else None.  Intensity images, even
    8-bit ones, have hundreds of values."""
    a = np.asarray(image.array)
    if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        return None
    if a.dtype.kind not in "iuf":
        return None
    values = np.unique(a)
    return len(values) if len(values) <= LABEL_MAP_MAX_VALUES else None


def check_image(image: Image, what: str) -> None:
    """Raise ``InputError`` for an image registration cannot use (NaN, empty, constant)."""
    a = image.array
    if a.size == 0 or min(image.geometry.size) < 4:
        raise InputError(f"{what} is too small ({image.geometry.size} voxels); need at least 4 per axis")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} contains NaN or infinite values; fix or mask them first")
    if a.max() == a.min():
        raise InputError(f"{what} is constant (every voxel is {a.flat[0]}): there is nothing to register")


def normalise_intensity(
    array: np.ndarray,
    mask: np.ndarray | None = None,
    lower_percentile: float = 0.5,
    upper_percentile: float = 99.5,
) -> np.ndarray:
    """Map intensities to [0, 1] by robust percentiles of the foreground, clipping outliers.

    The percentiles are taken over ``mask`` when given, else over the non-background voxels
    (those above the minimum), so large empty borders do not squash the contrast.
    """
    lo, hi = intensity_window(array, mask, lower_percentile, upper_percentile)
    out = np.asarray(array, dtype=np.float32) - np.float32(lo)  # float32 copies: half the memory of float64
    out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


#: above this many voxels the intensity percentiles are taken on a regular subsample of about as many
PERCENTILE_VOXELS = 2**21


def intensity_window(array: np.ndarray, mask: np.ndarray | None = None, lower_percentile: float = 0.5,
                     upper_percentile: float = 99.5) -> tuple[float, float]:
    """``(lo, hi)`` that :func:`normalise_intensity` maps to 0 and 1: the percentiles of the voxels
    in ``mask``, else of those above the minimum (all voxels when none are).  Volumes over
    :data:`PERCENTILE_VOXELS` voxels use every k-th voxel (k = size // PERCENTILE_VOXELS), as
    long as that leaves 10 000 voxels to count: the whole volume's selection and sort took
    0.2 s per 240x240x155 image."""
    a = np.asarray(array, dtype=np.float32)
    step, lowest = max(1, a.size // PERCENTILE_VOXELS), a.min()
    for k in dict.fromkeys((step, 1)):  # the subsample, then every voxel if it leaves too few
        sub = a.ravel()[::k]
        values = sub[np.asarray(mask).ravel()[::k] > 0] if mask is not None else sub[sub > lowest]
        if values.size >= 10_000:
            break
    if values.size == 0:
        values = a.ravel()
    lo, hi = np.percentile(values, [lower_percentile, upper_percentile])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that splits ``values`` into two classes of largest between-class variance."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    mass = np.cumsum(counts * centres)
    gap = mass / np.maximum(below, 1) - (mass[-1] - mass) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * gap**2)])


def head_mask(array: np.ndarray) -> np.ndarray:
    """Boolean mask of the object (head, or brain when skull-stripped) of a 2D or 3D ``array``:
    voxels above the Otsu threshold, their largest connected component, holes filled in the
    whole volume and in every slice of the first (slowest) axis, as thick-slice series leave
    ventricles and sinuses open across slices.  Noise, neck-coil shading and the air around the
    head stay out.  Needs scipy."""
    from scipy import ndimage

    a = np.asarray(array, dtype=np.float32)
    labels, count = ndimage.label(a > otsu_threshold(a))
    if count == 0:
        return np.ones(a.shape, dtype=bool)
    mask = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:])))
    if a.ndim == 3:
        for index in range(mask.shape[0]):
            mask[index] = ndimage.binary_fill_holes(mask[index])
    return mask



def head_weight(array: np.ndarray, spacing, band_mm: float = 10.0, floor: float = 0.1) -> np.ndarray:
    """Float32 weight of each voxel of a 2D or 3D ``array`` for a similarity that should follow
    the inside of the head rather than its surface: 0 outside :func:`head_mask`, ``floor`` at its
    surface, rising linearly to 1 at ``band_mm`` mm inside (the scalp band: bright fat whose edge
    the chemical shift moves differently in each series), 1 deeper.  ``spacing``: voxel size
    (mm) in x, y(, z) order, as ``Geometry.spacing``.  Needs scipy."""
    from scipy import ndimage

    mask = head_mask(array)
    depth = ndimage.distance_transform_edt(mask, sampling=tuple(spacing)[::-1])  # mm to the nearest outside voxel
    ramp = floor + (1.0 - floor) * depth / band_mm
    return np.where(mask, np.clip(ramp, floor, 1.0), 0.0).astype(np.float32)

def apply_intensity_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """``array`` mapped by ``window = (lo, hi)`` to [0, 1] (clipped), float64."""
    lo, hi = window
    return np.clip((np.asarray(array, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
