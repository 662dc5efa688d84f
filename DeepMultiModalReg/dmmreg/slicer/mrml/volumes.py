"""Volume nodes as backend images and back: voxels, geometry (RAS <-> LPS), masks.

The geometry of a volume node is its IJK-to-RAS matrix followed by its parent transforms
(linear only), i.e. where Slicer displays it, converted to LPS (``p_LPS = F p_RAS``,
:data:`~.coordinates.LPS_FROM_RAS`); spacing in mm.  Voxel arrays are in (k, j, i) order, as
the backend's :class:`~dmmreg.image.Image` holds them.

Needs slicer-core (``slicer``, ``vtk``) and numpy; never torch.  Input nodes are never modified
(:func:`set_volume_image` writes an output node).
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...geometry import Geometry
from ...image import Image
from .coordinates import LPS_FROM_RAS, homogeneous_3d, numpy_matrix, vtk_matrix
from .scene import scene_additions_removed


#: Default of the ``parent`` arguments below: the volume node's own parent transform node.
OWN_PARENT = "own parent"


def ijk_to_world_ras(volume_node, parent=OWN_PARENT) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) to world RAS: IJK-to-RAS, then the parent transforms.

    ``parent``: the transform node the volume counts as placed under (``None``: none), by
    default its own parent transform node.  Raises ``InputError`` when a parent transform is
    non-linear (harden it first)."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = numpy_matrix(ijk_to_ras)
    if parent is OWN_PARENT:
        parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(
                f"'{volume_node.GetName()}' is under a non-linear transform "
                f"('{parent.GetName()}'); harden the transform first"
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = numpy_matrix(to_world) @ matrix
    return matrix


def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray, dimensions) -> Geometry:
    """Backend geometry (LPS) of a voxel grid of ``dimensions`` (i, j, k) with that IJK-to-RAS."""
    ijk_to_lps = LPS_FROM_RAS @ ijk_to_ras
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    return Geometry(tuple(int(d) for d in dimensions), tuple(spacing), tuple(ijk_to_lps[:3, 3]), axes / spacing)


def geometry_from_volume_node(volume_node, parent=OWN_PARENT) -> Geometry:
    """Backend geometry (LPS) of a volume node, as displayed (parent transforms included;
    ``parent`` as in :func:`ijk_to_world_ras`)."""
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise InputError(f"'{volume_node.GetName()}' has no voxels")
    return geometry_from_ijk_to_ras(ijk_to_world_ras(volume_node, parent), image_data.GetDimensions())


def voxel_array(volume_node) -> np.ndarray:
    """Copy of the voxels of a one-component volume node (scalar or labelmap), (k, j, i) order,
    in the node's own data type; no geometry.

    Raises ``InputError`` for a volume without voxels or with several components per voxel."""
    from vtk.util import numpy_support

    image_data = volume_node.GetImageData()
    scalars = image_data.GetPointData().GetScalars() if image_data is not None else None
    if scalars is None or image_data.GetNumberOfPoints() == 0:
        raise InputError(f"'{volume_node.GetName()}' has no voxels (an empty volume)")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"'{volume_node.GetName()}' has {scalars.GetNumberOfComponents()} components per voxel "
            "(a colour or vector volume); convert it to a scalar volume first"
        )
    shape = tuple(reversed(image_data.GetDimensions()))
    return numpy_support.vtk_to_numpy(scalars).reshape(shape).copy()


def image_from_volume_node(volume_node, what: str = "volume", parent=OWN_PARENT) -> Image:
    """A scalar volume node as a backend :class:`Image` (LPS geometry as displayed; ``parent``
    as in :func:`ijk_to_world_ras`).

    Raises ``InputError`` for a labelmap, a vector/colour volume or a volume without voxels."""
    if volume_node is None:
        raise InputError(f"no {what} selected")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(
            f"the {what} '{volume_node.GetName()}' is a labelmap; select an intensity volume "
            "(labelmaps can be used as masks)"
        )
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"the {what} '{volume_node.GetName()}' is a {volume_node.GetClassName()}, not a scalar volume")
    return Image(voxel_array(volume_node), geometry_from_volume_node(volume_node, parent))


def mask_from_node(mask_node, reference_volume_node, what: str = "mask") -> Image:
    """A labelmap volume or segmentation node as a binary (uint8 0/1) :class:`Image`.

    A labelmap keeps its own grid; a segmentation's visible segments are rasterised on the
    grid of ``reference_volume_node``."""
    if mask_node.IsA("vtkMRMLSegmentationNode"):
        return _mask_from_segmentation(mask_node, reference_volume_node, what)
    if not mask_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"the {what} '{mask_node.GetName()}' must be a labelmap or a segmentation")
    array = voxel_array(mask_node)
    if not np.any(array):
        raise InputError(f"the {what} '{mask_node.GetName()}' is empty (no voxel is set)")
    return Image((array > 0).astype(np.uint8), geometry_from_volume_node(mask_node))


def _mask_from_segmentation(segmentation_node, reference_volume_node, what: str) -> Image:
    import slicer

    scene = segmentation_node.GetScene()
    with scene_additions_removed(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__dmmreg_mask_export")
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
            segmentation_node, labelmap, reference_volume_node
        )
        if not exported or labelmap.GetImageData() is None:
            raise InputError(f"the {what} '{segmentation_node.GetName()}' has no visible segment to use")
        return mask_from_node(labelmap, reference_volume_node, what)


def add_volume_node(scene, image: Image, name: str, labelmap: bool = False):
    """New scalar (or labelmap) volume node in ``scene`` holding ``image`` at its geometry.

    A 2D image becomes a single-slice volume in the plane its geometry describes."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    set_volume_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def set_volume_image(volume_node, image: Image) -> None:
    """Replace the voxels and the geometry (IJK-to-RAS) of ``volume_node`` with ``image``'s; a
    2D image becomes a single slice in the plane its geometry describes.  Its parent transform
    is left as it is."""
    from vtk.util import numpy_support
    import vtk

    geometry = image.geometry
    ijk_to_lps = homogeneous_3d(geometry.index_to_physical)
    array = image.array if image.dim == 3 else image.array[None]
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*reversed(array.shape))
    vtk_array = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image_data.GetPointData().SetScalars(vtk_array)
    volume_node.SetIJKToRASMatrix(vtk_matrix(LPS_FROM_RAS @ ijk_to_lps))
    volume_node.SetAndObserveImageData(image_data)
