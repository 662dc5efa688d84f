"""The voxel grid everything rests on: :class:`Geometry` (size, spacing, origin, direction).

Conventions used throughout the backend (the ITK ones):

* Physical space is LPS, in millimetres.
* A voxel index ``i = (i_x, i_y, i_z)`` maps to the physical point
  ``p = origin + direction @ diag(spacing) @ i``.
* Arrays are stored in SimpleITK's order, axes ``(z, y, x)`` in 3D and ``(y, x)`` in 2D, so
  ``array.shape == size[::-1]``.  Vectors (origin, spacing, sizes, displacements) are always
  ordered ``(x, y, z)``.

Needs numpy only.
"""

from __future__ import annotations

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


#: Registration needs at least this fraction of the fixed image to lie inside the moving one.
MINIMUM_OVERLAP = 0.01
#: Points per axis of the lattice on which :func:`overlap_fraction` measures the overlap.
_OVERLAP_LATTICE = 17


def overlap_fraction(fixed: Geometry, moving: Geometry, affine: np.ndarray | None = None) -> float:
    """Fraction of the fixed grid that lies inside the moving grid, once mapped by ``affine``
    (the homogeneous fixed-to-moving resampling matrix, LPS; ``None``: the identity).

    Measured on a lattice of fixed voxel centres (up to 17 per axis, corner to corner); a point
    is inside when it is within half a voxel of the moving grid's voxel centres, so a single
    slice (size 1 along an axis) counts with its thickness."""
    if fixed.dim != moving.dim:
        raise InputError(f"cannot compare a {fixed.dim}D grid with a {moving.dim}D grid")
    d = fixed.dim
    axes = [np.linspace(0, n - 1, min(n, _OVERLAP_LATTICE)) for n in fixed.size]
    points = fixed.physical_points(np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d))
    to_index = moving.physical_to_index if affine is None else moving.physical_to_index @ np.asarray(affine)
    index = points @ to_index[:d, :d].T + to_index[:d, d]
    inside = np.all((index >= -0.5) & (index <= np.asarray(moving.size) - 0.5), axis=1)
    return float(inside.mean())


def check_overlap(fixed: Geometry, moving: Geometry, affine: np.ndarray | None = None,
                  fixed_name: str = "the fixed image", moving_name: str = "the moving image") -> None:
    """``InputError`` when less than :data:`MINIMUM_OVERLAP` of the fixed image lies inside the
    moving one (see :func:`overlap_fraction`): the one rule of the command line and the modules."""
    overlap = overlap_fraction(fixed, moving, affine)
    if overlap < MINIMUM_OVERLAP:
        raise InputError(
            f"{moving_name} does not overlap {fixed_name} in physical space ({overlap:.0%} of it is covered, "
            f"at least {MINIMUM_OVERLAP:.0%} is needed); check their origins and orientation, or give an "
            "initial transform that brings them together"
        )
