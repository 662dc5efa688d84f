"""Showing a transform node's deformation in the slice views: a deformed grid, glyphs (arrows)
or contours of the displacement magnitude (mm), over the region of a reference volume.

Slicer draws the node's displacement itself (RAS); only the node's display node changes,
never the transform.
"""

from __future__ import annotations

from ...errors import InputError
from .inputs import check_transform, require_node

#: Visualisation modes of :func:`show_deformation_grid`, as the Quality module offers them.
VISUALIZATION_MODES = ("grid", "glyph", "contour")


def show_deformation_grid(transform_node, mode: str = "grid", reference_volume_node=None):
    """Show ``transform_node`` in the slice views as a deformed grid, glyphs (arrows) or contours
    of the displacement magnitude (mm), over the region of ``reference_volume_node`` when given.

    Creates the transform's display node if it has none; returns the display node.  Only the
    display node changes, never the transform."""
    check_transform(transform_node)
    modes = {"grid": "VIS_MODE_GRID", "glyph": "VIS_MODE_GLYPH", "contour": "VIS_MODE_CONTOUR"}
    if mode not in modes:
        raise InputError(f"visualisation mode must be one of {', '.join(VISUALIZATION_MODES)}, not '{mode}'")
    if reference_volume_node is not None:
        require_node(reference_volume_node, "reference volume", "vtkMRMLVolumeNode", "choose the fixed volume")
    if transform_node.GetDisplayNode() is None:
        transform_node.CreateDefaultDisplayNodes()
    display = transform_node.GetDisplayNode()
    display.SetVisualizationMode(getattr(display, modes[mode]))
    if reference_volume_node is not None:
        display.SetAndObserveRegionNode(reference_volume_node)
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    return display
