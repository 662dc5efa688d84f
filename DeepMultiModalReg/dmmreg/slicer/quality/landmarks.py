"""Landmark (target registration) error: ``|T(fixed_i) - moving_i|`` in mm per pair of points
of two markups nodes, paired by their order, as a table and statistics.

``T`` is the node's resampling transform (fixed to moving).  Markups positions are RAS (mm);
fixed points are read in world space, moving points in the evaluated transform's child space
when they are under it; the distances are computed on LPS points by the backend.
"""

from __future__ import annotations

import numpy as np

from .. import mrml
from ...errors import InputError
from .attributes import result_attributes
from .inputs import check_not_under, check_transform, listed_values, moving_space_target, require_node
from .sampling import NodeTransform


def control_points_ras(markups_node, what: str, transform_node=None) -> tuple[np.ndarray, list[str]]:
    """``(points (n, 3) RAS mm, labels)`` of a markups node: world positions, or, when the node is
    under ``transform_node``, positions in that transform's child space (moving space)."""
    import slicer
    import vtk

    require_node(markups_node, what, "vtkMRMLMarkupsNode", "choose a point list (Markups)")
    count = markups_node.GetNumberOfControlPoints()
    if count == 0:
        raise InputError(f"the {what} '{markups_node.GetName()}' has no point; place the landmarks first")
    undefined = [i + 1 for i in range(count)
                 if markups_node.GetNthControlPointPositionStatus(i) != markups_node.PositionDefined]
    if undefined:
        raise InputError(f"the {what} '{markups_node.GetName()}' has points without a position ({listed_values(undefined)}); "
                         "place or delete them")
    local = np.array([markups_node.GetNthControlPointPosition(i) for i in range(count)], dtype=np.float64)
    labels = [markups_node.GetNthControlPointLabel(i) for i in range(count)]
    if markups_node.GetParentTransformNode() is None:
        return local, labels
    target = moving_space_target(markups_node, transform_node)
    to_space = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(markups_node.GetParentTransformNode(), target, to_space)
    return mrml.transform_points_ras(to_space, local).astype(np.float64), labels


def landmark_error(scene, fixed_points_node, moving_points_node, transform_node):
    """``|T(fixed_i) - moving_i|`` (mm) per pair of landmarks (paired by index), ``T`` the
    resampling transform of ``transform_node`` (fixed to moving), computed on LPS points by
    :func:`dmmreg.metrics.landmark_errors` from the nodes' RAS positions.

    Returns ``(table_node, stats)``; the table has one row per pair (Index, Fixed label, Moving
    label, Error (mm)), ``stats``: ``count``, ``mean_mm``, ``median_mm``, ``max_mm``."""
    from ... import metrics

    check_transform(transform_node)
    if fixed_points_node is not None:
        check_not_under(fixed_points_node, transform_node, "fixed landmarks")
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
    mrml.set_attributes(table, result_attributes("landmark error", transform_node, fixed_points_node, None, stats))
    return table, stats
