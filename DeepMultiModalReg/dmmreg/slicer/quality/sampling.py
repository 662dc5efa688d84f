"""Any transform node (linear, grid, B-spline or a composite of them) seen as a point mapping,
so the backend's measures (:mod:`dmmreg.metrics`) apply to it without resampling it on a grid.

The mapping is the node's *resampling* transform: FromParent over its whole parent chain
(``GetTransformFromWorld``), fixed-space points to moving-space points.  VTK applies it to RAS
points; :class:`NodeTransform` takes and returns LPS points (mm), as the backend does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import mrml
from ...geometry import Geometry


def resampling_transform(transform_node):
    """``vtkGeneralTransform`` (RAS to RAS, mm) mapping fixed-space points to moving-space points:
    the FromParent direction of ``transform_node`` and all its parents."""
    import vtk

    transform = vtk.vtkGeneralTransform()
    transform_node.GetTransformFromWorld(transform)
    return transform


@dataclass
class NodeTransform:
    """A transform node seen through the point-mapping interface of
    :class:`~dmmreg.result.RegistrationResult` that :mod:`dmmreg.metrics` uses
    (``resampling_points`` on LPS points, ``dim``, ``fixed_geometry``, ``moving_geometry``), so
    the metrics apply to any Slicer transform without resampling it on a grid."""

    transform_node: object
    fixed_geometry: Geometry | None = None
    moving_geometry: Geometry | None = None
    transform: object = field(init=False, repr=False)

    def __post_init__(self):
        self.transform = resampling_transform(self.transform_node)

    @property
    def dim(self) -> int:
        return 3

    def resampling_points(self, points_lps: np.ndarray) -> np.ndarray:
        """``T(p)`` for LPS points ``(..., 3)`` in mm (the node's FromParent chain, applied in RAS)."""
        points = np.asarray(points_lps, dtype=np.float64)
        mapped = mrml.transform_points_lps(self.transform, points.reshape(-1, 3))
        return mapped.reshape(points.shape)
