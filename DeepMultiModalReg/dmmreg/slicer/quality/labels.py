"""Label maps read from labelmap volume or segmentation nodes, in the space they are
evaluated in, with the names of their labels.

A labelmap keeps its grid and values; a segmentation is rasterised on a reference grid.
Geometries are LPS (mm); a fixed map is read in world space (as displayed), a moving map in the
evaluated transform's child space when it is under that transform (its moving space).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .. import mrml
from ...errors import InputError
from ...geometry import Geometry
from ...image import Image
from .inputs import moving_space_target


@dataclass
class Labels:
    """A label map (integer voxels, 0 = background) with its LPS geometry and the label names known."""

    image: Image
    names: dict[int, str] = field(default_factory=dict)

    @property
    def present(self) -> np.ndarray:
        values = np.unique(self.image.array)
        return values[values != 0]


def _local_to_space_matrix(node, target, what: str) -> np.ndarray:
    """4x4 RAS matrix from ``node``'s local coordinates to ``target``'s child space (None: world);
    ``InputError`` if a transform in between is non-linear."""
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(node.GetParentTransformNode(), target, matrix):
        raise InputError(f"the {what} '{node.GetName()}' is under a non-linear transform "
                         f"('{node.GetParentTransformNode().GetName()}'); harden that transform first")
    return mrml.numpy_matrix(matrix)


def _labelmap_geometry(labelmap_node, local_to_space: np.ndarray) -> Geometry:
    """LPS geometry of a labelmap's voxels placed by ``local_to_space`` (RAS, after IJK-to-RAS)."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    labelmap_node.GetIJKToRASMatrix(ijk_to_ras)
    dimensions = labelmap_node.GetImageData().GetDimensions()
    return mrml.geometry_from_ijk_to_ras(local_to_space @ mrml.numpy_matrix(ijk_to_ras), dimensions)


def _colour_names(labelmap_node, values) -> dict[int, str]:
    """Names of ``values`` from the labelmap's colour node, where it has one and names them."""
    display = labelmap_node.GetDisplayNode()
    colours = display.GetColorNode() if display is not None else None
    if colours is None:
        return {}
    names = {}
    for value in values:
        name = colours.GetColorName(int(value)) if 0 <= value < colours.GetNumberOfColors() else ""
        if name and name != "(none)":
            names[int(value)] = name
    return names


def labels_from_node(node, what: str, transform_node=None, reference_volume_node=None,
                     values_by_name: Mapping[str, int] | None = None, whole_grid: bool = False) -> Labels:
    """The labels of a labelmap volume or segmentation node.

    * A labelmap keeps its grid and values; names come from its colour node, where known.  Its
      geometry is as displayed, or in ``transform_node``'s child space when it is under it.
    * A segmentation is exported (segments in their order) on the grid of
      ``reference_volume_node``, or of its own reference geometry.  A segment takes the value
      ``values_by_name[segment name]`` when given there (matching another map by name), else
      its label value when the segments' label values are distinct, else its position + 1.
      ``whole_grid``: the labels define the grid to evaluate on, so a segmentation needs a
      reference volume or a reference geometry of its own (not just its segments' extent)."""
    if node is None:
        raise InputError(f"no {what} selected; choose a labelmap volume or a segmentation")
    if node.IsA("vtkMRMLSegmentationNode"):
        if whole_grid and reference_volume_node is None and not _has_reference_geometry(node):
            raise InputError(f"the {what} '{node.GetName()}' is a segmentation without a reference geometry; "
                             "select a reference volume (the fixed volume) to rasterise it on")
        return _labels_from_segmentation(node, what, transform_node, reference_volume_node, values_by_name or {})
    if not node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"the {what} '{node.GetName()}' is a {node.GetClassName()}; choose a labelmap "
                         "volume or a segmentation (convert a scalar volume in the Volumes module)")
    array = mrml.voxel_array(node)
    if not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array).astype(np.int32)
    to_space = _local_to_space_matrix(node, moving_space_target(node, transform_node), what)
    labels = Labels(Image(array, _labelmap_geometry(node, to_space)))
    labels.names = _colour_names(node, labels.present)
    return labels


def _has_reference_geometry(segmentation_node) -> bool:
    """Whether a segmentation has a reference image geometry (the grid it was drawn on)."""
    import slicer

    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    parameters = segmentation_node.GetSegmentation().SerializeAllConversionParameters()
    return any(item.startswith(name + "|") and item.split("|")[1] for item in parameters.split("&"))


def _segment_values(segmentation, values_by_name: Mapping[str, int]) -> list[tuple[str, str, int]]:
    """``[(segment ID, name, label value)]`` in segment order (see :func:`labels_from_node`)."""
    segments = [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i)) for i in range(segmentation.GetNumberOfSegments())]
    own = [segment.GetLabelValue() for _, segment in segments]
    distinct = len(set(own)) == len(own) and min(own, default=1) > 0
    claimed = {values_by_name[segment.GetName()] for _, segment in segments if segment.GetName() in values_by_name}
    values, taken = [], set()
    for position, (segment_id, segment) in enumerate(segments):
        name = segment.GetName()
        value = values_by_name.get(name)
        if value is None:  # not matched by name: its own value, clear of the matched ones
            value = own[position] if distinct else position + 1
            while value in claimed or value in taken:
                value += 1
        taken.add(value)
        values.append((segment_id, name, int(value)))
    return values


def _labels_from_segmentation(node, what: str, transform_node, reference_volume_node, values_by_name) -> Labels:
    import slicer
    import vtk

    segments = _segment_values(node.GetSegmentation(), values_by_name)
    if not segments:
        raise InputError(f"the {what} '{node.GetName()}' has no segment")
    # segments are in the node's local coordinates; a reference volume puts them on its grid
    to_space = np.eye(4) if reference_volume_node is not None else _local_to_space_matrix(
        node, moving_space_target(node, transform_node), what)
    ids = vtk.vtkStringArray()
    for segment_id, _, _ in segments:
        ids.InsertNextValue(segment_id)
    scene = node.GetScene()
    with mrml.scene_additions_removed(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__dmmreg_labels_export")
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            node, ids, labelmap, reference_volume_node, 0)  # 0: the reference geometry's extent
        if not exported or labelmap.GetImageData() is None:
            raise InputError(f"the {what} '{node.GetName()}' could not be exported to a labelmap")
        positions = mrml.voxel_array(labelmap)
        geometry = (mrml.geometry_from_volume_node(reference_volume_node) if reference_volume_node is not None
                    else _labelmap_geometry(labelmap, to_space))
    lookup = np.array([0] + [value for _, _, value in segments], dtype=np.int32)
    return Labels(Image(lookup[positions], geometry), {value: name for _, name, value in segments})
