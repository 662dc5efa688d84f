"""Single-slice (2D) volumes: a one-slice 3D volume seen as a 2D image in its own plane, and 2D
images and results put back into that plane.

Plane coordinates are mm along the volume's i and j axes from its first voxel (and along k);
``Plane.lps_from_plane`` maps them to LPS (mm).  A 2D result maps fixed-plane coordinates to
moving-plane coordinates (resampling direction, as every backend result).

Needs numpy only (and the backend's geometry); no slicer, never torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...geometry import Geometry
from ...image import Image
from .coordinates import LPS_FROM_RAS, homogeneous_3d
from .volumes import geometry_from_ijk_to_ras


@dataclass(frozen=True)
class Plane:
    """Frame of a single-slice volume: ``lps_from_plane`` maps plane coordinates (mm along the
    volume's i and j axes from its first voxel, and along k) to LPS; ``thickness``: slice (k)
    spacing in mm."""

    lps_from_plane: np.ndarray
    thickness: float

    def same_as(self, other: Plane) -> bool:
        return np.allclose(self.lps_from_plane, other.lps_from_plane, atol=1e-4)


def is_single_slice(geometry: Geometry) -> bool:
    """Whether ``geometry`` is a 3D grid one slice (k) thick."""
    return geometry.dim == 3 and geometry.size[2] == 1


def split_plane(image: Image) -> tuple[Image, Plane]:
    """A single-slice 3D image as a 2D image in its own plane coordinates, and that plane."""
    geometry = image.geometry
    lps_from_plane = np.eye(4)
    lps_from_plane[:3, :3] = geometry.direction
    lps_from_plane[:3, 3] = geometry.origin
    in_plane = Geometry(geometry.size[:2], geometry.spacing[:2], (0.0, 0.0), np.eye(2))
    return Image(image.array[0], in_plane), Plane(lps_from_plane, geometry.spacing[2])


def geometry_on_plane(geometry: Geometry, plane: Plane) -> Geometry:
    """3D (one slice thick) geometry of a 2D plane-coordinate ``geometry``."""
    index_to_plane = homogeneous_3d(geometry.index_to_physical)
    index_to_plane[2, 2] = plane.thickness
    return geometry_from_ijk_to_ras(LPS_FROM_RAS @ plane.lps_from_plane @ index_to_plane, (*geometry.size, 1))


def image_on_plane(image: Image, plane: Plane) -> Image:
    """A 2D plane-coordinate image as a single-slice 3D image in LPS."""
    return Image(image.array[None], geometry_on_plane(image.geometry, plane))


def result_on_planes(result, fixed_plane: Plane, moving_plane: Plane, fixed_geometry: Geometry, moving_geometry: Geometry):
    """A 2D result (fixed plane coordinates to moving plane coordinates) as a 3D LPS result.

    ``T3 = P_m T2 P_f^-1``: the field lives in the fixed plane (constant along its normal), the
    affine becomes ``P_m A2 P_f^-1``."""
    from ...result import RegistrationResult

    affine = moving_plane.lps_from_plane @ homogeneous_3d(result.affine) @ np.linalg.inv(fixed_plane.lps_from_plane)
    fields = {}
    field_geometry = None
    if result.field_geometry is not None:
        field_geometry = geometry_on_plane(result.field_geometry, fixed_plane)
        rotation = fixed_plane.lps_from_plane[:3, :2]
        for key in ("displacement", "inverse_displacement"):
            value = getattr(result, key)
            fields[key] = None if value is None else (np.asarray(value) @ rotation.T)[None]
    return RegistrationResult(
        fixed_geometry, moving_geometry, affine, field_geometry, fields.get("displacement"),
        fields.get("inverse_displacement"), method=result.method, settings=result.settings, seconds=result.seconds,
    )
