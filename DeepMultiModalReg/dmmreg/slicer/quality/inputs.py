"""Checking the inputs of a quality measure, before any node is added: node types, which
space a node shows, the reference (fixed) grid and an optional mask on it.

Spaces: the evaluated transform is the *resampling* transform of a node (Slicer's FromParent
over its whole parent chain), fixed (reference) space to moving space.  The fixed space is
world space: a reference volume, fixed labels or fixed landmarks are taken as displayed
(linear parent transforms included) and must not be under the evaluated transform.  A moving
node placed under the evaluated transform is read in that transform's child space, which is
its moving space; otherwise in world space.  Geometries are LPS (mm), as the backend's.

Bad input raises :class:`~dmmreg.errors.InputError` naming the problem and the fix.
"""

from __future__ import annotations

import numpy as np

from .. import mrml
from ...errors import InputError
from ...geometry import Geometry


def require_node(node, what: str, class_name: str, fix: str) -> None:
    """``InputError`` unless ``node`` is a ``class_name`` node."""
    if node is None:
        raise InputError(f"no {what} selected; {fix}")
    if not node.IsA(class_name):
        raise InputError(f"the {what} '{node.GetName()}' is a {node.GetClassName()}, not a {class_name}; {fix}")


def check_transform(transform_node, what: str = "transform") -> None:
    """``InputError`` unless ``transform_node`` is a transform node (of any kind)."""
    require_node(transform_node, what, "vtkMRMLTransformNode",
                 "choose the registration's transform node (linear, grid, B-spline or composite)")


def is_under(node, transform_node) -> bool:
    """Whether ``transform_node`` is ``node``'s parent transform or one of its ancestors."""
    parent = node.GetParentTransformNode()
    while parent is not None:
        if parent is transform_node:
            return True
        parent = parent.GetParentTransformNode()
    return False


def check_not_under(node, transform_node, what: str) -> None:
    """The fixed-space inputs must show the fixed space, not be moved by the evaluated transform."""
    if transform_node is not None and is_under(node, transform_node):
        raise InputError(
            f"the {what} '{node.GetName()}' is under the transform '{transform_node.GetName()}' being "
            "evaluated; move it out of that transform (Data module) so it shows the fixed space"
        )


def moving_space_target(node, transform_node):
    """Where a moving-space node's coordinates are read: ``transform_node``'s child space when
    the node is under it, else world (None)."""
    return transform_node if transform_node is not None and is_under(node, transform_node) else None


def reference_geometry(reference_volume_node, transform_node=None, what: str = "reference volume") -> Geometry:
    """LPS geometry of the reference (fixed) volume as displayed; ``InputError`` if it is
    missing, empty, under a non-linear transform or under the evaluated ``transform_node``."""
    require_node(reference_volume_node, what, "vtkMRMLVolumeNode",
                 "choose the fixed volume the transform was computed for")
    check_not_under(reference_volume_node, transform_node, what)
    return mrml.geometry_from_volume_node(reference_volume_node)


def dimension_words(geometry: Geometry) -> str:
    """"3D" or "2D (a single slice)", for messages."""
    return "2D (a single slice)" if mrml.is_single_slice(geometry) else "3D"


def check_same_grid(geometry: Geometry, reference: Geometry, what: str, name: str, reference_name: str) -> None:
    """``InputError`` unless ``geometry`` is the ``reference`` grid (sizes, spacing, origin and
    direction); the message says whether the dimension or only the grid differs."""
    if mrml.is_single_slice(geometry) != mrml.is_single_slice(reference):
        raise InputError(
            f"the {what} '{name}' is {dimension_words(geometry)} but '{reference_name}' is "
            f"{dimension_words(reference)}; use a {what} of the same dimension"
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


def listed_values(values, limit: int = 8) -> str:
    """Integers as "1, 2, 3" for messages (at most ``limit``, then "..."; "none" for none)."""
    values = [str(int(v)) for v in values]
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "") if values else "none"
