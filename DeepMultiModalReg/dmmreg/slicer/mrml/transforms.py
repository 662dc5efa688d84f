"""Transform nodes and VTK transforms: linear and displacement-grid transforms from LPS
matrices and fields, a transform sampled on a grid, and transforms read from / written to ITK
files through Slicer's storage nodes.

Directions: a backend transform is the *resampling* transform (fixed-space points to
moving-space points); in Slicer that is a node's *FromParent* direction, so a moving volume
placed under the node is displayed on the fixed volume.  Matrices and fields come in LPS (mm)
and are stored in RAS (``F M F``, ``u_RAS(p) = F u_LPS(F p)``); ITK files are LPS.

Needs slicer-core (``slicer``, ``vtk``) and numpy; never torch.  Input nodes are never modified.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...geometry import Geometry
from .coordinates import (FLIP, LPS_FROM_RAS, homogeneous_3d, lps_matrix_from_ras, numpy_matrix,
                          ras_matrix_from_lps, transform_points_lps, vtk_matrix)
from .scene import scene_additions_removed, set_attributes


def linear_transform_from_parent(matrix_lps: np.ndarray):
    """``vtkTransform`` of a homogeneous LPS matrix (2D or 3D), as a RAS point mapping."""
    import vtk

    transform = vtk.vtkTransform()
    transform.SetMatrix(vtk_matrix(ras_matrix_from_lps(homogeneous_3d(np.asarray(matrix_lps, dtype=np.float64)))))
    return transform


def grid_transform_from_field(displacement_lps: np.ndarray, geometry: Geometry):
    """``vtkOrientedGridTransform`` of an LPS displacement field sampled on ``geometry``.

    ``displacement_lps``: array ``(*geometry.shape, dim)`` in mm, components (x, y, z) LPS.
    The result maps a RAS point ``p`` to ``p + u_RAS(p)`` (linear interpolation); used as a
    FromParent transform it is the ITK resampling transform of the same field."""
    from vtk.util import numpy_support
    import slicer
    import vtk

    displacement = np.asarray(displacement_lps, dtype=np.float64)
    index_to_lps = homogeneous_3d(geometry.index_to_physical)
    if geometry.dim == 2:
        displacement = np.concatenate([displacement, np.zeros_like(displacement[..., :1])], axis=-1)[None]
    index_to_ras = LPS_FROM_RAS @ index_to_lps
    spacing = np.linalg.norm(index_to_ras[:3, :3], axis=0)
    direction = np.eye(4)
    direction[:3, :3] = index_to_ras[:3, :3] / spacing
    displacement_ras = displacement * FLIP

    grid_image = vtk.vtkImageData()
    grid_image.SetDimensions(*reversed(displacement.shape[:3]))
    grid_image.SetSpacing(*spacing)
    grid_image.SetOrigin(*index_to_ras[:3, 3])
    vectors = numpy_support.numpy_to_vtk(np.ascontiguousarray(displacement_ras).reshape(-1, 3), deep=True)
    grid_image.GetPointData().SetScalars(vectors)

    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(grid_image)
    grid.SetGridDirectionMatrix(vtk_matrix(direction))
    grid.SetInterpolationModeToLinear()
    return grid


def add_linear_transform_node(scene, matrix_lps: np.ndarray, name: str, attributes: dict[str, str] | None = None):
    """Linear transform node whose FromParent is the LPS resampling matrix ``matrix_lps``."""
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformFromParent(linear_transform_from_parent(matrix_lps).GetMatrix())
    set_attributes(node, attributes or {})
    return node


def add_grid_transform_node(scene, displacement_lps: np.ndarray, geometry: Geometry, name: str,
                            attributes: dict[str, str] | None = None):
    """Grid transform node (``vtkOrientedGridTransform``, FromParent) of an LPS displacement field."""
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(grid_transform_from_field(displacement_lps, geometry))
    set_attributes(node, attributes or {})
    return node


def sampled_displacement_lps(transform_ras, geometry: Geometry) -> np.ndarray:
    """``T(p) - p`` of a VTK (RAS) transform on the voxels of an LPS ``geometry``: an LPS field
    ``(*geometry.shape, 3)``, for ``geometry`` 3D."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in reversed(geometry.size)],
                                 indexing="ij")[::-1], axis=-1)
    points_lps = geometry.physical_points(index).reshape(-1, 3)
    return (transform_points_lps(transform_ras, points_lps) - points_lps).reshape(*geometry.shape, 3)


def resampling_matrix_lps(transform_node) -> np.ndarray:
    """LPS matrix of a linear transform node's FromWorld direction: the resampling (fixed to
    moving) matrix of a transform the moving volume is placed under, e.g. an initial transform."""
    import vtk

    if not transform_node.IsTransformToWorldLinear():
        raise InputError(f"the transform '{transform_node.GetName()}' must be linear (harden it or choose another)")
    from_world = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformFromWorld(from_world)
    return lps_matrix_from_ras(numpy_matrix(from_world))


# --------------------------------------------------------------------------------------------
# Files through Slicer's storage nodes


def save_transform_to_world(transform_node, path: str) -> None:
    """Write the transform from world to ``transform_node`` (its whole parent chain, FromParent,
    i.e. the resampling transform) as an ITK file (``.h5``, ``.tfm``, displacement ``.nii.gz``)
    through Slicer's ``vtkMRMLTransformStorageNode``."""
    import slicer

    import vtk

    scene = transform_node.GetScene()
    from_world = vtk.vtkGeneralTransform()
    transform_node.GetTransformFromWorld(from_world)
    with scene_additions_removed(scene):
        flattened = scene.AddNewNodeByClass("vtkMRMLTransformNode", "__dmmreg_save")
        flattened.SetAndObserveTransformFromParent(from_world)
        storage = slicer.vtkMRMLTransformStorageNode()
        storage.SetFileName(path)
        if not storage.WriteData(flattened):
            raise OSError(f"Slicer could not write the transform to {path}")


def read_transform_node(scene, path: str, name: str):
    """Transform node read from an ITK transform file through ``vtkMRMLTransformStorageNode``.

    Slicer's reader interpolates displacement grids cubically; they are set back to linear,
    as ITK (and the backend) apply them, so the node resamples as SimpleITK does."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", name)
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"Slicer could not read the transform file {path}")
    for transform in (node.GetTransformFromParent(), node.GetTransformToParent()):
        _interpolate_grids_linearly(transform)
    return node


def _interpolate_grids_linearly(transform) -> None:
    if transform is None:
        return
    if transform.IsA("vtkGeneralTransform"):
        for i in range(transform.GetNumberOfConcatenatedTransforms()):
            _interpolate_grids_linearly(transform.GetConcatenatedTransform(i))
    elif transform.IsA("vtkGridTransform"):
        transform.SetInterpolationModeToLinear()
