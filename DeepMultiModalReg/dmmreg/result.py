"""The result of a registration, in physical space, independent of the method that made it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import Geometry
from .image import Image


@dataclass
class RegistrationResult:
    """Resampling transform ``T(p) = A(p + u(p))`` from fixed-space to moving-space points (LPS, mm).

    * ``affine``: homogeneous ``(dim+1, dim+1)`` matrix ``A``.
    * ``displacement``: ``u`` as an array ``(*field_geometry.shape, dim)`` (mm, components x, y, z)
      sampled on ``field_geometry`` (fixed space, covering the fixed image with a margin), or
      ``None`` for an affine-only result.  Between samples ``u`` is linearly interpolated, as ITK
      and VTK do with a displacement-field transform.
    * ``inverse_displacement``: ``w`` on the same grid with ``(id + w) = (id + u)^-1``, so that
      ``T^-1(q) = A^-1(q) + w(A^-1(q))``; ``None`` if not computed.
    * ``synthesised``: images a method produced along the way (e.g. the moving image rendered
      in the fixed contrast), keyed by a short name.
    """

    fixed_geometry: Geometry
    moving_geometry: Geometry
    affine: np.ndarray
    field_geometry: Geometry | None = None
    displacement: np.ndarray | None = None
    inverse_displacement: np.ndarray | None = None
    method: str = ""
    settings: dict = field(default_factory=dict)
    synthesised: dict[str, Image] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def dim(self) -> int:
        return self.fixed_geometry.dim

    def _field_tensor(self, inverse: bool = False):
        """The (inverse) field as a float64 tensor ``(1, dim, *shape)``, or None."""
        import torch

        from . import spatial

        u = self.inverse_displacement if inverse else self.displacement
        if u is None:
            return None
        return spatial.to_channels_first(torch.from_numpy(np.asarray(u, dtype=np.float64))[None])

    def resampling_points(self, points: np.ndarray) -> np.ndarray:
        """``T(p)`` for physical fixed-space points ``(..., dim)``."""
        import torch

        from . import spatial

        p = torch.from_numpy(np.asarray(points, dtype=np.float64)).reshape(1, -1, self.dim)
        u = self._field_tensor()
        if u is not None:
            p = p + spatial.field_at(u, self.field_geometry, p)
        q = spatial.apply_matrix(p, self.affine)
        return q.reshape(np.shape(points)).numpy()

    def inverse_points(self, points: np.ndarray) -> np.ndarray:
        """``T^-1(q)`` for physical moving-space points ``(..., dim)`` (needs the inverse field)."""
        if self.displacement is not None and self.inverse_displacement is None:
            raise ValueError("this result has no inverse field; register with the inverse requested")
        import torch

        from . import spatial

        q = torch.from_numpy(np.asarray(points, dtype=np.float64)).reshape(1, -1, self.dim)
        p = spatial.apply_matrix(q, np.linalg.inv(self.affine))
        w = self._field_tensor(inverse=True)
        if w is not None:
            p = p + spatial.field_at(w, self.field_geometry, p)
        return p.reshape(np.shape(points)).numpy()

    def composed_field_geometry(self, inverse: bool = False) -> Geometry:
        """Grid on which the whole transform ``T`` (``inverse``: ``T^-1``) is sampled as one
        displacement field (an ITK displacement-field file, a composed Slicer grid node).

        Forward: the field grid (fixed space; the fixed grid for an affine-only result).
        Inverse: the moving grid (moving space) at the field's finest spacing, grown by the
        margin the field grid has around the fixed grid, at least one field voxel (mm); the
        moving grid itself for an affine-only result.  Either way the field covers its volume
        with a margin, as VTK clamps a grid transform to its edge value outside its grid."""
        field = self.field_geometry
        if not inverse:
            return field or self.fixed_geometry
        if field is None:
            return self.moving_geometry
        margin = max(float(np.max((field.extent - self.fixed_geometry.extent) / 2)), max(field.spacing))
        return self.moving_geometry.with_spacing(min(field.spacing)).with_margin(margin)

    def resampling_displacement(self, geometry: Geometry) -> np.ndarray:
        """``T(p) - p`` on the voxels of ``geometry`` (fixed space): the whole transform as one
        displacement field, ``(*geometry.shape, dim)``."""
        points = _grid_points(geometry)
        return self.resampling_points(points) - points

    def inverse_resampling_displacement(self, geometry: Geometry) -> np.ndarray:
        """``T^-1(q) - q`` on the voxels of ``geometry`` (moving space)."""
        points = _grid_points(geometry)
        return self.inverse_points(points) - points

    def warp(self, moving: Image, mode: str = "linear", inverse: bool = False) -> Image:
        """Moving image resampled on the fixed grid (``inverse``: fixed image on the moving grid).

        Matches ``SimpleITK.Resample`` with the same transform: float64 arithmetic (a zero
        displacement returns the input exactly), points within half a voxel outside the input
        take the edge value, points further out 0.  ``mode``: "linear" for intensities,
        "nearest" for label maps.  The target grid is done in slabs of at most
        :data:`WARP_SLAB_VOXELS` voxels, so the memory this needs beyond the input and the
        output stays bounded however large the grid."""
        import torch

        from . import spatial

        source, target = (self.fixed_geometry, self.moving_geometry) if inverse else (self.moving_geometry, self.fixed_geometry)
        volume = torch.from_numpy(np.asarray(moving.array, dtype=np.float64))[None, None]
        size = torch.tensor(source.size, dtype=torch.float64)
        out = np.empty(target.shape, dtype=np.float32 if mode == "linear" else np.float64)
        rows = max(1, WARP_SLAB_VOXELS // int(np.prod(target.shape[1:])))
        for start in range(0, target.shape[0], rows):
            points = _slab_points(target, start, min(start + rows, target.shape[0]))
            mapped = torch.from_numpy(self.inverse_points(points) if inverse else self.resampling_points(points))
            values = spatial.sample(volume, source, mapped[None], mode=mode, padding="border")[0, 0]
            index = spatial.apply_matrix(mapped, source.physical_to_index)
            inside = ((index >= -0.5) & (index <= size - 0.5)).all(dim=-1)
            out[start:start + rows] = torch.where(inside, values, torch.zeros_like(values)).numpy()
        if mode == "nearest":
            return Image(np.rint(out).astype(moving.array.dtype) if np.issubdtype(moving.array.dtype, np.integer)
                         else out.astype(moving.array.dtype), target)
        return Image(out, target)

    def jacobian_determinant(self, geometry: Geometry | None = None) -> Image:
        """det of the Jacobian of ``T`` (affine included) on ``geometry`` (default: the fixed grid)."""
        import torch

        from . import spatial

        geometry = geometry or self.fixed_geometry
        disp = torch.from_numpy(self.resampling_displacement(geometry))
        det = spatial.jacobian_determinant(spatial.to_channels_first(disp[None]), geometry)[0]
        return Image(det.numpy().astype(np.float32), geometry)


#: Most target voxels :meth:`RegistrationResult.warp` maps at once (about 100 MB per float64 point array).
WARP_SLAB_VOXELS = 1 << 22


def _slab_points(geometry: Geometry, start: int, stop: int) -> np.ndarray:
    """Physical points (float64, ``(stop - start, *geometry.shape[1:], dim)``) of the voxels of
    ``geometry`` whose first array index (z in 3D) is in ``[start, stop)``, computed as
    :func:`dmmreg.spatial.grid_points` computes them (not cached)."""
    import torch

    from . import spatial

    axes = [torch.arange(start, stop, dtype=torch.float64)] + [torch.arange(n, dtype=torch.float64) for n in geometry.shape[1:]]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)  # x, y, z
    return spatial.apply_matrix(index, geometry.index_to_physical).numpy()


def _grid_points(geometry: Geometry) -> np.ndarray:
    """Physical points of every voxel of ``geometry`` (float64, ``(*shape, dim)``)."""
    import torch

    from . import spatial

    return spatial.grid_points(geometry, dtype=torch.float64).numpy()
