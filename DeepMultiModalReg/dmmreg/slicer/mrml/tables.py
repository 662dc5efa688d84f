"""Table and plot nodes: results as tables (one row per label, landmark, epoch, ...) and charts
of their columns, and tables read back as Python columns.

No coordinates or units of their own: a column's unit is in its name (e.g. "Error (mm)").
Needs slicer-core (``vtk``, MRML table and plot nodes) and numpy; never torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def add_table_node(scene, name: str, columns: Mapping[str, list]):
    """New ``vtkMRMLTableNode`` with ``columns`` (name: values; ints, floats or strings by the
    type of the first value) of equal length."""
    import vtk

    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = table_node.GetTable()
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    for column_name, values in columns.items():
        first = values[0] if values else 0.0
        if isinstance(first, str):
            array = vtk.vtkStringArray()
        elif isinstance(first, (int, np.integer)):
            array = vtk.vtkIntArray()
        else:
            array = vtk.vtkDoubleArray()
        array.SetName(column_name)
        for value in values:
            array.InsertNextValue(value if isinstance(first, str) else value.item() if hasattr(value, "item") else value)
        table.AddColumn(array)
    table_node.Modified()
    return table_node


def add_plot_chart(scene, table_node, x_column: str, y_column: str, name: str, plot_type: int,
                   series_name: str | None = None, x_title: str | None = None, y_title: str | None = None):
    """A ``vtkMRMLPlotChartNode`` titled ``name`` with one series (``vtkMRMLPlotSeriesNode`` of
    ``plot_type``) of ``y_column`` against ``x_column`` of ``table_node``; axis titles default to
    the column names.  Returns ``(chart, series)``."""
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", series_name or name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x_column)
    series.SetYColumnName(y_column)
    series.SetPlotType(plot_type)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_title or x_column)
    chart.SetYAxisTitle(y_title or y_column)
    return chart, series


def table_columns(table_node) -> dict[str, list]:
    """The columns of a table node as ``{name: values}`` (numbers as Python numbers)."""
    from vtk.util import numpy_support

    table = table_node.GetTable()
    columns = {}
    for index in range(table.GetNumberOfColumns()):
        array = table.GetColumn(index)
        if array.IsA("vtkStringArray"):
            columns[array.GetName()] = [array.GetValue(row) for row in range(array.GetNumberOfValues())]
        else:
            columns[array.GetName()] = numpy_support.vtk_to_numpy(array).tolist()
    return columns
