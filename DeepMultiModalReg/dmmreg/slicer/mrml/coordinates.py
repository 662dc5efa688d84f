"""RAS <-> LPS conversion of matrices and points, and VTK <-> numpy matrices.

Slicer works in RAS, the backend and ITK files in LPS: ``p_LPS = F p_RAS`` with
``F = diag(-1, -1, 1)`` (:data:`FLIP`, its own inverse); a point mapping's matrix converts as
``F M F`` and a displacement field as ``u_RAS(p) = F u_LPS(F p)``.  Units: mm.

Needs numpy, and ``vtk`` for the functions that take or make VTK objects; never torch.
"""

from __future__ import annotations

import numpy as np

#: LPS <-> RAS flip, as a homogeneous matrix (its own inverse).
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the same flip for point and vector coordinates ``(..., 3)``: ``p_LPS = p_RAS * FLIP`` (its own inverse)
FLIP = np.diag(LPS_FROM_RAS)[:3]


def vtk_matrix(matrix: np.ndarray):
    """``vtkMatrix4x4`` holding a homogeneous 4x4 numpy matrix."""
    import vtk

    out = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            out.SetElement(row, col, float(matrix[row, col]))
    return out


def numpy_matrix(matrix) -> np.ndarray:
    """4x4 numpy array from a ``vtkMatrix4x4``."""
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def lps_matrix_from_ras(matrix_ras: np.ndarray) -> np.ndarray:
    """A point mapping ``RAS -> RAS`` as the same mapping ``LPS -> LPS`` (and back: ``F M F``)."""
    return LPS_FROM_RAS @ matrix_ras @ LPS_FROM_RAS


ras_matrix_from_lps = lps_matrix_from_ras


def homogeneous_3d(matrix: np.ndarray) -> np.ndarray:
    """A 2D homogeneous (3x3) matrix as a 3D one (4x4) acting on x and y only (z unchanged);
    a 4x4 matrix is returned as it is.  MRML nodes are always 3D, backend 2D results are not."""
    if matrix.shape == (4, 4):
        return matrix
    out = np.eye(4)
    out[:2, :2] = matrix[:2, :2]
    out[:2, 3] = matrix[:2, 2]
    return out


def transform_points_ras(transform, points_ras: np.ndarray) -> np.ndarray:
    """Apply a VTK transform to points ``(n, 3)`` (RAS, mm)."""
    from vtk.util import numpy_support
    import vtk

    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points_ras, dtype=np.float64), deep=True))
    target = vtk.vtkPoints()
    transform.TransformPoints(source, target)
    return numpy_support.vtk_to_numpy(target.GetData()).astype(np.float64).reshape(-1, 3)


def transform_points_lps(transform_ras, points_lps: np.ndarray) -> np.ndarray:
    """Apply a VTK transform (acting on RAS points) to LPS points ``(n, 3)``; LPS out (mm)."""
    return transform_points_ras(transform_ras, points_lps * FLIP) * FLIP
