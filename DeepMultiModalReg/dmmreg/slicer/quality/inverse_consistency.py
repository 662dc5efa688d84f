"""Inverse consistency of a pair of transform nodes: ``|T_inv(T(p)) - p|`` in mm at every voxel
``p`` of the reference (fixed) grid, as a volume node and statistics.

``T`` is the forward node's resampling transform (fixed to moving), ``T_inv`` the inverse
node's (moving to fixed); both are applied exactly by Slicer (VTK, RAS) to LPS points through
:class:`~.sampling.NodeTransform`, never resampled.
"""

from __future__ import annotations

import numpy as np

from .. import mrml
from ...errors import InputError
from .attributes import result_attributes
from .inputs import check_transform, mask_on_reference, reference_geometry
from .sampling import NodeTransform


def inverse_consistency(scene, forward_node, inverse_node, reference_volume_node, mask_node=None):
    """``|T_inv(T(p)) - p|`` (mm) at every voxel ``p`` of the reference (fixed) grid, where ``T``
    is ``forward_node``'s resampling transform (fixed to moving) and ``T_inv``
    ``inverse_node``'s (moving to fixed), both applied exactly by Slicer (not resampled).

    Returns ``(volume_node, stats)``; the volume is nan outside ``mask_node`` (labelmap on the
    reference grid or segmentation), ``stats``: ``mean_mm``, ``p95_mm``, ``max_mm`` and
    ``voxels`` over the mask (default the whole grid)."""
    from ... import metrics

    check_transform(forward_node, "forward transform")
    check_transform(inverse_node, "inverse transform")
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
    attributes = result_attributes("inverse consistency error (mm)", forward_node, reference_volume_node, mask_node, stats)
    attributes[mrml.ATTRIBUTE_PREFIX + "Inverse"] = inverse_node.GetName()
    mrml.set_attributes(node, attributes)
    return node, stats
