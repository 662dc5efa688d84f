"""Label overlap after registration: the moving labels warped onto the fixed ones through any
transform node (nearest neighbour), Dice and HD95 per label, as a table and a bar chart.

The transform is the node's resampling transform (fixed to moving), sampled on the fixed
label grid (LPS, mm) and applied by the backend's resampling.  HD95 is in mm (in-plane for
single-slice maps); Dice is dimensionless.
"""

from __future__ import annotations

import numpy as np

from .. import mrml
from ...errors import InputError
from ...geometry import Geometry
from ...image import Image
from .attributes import result_attributes
from .inputs import check_not_under, check_transform, dimension_words, listed_values, require_node
from .labels import Labels, labels_from_node
from .sampling import resampling_transform


def warp_labels(labels: Labels, transform_node, fixed_geometry: Geometry) -> np.ndarray:
    """Moving labels resampled on ``fixed_geometry`` through the resampling transform of
    ``transform_node`` (nearest neighbour; 0 outside the moving grid), array (k, j, i).

    The transform is sampled on the fixed grid and applied with
    :meth:`RegistrationResult.warp`, the backend's (and SimpleITK's) resampling."""
    from ...result import RegistrationResult

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
    from ... import metrics

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
            f"the fixed labels '{fixed_node.GetName()}' (values {listed_values(fixed.present)}) and the moving labels "
            f"'{moving_node.GetName()}' (values {listed_values(moving.present)}) have no label in common; "
            "choose label maps of the same structures, numbered alike (or segmentations with the same segment names)"
        )


def label_overlap(scene, fixed_labels_node, moving_labels_node, transform_node, reference_volume_node=None):
    """Dice and HD95 per label between the fixed labels and the moving labels warped onto them
    through ``transform_node`` (nearest neighbour).

    Labelmaps are matched by value, segmentations by segment name (see :func:`labels_from_node`);
    a fixed segmentation is rasterised on ``reference_volume_node`` when given.  HD95 is in mm
    (in-plane for single-slice maps).  Returns ``(table_node, chart_node)``: a table with one
    row per label present in the fixed map (Label, Name, Dice, HD95 (mm), Fixed voxels, Warped
    voxels; mean Dice in its ``DeepMultiModalReg.Statistics`` attribute) and a bar chart of Dice
    per label."""
    check_transform(transform_node)
    require_node(moving_labels_node, "moving labels", "vtkMRMLNode", "choose a labelmap volume or a segmentation")
    if fixed_labels_node is not None:
        check_not_under(fixed_labels_node, transform_node, "fixed labels")
    fixed = labels_from_node(fixed_labels_node, "fixed labels", None, reference_volume_node, whole_grid=True)
    moving = labels_from_node(moving_labels_node, "moving labels", transform_node,
                              values_by_name={name: value for value, name in fixed.names.items()})
    if mrml.is_single_slice(fixed.image.geometry) != mrml.is_single_slice(moving.image.geometry):
        raise InputError(
            f"the fixed labels '{fixed_labels_node.GetName()}' are {dimension_words(fixed.image.geometry)} but the "
            f"moving labels '{moving_labels_node.GetName()}' are {dimension_words(moving.image.geometry)}; "
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
    mrml.set_attributes(table, result_attributes("label overlap", transform_node, fixed_labels_node, None, stats))
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
