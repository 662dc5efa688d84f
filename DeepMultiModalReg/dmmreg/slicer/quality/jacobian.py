"""The Jacobian determinant of any transform node on the reference (fixed) grid: values,
statistics (:func:`dmmreg.metrics.jacobian_statistics`), and a volume node shown with a colour
map centred on ``J = 1``.

``J`` is det of the Jacobian of the node's resampling transform (fixed to moving), dimensionless
and the same in RAS and LPS: > 1 a fixed-space region grows in moving space, < 1 it shrinks,
<= 0 the transform folds.  It is computed on the LPS reference grid (mm) by central
differences of the transform sampled there, as the backend computes it.
"""

from __future__ import annotations

import numpy as np

from .. import mrml
from ...geometry import Geometry
from ...image import Image
from .attributes import result_attributes
from .inputs import check_transform, mask_on_reference, reference_geometry
from .sampling import resampling_transform

#: Name of the shared colour table of Jacobian-determinant volumes.
JACOBIAN_COLOR_NODE_NAME = "DeepMultiModalReg Jacobian"
#: Saturation of the Jacobian colour map: full blue at ``J <= 2**-1``, full red at ``J >= 2**1``.
JACOBIAN_LOG2_SATURATION = 1.0
#: Display window of Jacobian volumes, ``(window, level)``: ``J`` in [0, 2], centred on 1.
JACOBIAN_WINDOW_LEVEL = (2.0, 1.0)
#: Entries of the colour table; odd, so the middle entry is centred exactly on ``J = 1``.
JACOBIAN_COLORS = 257


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


def _jacobian_on_slab(transform_node, geometry: Geometry) -> Image:
    """det of the Jacobian of ``transform_node``'s resampling transform at every voxel of
    :func:`_slab` of ``geometry`` (LPS): central differences of the transform sampled on the
    grid (one-sided at the border); on a single slice the derivative along the slice normal
    uses the slices either side."""
    import torch

    from ... import spatial

    slab = _slab(geometry)
    displacement = mrml.sampled_displacement_lps(resampling_transform(transform_node), slab)
    field_tensor = spatial.to_channels_first(torch.from_numpy(displacement)[None])
    return Image(spatial.jacobian_determinant(field_tensor, slab)[0].numpy(), slab)


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
    from ... import metrics

    check_transform(transform_node)
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
    mrml.set_attributes(node, result_attributes("Jacobian determinant", transform_node, reference_volume_node, mask_node, stats))
    return node, stats
