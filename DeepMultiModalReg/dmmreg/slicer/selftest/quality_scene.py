"""A small known case for the Quality module's self-test (run inside Slicer) and for the tests
that run here on slicer-core: an oblique reference volume and an affine transform node whose
Jacobian determinant is known exactly (the determinant of its linear part).

Needs slicer-core and numpy only (no torch, no Qt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import mrml
from ...geometry import Geometry
from ...image import Image

#: Scales of the affine's linear part (its determinant is their product, 1.1 * 0.9 * 1.2 = 1.188).
SCALES = (1.1, 0.9, 1.2)
#: Rotation of the affine (degrees about the unit ``AXIS``): does not change the determinant.
ANGLE_DEGREES = 20.0
AXIS = (1.0, 2.0, 2.0)
SHIFT_MM = (3.0, -2.0, 1.5)


@dataclass
class AffineCase:
    reference_node: object
    transform_node: object
    matrix_lps: np.ndarray
    determinant: float


def _rotation(axis, degrees: float) -> np.ndarray:
    """Rotation matrix (Rodrigues) of ``degrees`` about ``axis``."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def affine_test_scene(scene, size=(20, 18, 16), spacing=(1.5, 1.2, 2.0)) -> AffineCase:
    """Add to ``scene`` an oblique reference volume (a smooth ramp) and a linear transform node
    whose resampling transform (FromParent) is rotation x scaling about the volume's centre plus
    a shift; returns the nodes, the LPS matrix and its determinant."""
    direction = _rotation((0.0, 0.0, 1.0), 10.0)
    geometry = Geometry(tuple(size), tuple(spacing), (-12.0, 8.0, 4.0), direction)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in geometry.shape), indexing="ij")
    reference = mrml.add_volume_node(scene, Image(i + 2 * j + 3 * k, geometry), scene.GenerateUniqueName("QualityReference"))

    linear = _rotation(AXIS, ANGLE_DEGREES) @ np.diag(SCALES)
    centre = geometry.physical_points(0.5 * (np.array(size, dtype=np.float64) - 1))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + np.asarray(SHIFT_MM)
    transform = mrml.add_linear_transform_node(scene, matrix, scene.GenerateUniqueName("QualityAffine"))
    return AffineCase(reference, transform, matrix, float(np.linalg.det(linear)))


def jacobian_error(jacobian_volume_node, determinant: float) -> float:
    """Largest ``|J - determinant|`` over the voxels of a Jacobian volume."""
    values = mrml.voxel_array(jacobian_volume_node).astype(np.float64)
    return float(np.max(np.abs(values - determinant)))
