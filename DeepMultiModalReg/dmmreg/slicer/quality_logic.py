"""Logic of the Quality inspection module: how good is a registration, for *any* transform node
in the scene (ours or another tool's: linear, grid, B-spline or a composite of them).

Conventions (those of :mod:`dmmreg.slicer.mrml`):

* The evaluated transform is the *resampling* transform of ``transform_node``: Slicer's
  FromParent direction, taken over the node's whole parent chain (``GetTransformFromWorld``).
  It maps a point of the fixed (reference) space to the moving space, as ITK resampling
  transforms do, so a moving volume placed under the node is displayed on the fixed volume.
* Slicer positions are RAS (mm); the backend functions reused here (:mod:`dmmreg.metrics`,
  :mod:`dmmreg.spatial`) work in LPS (mm); the conversion is :data:`mrml.FLIP`.
* The fixed space is world space: a reference volume, fixed label map or fixed landmarks are
  taken as displayed (linear parent transforms included) and must not be under the evaluated
  transform.  The moving space is world space too, unless a moving node is placed under the
  evaluated transform (the usual way to look at a result): then its coordinates in that
  transform's child space are used, which are its moving-space coordinates.
* Input nodes are never modified; results are new nodes.  Bad input raises
  :class:`~dmmreg.errors.InputError` naming the problem and the fix, before any node is added.

Needs slicer-core (``slicer``, ``vtk``) and numpy; torch (through :mod:`dmmreg.metrics` and
:mod:`dmmreg.spatial`) is imported only when a measure is computed, never at import.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import mrml
from ..errors import InputError
from ..geometry import Geometry
from ..image import Image
from ..files import atomic_write


#: Name of the shared colour table of Jacobian-determinant volumes.
JACOBIAN_COLOR_NODE_NAME = "DeepMultiModalReg Jacobian"
#: Saturation of the Jacobian colour map: full blue at ``J <= 2**-1``, full red at ``J >= 2**1``.
JACOBIAN_LOG2_SATURATION = 1.0
#: Display window of Jacobian volumes, ``(window, level)``: ``J`` in [0, 2], centred on 1.
JACOBIAN_WINDOW_LEVEL = (2.0, 1.0)
#: Entries of the colour table; odd, so the middle entry is centred exactly on ``J = 1``.
JACOBIAN_COLORS = 257

VISUALIZATION_MODES = ("grid", "glyph", "contour")


# --------------------------------------------------------------------------------------------
# Checking inputs


def _require(node, what: str, class_name: str, fix: str) -> None:
    """``InputError`` unless ``node`` is a ``class_name`` node."""
    if node is None:
        raise InputError(f"no {what} selected; {fix}")
    if not node.IsA(class_name):
        raise InputError(f"the {what} '{node.GetName()}' is a {node.GetClassName()}, not a {class_name}; {fix}")


def _check_transform(transform_node, what: str = "transform") -> None:
    _require(transform_node, what, "vtkMRMLTransformNode",
             "choose the registration's transform node (linear, grid, B-spline or composite)")


def _is_under(node, transform_node) -> bool:
    """Whether ``transform_node`` is ``node``'s parent transform or one of its ancestors."""
    parent = node.GetParentTransformNode()
    while parent is not None:
        if parent is transform_node:
            return True
        parent = parent.GetParentTransformNode()
    return False


def _check_not_under(node, transform_node, what: str) -> None:
    """The fixed-space inputs must show the fixed space, not be moved by the evaluated transform."""
    if transform_node is not None and _is_under(node, transform_node):
        raise InputError(
            f"the {what} '{node.GetName()}' is under the transform '{transform_node.GetName()}' being "
            "evaluated; move it out of that transform (Data module) so it shows the fixed space"
        )


def reference_geometry(reference_volume_node, transform_node=None, what: str = "reference volume") -> Geometry:
    """LPS geometry of the reference (fixed) volume as displayed; ``InputError`` if it is
    missing, empty, under a non-linear transform or under the evaluated ``transform_node``."""
    _require(reference_volume_node, what, "vtkMRMLVolumeNode",
             "choose the fixed volume the transform was computed for")
    _check_not_under(reference_volume_node, transform_node, what)
    return mrml.geometry_from_volume_node(reference_volume_node)


def _dimension_words(geometry: Geometry) -> str:
    return "2D (a single slice)" if mrml.is_single_slice(geometry) else "3D"


def check_same_grid(geometry: Geometry, reference: Geometry, what: str, name: str, reference_name: str) -> None:
    """``InputError`` unless ``geometry`` is the ``reference`` grid (sizes, spacing, origin and
    direction); the message says whether the dimension or only the grid differs."""
    if mrml.is_single_slice(geometry) != mrml.is_single_slice(reference):
        raise InputError(
            f"the {what} '{name}' is {_dimension_words(geometry)} but '{reference_name}' is "
            f"{_dimension_words(reference)}; use a {what} of the same dimension"
        )
    if geometry != reference:
        raise InputError(
            f"the {what} '{name}' ({'x'.join(map(str, geometry.size))} voxels of "
            f"{'x'.join(f'{s:g}' for s in geometry.spacing)} mm) is not on the grid of '{reference_name}' "
            f"({'x'.join(map(str, reference.size))} voxels of {'x'.join(f'{s:g}' for s in reference.spacing)} mm); "
            "resample it onto that volume (Resample Image (BRAINS) with nearest-neighbour interpolation) "
            "or use a segmentation, which is rasterised on any grid"
        )


def mask_on_reference(mask_node, reference_volume_node, geometry: Geometry) -> np.ndarray | None:
    """Boolean array (reference grid, (k, j, i) order) of a labelmap or segmentation mask, or
    None for no mask (the whole grid).  A labelmap must lie on the reference grid; a
    segmentation is rasterised on it."""
    if mask_node is None:
        return None
    mask = mrml.mask_from_node(mask_node, reference_volume_node, "mask")
    check_same_grid(mask.geometry, geometry, "mask", mask_node.GetName(), reference_volume_node.GetName())
    return mask.array > 0


# --------------------------------------------------------------------------------------------
# Sampling any transform node


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


def _slab(geometry: Geometry) -> Geometry:
    """A single-slice geometry grown to three slices (one each side), so derivatives along the
    slice normal exist; other geometries unchanged."""
    if not mrml.is_single_slice(geometry):
        return geometry
    origin = geometry.physical_points(np.array([0.0, 0.0, -1.0]))
    return Geometry((*geometry.size[:2], 3), geometry.spacing, tuple(origin), geometry.direction)


def _middle_slice(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The reference slice of an array computed on :func:`_slab` of ``geometry``."""
    return array[1:2] if mrml.is_single_slice(geometry) else array


# --------------------------------------------------------------------------------------------
# 1. Jacobian determinant


def _jacobian_on_slab(transform_node, geometry: Geometry) -> Image:
    """:func:`jacobian_determinant_on` computed on :func:`_slab` of ``geometry``."""
    import torch

    from .. import spatial

    slab = _slab(geometry)
    displacement = mrml.sampled_displacement_lps(resampling_transform(transform_node), slab)
    field_tensor = spatial.to_channels_first(torch.from_numpy(displacement)[None])
    return Image(spatial.jacobian_determinant(field_tensor, slab)[0].numpy(), slab)


def jacobian_determinant_on(transform_node, geometry: Geometry) -> Image:
    """det of the Jacobian of the resampling transform of ``transform_node`` at every voxel of
    ``geometry`` (LPS; the value does not depend on RAS/LPS): > 1 a fixed-space region grows in
    moving space, < 1 it shrinks, <= 0 the transform folds.  Central differences of the
    transform sampled on the grid (one-sided at the border), as the backend computes it; on a
    single slice the derivative along the slice normal uses the slices either side."""
    det = _jacobian_on_slab(transform_node, geometry)
    return Image(_middle_slice(det.array, geometry).astype(np.float32), geometry)


def jacobian_colours(count: int = JACOBIAN_COLORS) -> np.ndarray:
    """RGBA ``(count, 4)`` of the Jacobian colour table over ``J`` in [0, 2] (entry centres):
    white at ``J = 1``, blue below and red above, symmetric in ``log2 J`` and saturated at
    ``J = 0.5`` and ``J = 2``; the first entry (``J`` about 0 and every folded voxel, ``J <= 0``,
    which the display clamps to it) is black."""
    window, level = JACOBIAN_WINDOW_LEVEL
    centres = level - window / 2 + (np.arange(count) + 0.5) * window / count
    t = np.clip(np.log2(np.maximum(centres, 1e-12)) / JACOBIAN_LOG2_SATURATION, -1.0, 1.0)[:, None]
    blue, red, white = np.array([0.0, 0.25, 1.0]), np.array([1.0, 0.1, 0.0]), np.ones(3)
    rgb = np.where(t < 0, white + (-t) * (blue - white), white + t * (red - white))
    rgb[0] = 0.0
    return np.concatenate([rgb, np.ones((count, 1))], axis=1)


def jacobian_color_node(scene):
    """The scene's Jacobian colour table (:func:`jacobian_colours`), created on first use."""
    node = scene.GetFirstNodeByName(JACOBIAN_COLOR_NODE_NAME)
    if node is not None and node.IsA("vtkMRMLColorTableNode"):
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", JACOBIAN_COLOR_NODE_NAME)
    node.SetTypeToUser()
    colours = jacobian_colours()
    node.SetNumberOfColors(len(colours))
    window, level = JACOBIAN_WINDOW_LEVEL
    for index, (r, g, b, a) in enumerate(colours):
        j = level - window / 2 + (index + 0.5) * window / len(colours)
        node.SetColor(index, "folding (J <= 0)" if index == 0 else f"J {j:.3f}", r, g, b, a)
    node.SetAttribute(mrml.ATTRIBUTE_PREFIX + "Role", "Jacobian colour map")
    node.SetDescription("Jacobian determinant: window 0..2 centred on 1; blue < 1 < red, "
                        "symmetric in log2 J, saturated at 0.5 and 2; black: folding")
    return node


def _show_jacobian(volume_node) -> None:
    """Jacobian colours and a window of 0..2 centred on 1 for ``volume_node``'s display node, and
    a colour legend (shown in the views beside the volume) titled "Jacobian determinant"."""
    import slicer

    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(jacobian_color_node(volume_node.GetScene()).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(*JACOBIAN_WINDOW_LEVEL)
    legend = slicer.vtkMRMLColorLegendDisplayNode()  # not registered for AddNewNodeByClass
    legend.SetName(volume_node.GetScene().GenerateUniqueName(f"{volume_node.GetName()} legend"))
    volume_node.GetScene().AddNode(legend)
    legend.SetTitleText("Jacobian determinant")
    legend.SetNumberOfLabels(5)
    legend.SetLabelFormat("%.2f")
    legend.SetAndObservePrimaryDisplayNode(display)
    legend.SetVisibility(True)
    volume_node.AddAndObserveDisplayNodeID(legend.GetID())


def jacobian_volume(scene, transform_node, reference_volume_node, mask_node=None):
    """Jacobian determinant of ``transform_node``'s resampling transform (fixed to moving) on the
    grid of ``reference_volume_node``, as a new scalar volume node, and its statistics.

    Returns ``(volume_node, stats)``; ``stats`` (over ``mask_node``, a labelmap on the reference
    grid or a segmentation; default the whole grid) are those of
    :func:`dmmreg.metrics.jacobian_statistics`: ``folding_percent`` (% of voxels with J <= 0),
    ``sdlogj``, ``min``, ``max``, ``mean``, ``mean_abs_grad_j`` (mm^-1), plus ``voxels``.  The
    node has the Jacobian colour map (centred on 1) and ``DeepMultiModalReg.*`` attributes."""
    from .. import metrics

    _check_transform(transform_node)
    geometry = reference_geometry(reference_volume_node, transform_node)
    mask = mask_on_reference(mask_node, reference_volume_node, geometry)
    slab = _jacobian_on_slab(transform_node, geometry)
    inside = np.ones(geometry.shape, dtype=bool) if mask is None else mask
    if mrml.is_single_slice(geometry):
        inside = np.concatenate([np.zeros_like(inside), inside, np.zeros_like(inside)])
    stats = metrics.jacobian_statistics(slab, inside)
    stats["voxels"] = int(np.count_nonzero(inside))
    det = Image(_middle_slice(slab.array, geometry).astype(np.float32), geometry)
    name = f"{transform_node.GetName()} Jacobian"
    node = mrml.add_volume_node(scene, det, scene.GenerateUniqueName(name))
    _show_jacobian(node)
    mrml.set_attributes(node, _result_attributes("Jacobian determinant", transform_node, reference_volume_node, mask_node, stats))
    return node, stats


def _result_attributes(role: str, transform_node, reference_node, mask_node, stats: dict) -> dict[str, str]:
    values = {
        "Role": role,
        "Transform": transform_node.GetName(),
        "Direction": "resampling (FromParent): fixed (reference) to moving",
        "Reference": reference_node.GetName() if reference_node is not None else "",
        "Mask": mask_node.GetName() if mask_node is not None else "",
        "Statistics": json.dumps(_jsonable(stats), sort_keys=True),
        "Date": _now(),
    }
    return {mrml.ATTRIBUTE_PREFIX + key: value for key, value in values.items()}


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# 2. Label overlap


@dataclass
class Labels:
    """A label map (integer voxels, 0 = background) with its LPS geometry and the label names known."""

    image: Image
    names: dict[int, str] = field(default_factory=dict)

    @property
    def present(self) -> np.ndarray:
        values = np.unique(self.image.array)
        return values[values != 0]


def _moving_space_target(node, transform_node):
    """Where a moving-space node's coordinates are read: ``transform_node``'s child space when
    the node is under it, else world (None)."""
    return transform_node if transform_node is not None and _is_under(node, transform_node) else None


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
    array = mrml._voxel_array(node)
    if not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array).astype(np.int32)
    to_space = _local_to_space_matrix(node, _moving_space_target(node, transform_node), what)
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
        node, _moving_space_target(node, transform_node), what)
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
        positions = mrml._voxel_array(labelmap)
        geometry = (mrml.geometry_from_volume_node(reference_volume_node) if reference_volume_node is not None
                    else _labelmap_geometry(labelmap, to_space))
    lookup = np.array([0] + [value for _, _, value in segments], dtype=np.int32)
    return Labels(Image(lookup[positions], geometry), {value: name for _, name, value in segments})


def warp_labels(labels: Labels, transform_node, fixed_geometry: Geometry) -> np.ndarray:
    """Moving labels resampled on ``fixed_geometry`` through the resampling transform of
    ``transform_node`` (nearest neighbour; 0 outside the moving grid), array (k, j, i).

    The transform is sampled on the fixed grid and applied with
    :meth:`RegistrationResult.warp`, the backend's (and SimpleITK's) resampling."""
    from ..result import RegistrationResult

    displacement = mrml.sampled_displacement_lps(resampling_transform(transform_node), fixed_geometry)
    result = RegistrationResult(fixed_geometry, labels.image.geometry, np.eye(4), fixed_geometry, displacement)
    return result.warp(labels.image, mode="nearest").array


def _planar(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """A single-slice array and geometry as 2D (in-plane surface distances), others unchanged."""
    if not mrml.is_single_slice(geometry):
        return array, geometry
    image, _ = mrml.split_plane(Image(array, geometry))
    return image.array, image.geometry


def overlap_per_label(fixed: Labels, warped: np.ndarray) -> list[dict]:
    """Rows ``{label, name, dice, hd95_mm, fixed_voxels, warped_voxels}`` for every label present
    in the fixed map (HD95: ``inf`` when the label is missing from the warped map)."""
    from .. import metrics

    present = fixed.present
    fixed_array, geometry = _planar(fixed.image.array, fixed.image.geometry)
    warped_array, _ = _planar(warped, fixed.image.geometry)
    dice = metrics.dice_per_label(fixed_array, warped_array, labels=present)
    hd95 = metrics.hausdorff95_per_label(fixed_array, warped_array, geometry, labels=present)
    return [
        {"label": int(value), "name": fixed.names.get(int(value), ""), "dice": dice[int(value)],
         "hd95_mm": hd95[int(value)], "fixed_voxels": int(np.count_nonzero(fixed_array == value)),
         "warped_voxels": int(np.count_nonzero(warped_array == value))}
        for value in present
    ]


def _check_labels_in_common(fixed: Labels, moving: Labels, fixed_node, moving_node) -> None:
    if fixed.present.size == 0:
        raise InputError(f"the fixed labels '{fixed_node.GetName()}' are empty (no voxel is labelled)")
    if not np.intersect1d(fixed.present, moving.present).size:
        raise InputError(
            f"the fixed labels '{fixed_node.GetName()}' (values {_list(fixed.present)}) and the moving labels "
            f"'{moving_node.GetName()}' (values {_list(moving.present)}) have no label in common; "
            "choose label maps of the same structures, numbered alike (or segmentations with the same segment names)"
        )


def _list(values, limit: int = 8) -> str:
    values = [str(int(v)) for v in values]
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "") if values else "none"


def label_overlap(scene, fixed_labels_node, moving_labels_node, transform_node, reference_volume_node=None):
    """Dice and HD95 per label between the fixed labels and the moving labels warped onto them
    through ``transform_node`` (nearest neighbour).

    Labelmaps are matched by value, segmentations by segment name (see :func:`labels_from_node`);
    a fixed segmentation is rasterised on ``reference_volume_node`` when given.  HD95 is in mm
    (in-plane for single-slice maps).  Returns ``(table_node, chart_node)``: a table with one
    row per label present in the fixed map (Label, Name, Dice, HD95 (mm), Fixed voxels, Warped
    voxels; mean Dice in its ``DeepMultiModalReg.Statistics`` attribute) and a bar chart of Dice
    per label."""
    _check_transform(transform_node)
    _require(moving_labels_node, "moving labels", "vtkMRMLNode", "choose a labelmap volume or a segmentation")
    if fixed_labels_node is not None:
        _check_not_under(fixed_labels_node, transform_node, "fixed labels")
    fixed = labels_from_node(fixed_labels_node, "fixed labels", None, reference_volume_node, whole_grid=True)
    moving = labels_from_node(moving_labels_node, "moving labels", transform_node,
                              values_by_name={name: value for value, name in fixed.names.items()})
    if mrml.is_single_slice(fixed.image.geometry) != mrml.is_single_slice(moving.image.geometry):
        raise InputError(
            f"the fixed labels '{fixed_labels_node.GetName()}' are {_dimension_words(fixed.image.geometry)} but the "
            f"moving labels '{moving_labels_node.GetName()}' are {_dimension_words(moving.image.geometry)}; "
            "use label maps of the same dimension as the registered volumes"
        )
    _check_labels_in_common(fixed, moving, fixed_labels_node, moving_labels_node)
    rows = overlap_per_label(fixed, warp_labels(moving, transform_node, fixed.image.geometry))
    stats = overlap_statistics(rows)
    name = scene.GenerateUniqueName(f"{moving_labels_node.GetName()} on {fixed_labels_node.GetName()} overlap")
    table = mrml.add_table_node(scene, name, {
        "Label": [row["label"] for row in rows],
        "Name": [row["name"] for row in rows],
        "Dice": [row["dice"] for row in rows],
        "HD95 (mm)": [row["hd95_mm"] for row in rows],
        "Fixed voxels": [row["fixed_voxels"] for row in rows],
        "Warped voxels": [row["warped_voxels"] for row in rows],
    })
    table.SetColumnUnitLabel("HD95 (mm)", "mm")
    table.SetColumnDescription("Dice", "2|F & W| / (|F| + |W|) of the fixed and warped moving label")
    table.SetColumnDescription("HD95 (mm)", "95th percentile of the symmetric surface distances")
    mrml.set_attributes(table, _result_attributes("label overlap", transform_node, fixed_labels_node, None, stats))
    return table, add_bar_chart(scene, table, "Label", "Dice", "Name", f"{name} Dice", y_range=(0.0, 1.0))


def overlap_statistics(rows: list[dict]) -> dict[str, float]:
    """Mean and minimum Dice, mean and maximum finite HD95 (mm) over the rows of
    :func:`overlap_per_label`, and the number of labels."""
    dice = np.array([row["dice"] for row in rows], dtype=np.float64)
    hd95 = np.array([row["hd95_mm"] for row in rows], dtype=np.float64)
    finite = hd95[np.isfinite(hd95)]
    return {
        "labels": len(rows),
        "mean_dice": float(dice.mean()),
        "min_dice": float(dice.min()),
        "mean_hd95_mm": float(finite.mean()) if finite.size else float("inf"),
        "max_hd95_mm": float(finite.max()) if finite.size else float("inf"),
    }


# --------------------------------------------------------------------------------------------
# 3. Inverse consistency


def inverse_consistency(scene, forward_node, inverse_node, reference_volume_node, mask_node=None):
    """``|T_inv(T(p)) - p|`` (mm) at every voxel ``p`` of the reference (fixed) grid, where ``T``
    is ``forward_node``'s resampling transform (fixed to moving) and ``T_inv``
    ``inverse_node``'s (moving to fixed), both applied exactly by Slicer (not resampled).

    Returns ``(volume_node, stats)``; the volume is nan outside ``mask_node`` (labelmap on the
    reference grid or segmentation), ``stats``: ``mean_mm``, ``p95_mm``, ``max_mm`` and
    ``voxels`` over the mask (default the whole grid)."""
    from .. import metrics

    _check_transform(forward_node, "forward transform")
    _check_transform(inverse_node, "inverse transform")
    if forward_node is inverse_node:
        raise InputError(f"the forward and inverse transforms are the same node ('{forward_node.GetName()}'); "
                         "choose the transform computed the other way (e.g. the registration's inverse output)")
    geometry = reference_geometry(reference_volume_node, forward_node)
    mask = mask_on_reference(mask_node, reference_volume_node, geometry)
    error = metrics.inverse_consistency_error(NodeTransform(forward_node, geometry), NodeTransform(inverse_node), mask)
    values = error.array[np.isfinite(error.array)]
    stats = {"mean_mm": float(values.mean()), "p95_mm": float(np.percentile(values, 95)),
             "max_mm": float(values.max()), "voxels": int(values.size)}
    name = scene.GenerateUniqueName(f"{forward_node.GetName()} inverse consistency")
    node = mrml.add_volume_node(scene, error, name)
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, max(stats["p95_mm"], 1e-3))
    attributes = _result_attributes("inverse consistency error (mm)", forward_node, reference_volume_node, mask_node, stats)
    attributes[mrml.ATTRIBUTE_PREFIX + "Inverse"] = inverse_node.GetName()
    mrml.set_attributes(node, attributes)
    return node, stats


# --------------------------------------------------------------------------------------------
# 4. Landmark error


def control_points_ras(markups_node, what: str, transform_node=None) -> tuple[np.ndarray, list[str]]:
    """``(points (n, 3) RAS mm, labels)`` of a markups node: world positions, or, when the node is
    under ``transform_node``, positions in that transform's child space (moving space)."""
    import slicer
    import vtk

    _require(markups_node, what, "vtkMRMLMarkupsNode", "choose a point list (Markups)")
    count = markups_node.GetNumberOfControlPoints()
    if count == 0:
        raise InputError(f"the {what} '{markups_node.GetName()}' has no point; place the landmarks first")
    undefined = [i + 1 for i in range(count)
                 if markups_node.GetNthControlPointPositionStatus(i) != markups_node.PositionDefined]
    if undefined:
        raise InputError(f"the {what} '{markups_node.GetName()}' has points without a position ({_list(undefined)}); "
                         "place or delete them")
    local = np.array([markups_node.GetNthControlPointPosition(i) for i in range(count)], dtype=np.float64)
    labels = [markups_node.GetNthControlPointLabel(i) for i in range(count)]
    if markups_node.GetParentTransformNode() is None:
        return local, labels
    target = _moving_space_target(markups_node, transform_node)
    to_space = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(markups_node.GetParentTransformNode(), target, to_space)
    return mrml.transform_points_ras(to_space, local).astype(np.float64), labels


def landmark_error(scene, fixed_points_node, moving_points_node, transform_node):
    """``|T(fixed_i) - moving_i|`` (mm) per pair of landmarks (paired by index), ``T`` the
    resampling transform of ``transform_node`` (fixed to moving), computed on LPS points by
    :func:`dmmreg.metrics.landmark_errors` from the nodes' RAS positions.

    Returns ``(table_node, stats)``; the table has one row per pair (Index, Fixed label, Moving
    label, Error (mm)), ``stats``: ``count``, ``mean_mm``, ``median_mm``, ``max_mm``."""
    from .. import metrics

    _check_transform(transform_node)
    if fixed_points_node is not None:
        _check_not_under(fixed_points_node, transform_node, "fixed landmarks")
    fixed, fixed_labels = control_points_ras(fixed_points_node, "fixed landmarks")
    moving, moving_labels = control_points_ras(moving_points_node, "moving landmarks", transform_node)
    if len(fixed) != len(moving):
        raise InputError(
            f"the fixed landmarks '{fixed_points_node.GetName()}' have {len(fixed)} points but the moving landmarks "
            f"'{moving_points_node.GetName()}' have {len(moving)}; landmarks are paired by their order, so give "
            "both lists the same number of points"
        )
    errors = metrics.landmark_errors(fixed * mrml.FLIP, moving * mrml.FLIP, NodeTransform(transform_node))
    stats = {"count": int(errors.size), "mean_mm": float(errors.mean()), "median_mm": float(np.median(errors)),
             "max_mm": float(errors.max())}
    name = scene.GenerateUniqueName(f"{fixed_points_node.GetName()} to {moving_points_node.GetName()} landmark error")
    table = mrml.add_table_node(scene, name, {"Index": list(range(1, len(errors) + 1)), "Fixed label": fixed_labels,
                                         "Moving label": moving_labels, "Error (mm)": errors.tolist()})
    table.SetColumnUnitLabel("Error (mm)", "mm")
    mrml.set_attributes(table, _result_attributes("landmark error", transform_node, fixed_points_node, None, stats))
    return table, stats


# --------------------------------------------------------------------------------------------
# 5. Deformation display


def show_deformation_grid(transform_node, mode: str = "grid", reference_volume_node=None):
    """Show ``transform_node`` in the slice views as a deformed grid, glyphs (arrows) or contours
    of the displacement magnitude (mm), over the region of ``reference_volume_node`` when given.

    Creates the transform's display node if it has none; returns the display node.  Only the
    display node changes, never the transform."""
    _check_transform(transform_node)
    modes = {"grid": "VIS_MODE_GRID", "glyph": "VIS_MODE_GLYPH", "contour": "VIS_MODE_CONTOUR"}
    if mode not in modes:
        raise InputError(f"visualisation mode must be one of {', '.join(VISUALIZATION_MODES)}, not '{mode}'")
    if reference_volume_node is not None:
        _require(reference_volume_node, "reference volume", "vtkMRMLVolumeNode", "choose the fixed volume")
    if transform_node.GetDisplayNode() is None:
        transform_node.CreateDefaultDisplayNodes()
    display = transform_node.GetDisplayNode()
    display.SetVisualizationMode(getattr(display, modes[mode]))
    if reference_volume_node is not None:
        display.SetAndObserveRegionNode(reference_volume_node)
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    return display


# --------------------------------------------------------------------------------------------
# Tables and charts


def add_bar_chart(scene, table_node, x_column: str, y_column: str, label_column: str, name: str,
                  y_range: tuple[float, float] | None = None):
    """Plot chart node with one bar series of ``y_column`` against ``x_column`` of ``table_node``
    (bars labelled by ``label_column``)."""
    import slicer

    chart, series = mrml.add_plot_chart(scene, table_node, x_column, y_column, name,
                                        slicer.vtkMRMLPlotSeriesNode.PlotTypeBar, series_name=f"{name} series")
    series.SetLabelColumnName(label_column)
    series.SetColor(0.2, 0.5, 0.9)
    if y_range is not None:
        chart.SetYAxisRangeAuto(False)
        chart.SetYAxisRange(*y_range)
    return chart


# --------------------------------------------------------------------------------------------
# 6. Report


def _jsonable(value):
    """``value`` with numpy types as Python ones and non-finite numbers as None (valid JSON)."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "table"


def _report_folder(scene, folder) -> str:
    if folder:
        return os.fspath(folder)
    url = scene.GetURL() if scene is not None else ""
    if not url:
        raise InputError("the scene has not been saved, so there is no folder beside it; choose a report folder")
    return os.path.dirname(os.path.abspath(url))


def _report_paths(folder: str, base: str, table_names: list[str], picture: bool) -> dict[str, str]:
    """Paths of one report ``base``, ``base-2``, ... : the first counter with none of its files there."""
    counter = 1
    while True:
        stem = base if counter == 1 else f"{base}-{counter}"
        paths = {"json": os.path.join(folder, f"{stem}.json")}
        paths.update({name: os.path.join(folder, f"{stem}-{_slug(name)}.csv") for name in table_names})
        if picture:
            paths["picture"] = os.path.join(folder, f"{stem}.png")
        if not any(os.path.exists(path) for path in paths.values()):
            return paths
        counter += 1


def _write_csv(table_node, path: str) -> None:
    import csv

    columns = mrml.table_columns(table_node)

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(columns)
            writer.writerows(zip(*columns.values()))

    atomic_write(path, write)


def _write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as stream:
            stream.write(text)

    atomic_write(path, write)


def save_jacobian_picture(jacobian_volume_node, path: str) -> None:
    """PNG (matplotlib, no render window) of the axial, coronal and sagittal middle slices (in
    the volume's voxel grid) of a Jacobian volume, in the colours of :func:`jacobian_colours`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ..picture import _slices

    volume = mrml._voxel_array(jacobian_volume_node)
    if volume.shape[0] == 1:
        volume = volume[0]
    window, level = JACOBIAN_WINDOW_LEVEL
    colour_map = ListedColormap(jacobian_colours()[:, :3])
    views = _slices(volume)
    fig, axes = plt.subplots(1, len(views), figsize=(4.5 * len(views), 4.4), squeeze=False, layout="constrained")
    for ax, view, title in zip(axes[0], views, ["axial", "coronal", "sagittal"] if len(views) == 3 else ["slice"]):
        shown = ax.imshow(view, cmap=colour_map, vmin=level - window / 2, vmax=level + window / 2, origin="lower")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.025, label="det J (black: folding)")
    fig.suptitle(jacobian_volume_node.GetName())
    atomic_write(os.fspath(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def write_report(scene, folder, tables, stats: Mapping, picture_png=None, jacobian_volume_node=None,
                 name: str = "quality-report") -> dict[str, str]:
    """Write a quality report into ``folder`` (None: the folder of the saved scene): each table
    node as ``<name>-<table>.csv``, the ``stats`` (any JSON-like mapping; non-finite numbers
    become null) as ``<name>.json``, and a picture ``<name>.png``: ``picture_png`` (a PNG made
    elsewhere, e.g. by :mod:`dmmreg.picture`) copied, else one of ``jacobian_volume_node`` drawn
    by :func:`save_jacobian_picture`, else none.

    ``tables``: a mapping ``{name: table node}`` or a sequence of table nodes (named after the
    nodes).  Every file is written atomically (temporary file, then ``os.replace``); an existing
    report is never overwritten: the next free ``<name>-2``, ``<name>-3``, ... is used.
    Returns ``{"json": path, <table name>: path, "picture": path}``."""
    if picture_png is not None and not os.path.isfile(picture_png):
        raise InputError(f"the picture {picture_png} does not exist; make it first or leave it out")
    named = dict(tables) if isinstance(tables, Mapping) else {node.GetName(): node for node in (tables or [])}
    folder = _report_folder(scene, folder)
    os.makedirs(folder, exist_ok=True)
    paths = _report_paths(folder, name, list(named), picture_png is not None or jacobian_volume_node is not None)
    for table_name, table_node in named.items():
        _write_csv(table_node, paths[table_name])
    if picture_png is not None:
        atomic_write(paths["picture"], lambda tmp: shutil.copyfile(picture_png, tmp))
    elif jacobian_volume_node is not None:
        save_jacobian_picture(jacobian_volume_node, paths["picture"])
    document = {
        "created": _now(),
        "scene": scene.GetURL() if scene is not None else "",
        "statistics": _jsonable(stats),
        "tables": {table_name: os.path.basename(paths[table_name]) for table_name in named},
        "picture": os.path.basename(paths["picture"]) if "picture" in paths else None,
    }
    # the JSON last: a report whose JSON exists is complete
    _write_text(paths["json"], json.dumps(document, indent=2, sort_keys=False) + "\n")
    return paths
