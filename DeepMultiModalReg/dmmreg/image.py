"""Images with explicit geometry, and reading/writing them through SimpleITK.

Conventions used throughout the backend (the ITK ones):

* Physical space is LPS, in millimetres.
* A voxel index ``i = (i_x, i_y, i_z)`` maps to the physical point
  ``p = origin + direction @ diag(spacing) @ i``.
* ``Image.array`` is stored in SimpleITK's array order, i.e. axes ``(z, y, x)`` in 3D and
  ``(y, x)`` in 2D, so ``array.shape == size[::-1]``.  Vectors (origin, spacing, sizes,
  displacements) are always ordered ``(x, y, z)``.

This module needs numpy and SimpleITK only (no torch, no Slicer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in physical (LPS, mm) space.

    ``size`` and ``spacing`` are ordered (x, y, z); ``direction`` is a (dim, dim) matrix whose
    columns are the physical directions of the index axes.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray = field(compare=False)

    def __post_init__(self):
        dim = len(self.size)
        if dim not in (2, 3):
            raise InputError(f"images must be 2D or 3D, got {dim} dimensions")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(dim, dim)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        if len(self.spacing) != dim or len(self.origin) != dim:
            raise InputError("size, spacing and origin must have the same length")
        if min(self.spacing) <= 0:
            raise InputError(f"voxel spacing must be positive, got {self.spacing}")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise InputError("the image direction matrix is singular")

    def __eq__(self, other):
        return (
            isinstance(other, Geometry)
            and self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=1e-6)
            and np.allclose(self.origin, other.origin, atol=1e-5)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape, (z, y, x) order."""
        return tuple(reversed(self.size))

    @property
    def index_to_physical(self) -> np.ndarray:
        """Homogeneous (dim+1, dim+1) matrix mapping a voxel index (x, y, z) to an LPS point."""
        m = np.eye(self.dim + 1)
        m[: self.dim, : self.dim] = self.direction @ np.diag(self.spacing)
        m[: self.dim, self.dim] = self.origin
        return m

    @property
    def physical_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_physical)

    def physical_points(self, index: np.ndarray) -> np.ndarray:
        """LPS points of continuous indices ``(..., dim)``."""
        m = self.index_to_physical
        return index @ m[: self.dim, : self.dim].T + m[: self.dim, self.dim]

    @property
    def corners(self) -> np.ndarray:
        """Physical positions of the 2**dim corner voxel centres, (2**dim, dim)."""
        grids = np.meshgrid(*[[0, s - 1] for s in self.size], indexing="ij")
        index = np.stack([g.ravel() for g in grids], axis=-1).astype(np.float64)
        return self.physical_points(index)

    @property
    def centre(self) -> np.ndarray:
        """Physical position of the grid centre (LPS, mm)."""
        return self.physical_points((np.asarray(self.size, dtype=np.float64) - 1) / 2)

    @property
    def extent(self) -> np.ndarray:
        """Physical length of each index axis, (dim,)."""
        return (np.asarray(self.size) - 1) * np.asarray(self.spacing)

    def with_spacing(self, spacing: float | tuple[float, ...]) -> Geometry:
        """Same physical field of view and direction, sampled at a coarser (or finer) spacing.

        Each axis gets ``max(spacing, current spacing)`` so thick slices are never
        super-sampled; the grid stays centred on the same physical centre.
        """
        target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (self.dim,))
        new_spacing = np.maximum(target, self.spacing)
        new_size = np.maximum(np.round(self.extent / new_spacing).astype(int) + 1, 2)
        new_extent = (new_size - 1) * new_spacing
        origin = self.centre - self.direction @ (new_extent / 2)
        return Geometry(tuple(new_size), tuple(new_spacing), tuple(origin), self.direction)

    def with_margin(self, margin_mm: float) -> Geometry:
        """Same spacing and direction, grown by ``margin_mm`` on every side."""
        pad = np.ceil(margin_mm / np.asarray(self.spacing)).astype(int)
        size = np.asarray(self.size) + 2 * pad
        origin = self.physical_points(-pad.astype(np.float64))
        return Geometry(tuple(size), self.spacing, tuple(origin), self.direction)


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


# --------------------------------------------------------------------------------------------
# SimpleITK conversion and file input/output


def geometry_from_sitk(img) -> Geometry:
    return Geometry(img.GetSize(), img.GetSpacing(), img.GetOrigin(), np.array(img.GetDirection()))


def to_sitk(image: Image, vector: bool = False):
    """SimpleITK image with the same geometry (``vector``: last array axis holds components)."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(image.array), isVector=vector)
    g = image.geometry
    out.SetSpacing(g.spacing)
    out.SetOrigin(g.origin)
    out.SetDirection(tuple(g.direction.ravel()))
    return out


def from_sitk(img) -> Image:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components per "
            "voxel (an RGB or vector image); convert it to a scalar volume first"
        )
    array = sitk.GetArrayFromImage(img)
    return Image(array, geometry_from_sitk(img))


def _read_dicom_series(directory: str):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(directory)
    if not series:
        raise InputError(f"{directory} is a folder but holds no DICOM series; give an image file")
    if len(series) > 1:
        raise InputError(
            f"{directory} holds {len(series)} DICOM series; give the folder of one series"
        )
    files = reader.GetGDCMSeriesFileNames(directory, series[0])
    reader.SetFileNames(files)
    return reader.Execute()


def read_image(path: str | os.PathLike, what: str = "image") -> Image:
    """Read NIfTI, NRRD, MHA (any SimpleITK format) or a DICOM series folder.

    Raises ``InputError`` naming the file and the problem when it is missing or unreadable.
    """
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} file not found: {path}")
    try:
        img = _read_dicom_series(path) if os.path.isdir(path) else sitk.ReadImage(path)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(f"cannot read {what} {path}: not an image SimpleITK can read ({first})")
    img = _squeeze_single_slice(img)
    return from_sitk(img)


def _squeeze_single_slice(img):
    """A 3D image one voxel thick along an index axis becomes 2D (its in-plane geometry kept)."""
    import SimpleITK as sitk

    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        return sitk.Extract(img, (img.GetSize()[0], img.GetSize()[1], 0), (0, 0, 0))
    if img.GetDimension() == 4:
        raise InputError(
            "4D image given; register its frames one by one (a sequence) instead"
        )
    return img


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


def write_image(image: Image, path: str | os.PathLike) -> None:
    """Write ``image`` with its geometry (format from the extension), atomically."""
    import SimpleITK as sitk

    path = os.fspath(path)
    atomic_write(path, lambda tmp: sitk.WriteImage(to_sitk(image), tmp, True))


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then move the file into place, so a failure never leaves a
    half-written file where an earlier result was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # keep the full extension (.nii.gz) so the writer picks the right format
    tmp = os.path.join(directory, f".partial-{os.getpid()}-{base}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------
# Checks and intensity handling


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
    window = intensity_window(array, mask, lower_percentile, upper_percentile)
    return apply_intensity_window(array, window).astype(np.float32)


def intensity_window(array: np.ndarray, mask: np.ndarray | None = None, lower_percentile: float = 0.5,
                     upper_percentile: float = 99.5) -> tuple[float, float]:
    """``(lo, hi)`` that :func:`normalise_intensity` maps to 0 and 1: the percentiles of the voxels
    in ``mask``, else of those above the minimum (all voxels when none are)."""
    a = np.asarray(array, dtype=np.float32)
    values = a[np.asarray(mask) > 0] if mask is not None else a[a > a.min()]
    if values.size == 0:
        values = a.ravel()
    lo, hi = np.percentile(values, [lower_percentile, upper_percentile])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def apply_intensity_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """``array`` mapped by ``window = (lo, hi)`` to [0, 1] (clipped), float64."""
    lo, hi = window
    return np.clip((np.asarray(array, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)


def physical_overlap_fraction(a: Geometry, b: Geometry) -> float:
    """Fraction of ``a``'s bounding box (in its own axes) covered by ``b``'s physical box."""
    # b's corners in a's continuous index space
    idx = (a.physical_to_index[: a.dim, : a.dim] @ b.corners.T).T + a.physical_to_index[: a.dim, a.dim]
    lo = np.maximum(idx.min(axis=0), 0)
    hi = np.minimum(idx.max(axis=0), np.asarray(a.size) - 1)
    inter = np.prod(np.clip(hi - lo, 0, None))
    total = np.prod(np.asarray(a.size) - 1)
    return float(inter / total) if total > 0 else 0.0

