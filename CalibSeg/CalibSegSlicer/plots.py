"""Reliability diagram (plot chart) and metrics table nodes.

One chart shows, for each model, the observed frequency of the predicted class
against the mean confidence of each confidence bin (a line over the bins with
enough voxels), the bins with too few voxels as grey points labelled with their
count (left out of MCE: the library's minimum-bin-mass rule), the share of voxels
in each bin (bars), and the diagonal of perfect calibration. A table node holds
ACE, ECE, MCE (and MCE over every bin), Dice per class and the other scores, one
column per model.

Values come straight from :class:`CalibSegLib.calibration.DiagramBins` and the
metrics of :class:`~CalibSegLib.calibration.ReliabilityStats`; the functions here
only copy them into VTK tables.
"""

from __future__ import annotations

import math

import numpy as np
import slicer
import vtk

from CalibSegLib.calibration import DiagramBins

CHART_NAME = "CalibSeg reliability diagram"
CHART_TITLE = "Reliability diagram"
DIAGONAL_TABLE = "CalibSeg reliability diagonal"
METRICS_TABLE = "CalibSeg metrics"

#: Column names of a model's reliability table (one row per confidence bin).
BIN_CENTRE, CONFIDENCE, OBSERVED, FRACTION, COUNT = (
    "bin centre", "mean confidence", "observed frequency", "fraction of voxels", "count")
#: Observed frequency of the bins with too few voxels (NaN elsewhere), and point labels.
OBSERVED_LIGHT, RELIABLE, LABEL = "observed frequency (few voxels)", "reliable", "label"
#: Colour of the bins with too few voxels.
LIGHT_COLOR = (0.6, 0.6, 0.6)

#: Line colours of models A and B (bars use the same colour, lighter).
SERIES_COLORS = {"A": (0.85, 0.30, 0.10), "B": (0.15, 0.45, 0.80)}

#: Metric rows: (row label, key in the metrics dict); Dice rows are added per class.
METRIC_ROWS = [
    ("ACE", "ace"), ("ECE", "ece"), ("MCE", "mce"), ("MCE (all bins)", "mce_raw"),
    ("marginal ACE", "marginal_ace"), ("marginal ECE", "marginal_ece"),
    ("marginal MCE", "marginal_mce"), ("NLL", "nll"), ("Brier", "brier"),
]


def diagramArrays(bins: DiagramBins) -> dict[str, np.ndarray]:
    """The columns of a model's reliability table from the library's diagram bins.

    float64 ``(B,)`` arrays: bin centre, mean confidence, observed frequency of the
    reliable bins (NaN elsewhere, so the line skips them), observed frequency of the
    non-empty bins with too few voxels (NaN elsewhere), count, fraction, reliable (1/0).
    """
    observed = np.where(bins.reliable, bins.accuracy, np.nan)
    light = np.where(bins.sparse, bins.accuracy, np.nan)
    return {BIN_CENTRE: np.asarray(bins.centres, np.float64),
            CONFIDENCE: np.asarray(bins.confidence, np.float64),
            OBSERVED: observed.astype(np.float64), OBSERVED_LIGHT: light.astype(np.float64),
            COUNT: bins.count.astype(np.float64), FRACTION: bins.fraction.astype(np.float64),
            RELIABLE: bins.reliable.astype(np.float64)}


def pointLabels(bins: DiagramBins) -> list[str]:
    """One label per bin: its voxel count, marked when below the minimum mass."""
    return [f"n={int(n)}" + (f" (< {bins.min_count}: not in MCE)" if sparse else "")
            for n, sparse in zip(bins.count, bins.sparse)]


def fillColumns(tableNode, columns: dict[str, np.ndarray], labels: list[str] | None = None
                ) -> None:
    """Replace a table node's content with float columns (same length each) and, when
    given, a string column :data:`LABEL`."""
    table = vtk.vtkTable()
    if labels is not None:
        text = vtk.vtkStringArray()
        text.SetName(LABEL)
        for label in labels:
            text.InsertNextValue(label)
        table.AddColumn(text)
    for name, values in columns.items():
        array = vtk.vtkDoubleArray()
        array.SetName(name)
        values = np.asarray(values, dtype=np.float64)
        array.SetNumberOfTuples(len(values))
        for row, value in enumerate(values):
            array.SetValue(row, float(value))
        table.AddColumn(array)
    tableNode.SetAndObserveTable(table)
    tableNode.Modified()


def readColumn(tableNode, name: str) -> np.ndarray:
    """A float column of a table node as an array (NaN kept)."""
    column = tableNode.GetTable().GetColumnByName(name)
    if column is None:
        raise KeyError(f"table '{tableNode.GetName()}' has no column '{name}'")
    return np.array([column.GetValue(i) for i in range(column.GetNumberOfTuples())])


def newDiagonalTable():
    node = slicer.vtkMRMLTableNode()
    node.SetName(DIAGONAL_TABLE)
    fillColumns(node, {"x": np.array([0.0, 1.0]), "y": np.array([0.0, 1.0])})
    return node


def newSeries(name: str, tableNode, xColumn: str, yColumn: str, color, plotType: str):
    """A plot series node (not in a scene); the table reference is set once both are added."""
    series = slicer.vtkMRMLPlotSeriesNode()
    series.SetName(name)
    series.SetXColumnName(xColumn)
    series.SetYColumnName(yColumn)
    series.SetColor(*color)
    if plotType == "light":
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetMarkerSize(7)
        series.SetLabelColumnName(LABEL)
    elif plotType == "bar":
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        series.SetOpacity(0.35)
    else:
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetLineWidth(3)
        if plotType == "diagonal":
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetLineWidth(1)
    return series


def newChart():
    chart = slicer.vtkMRMLPlotChartNode()
    chart.SetName(CHART_NAME)
    chart.SetTitle(CHART_TITLE)
    chart.SetXAxisTitle("confidence (max probability)")
    chart.SetYAxisTitle("observed frequency / fraction of voxels")
    chart.SetXAxisRangeAuto(False)
    chart.SetYAxisRangeAuto(False)
    chart.SetXAxisRange(0.0, 1.0)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(True)
    return chart


def metricRows(metrics: dict, classNames) -> list[tuple[str, float]]:
    """``(label, value)`` rows of the metrics table from ``ReliabilityStats.metrics()``.

    The rows of :data:`METRIC_ROWS` the metrics have, then ``Dice <class>`` per class of
    ``metrics["dice"]`` (``{class name: value}``) in the model's class order.
    """
    rows = [(label, float(metrics[key])) for label, key in METRIC_ROWS if key in metrics]
    dice = metrics.get("dice", {})
    rows += [(f"Dice {name}", float(dice[name])) for name in classNames if name in dice]
    return rows


def fillMetricsTable(tableNode, columns: dict[str, list[tuple[str, float]]],
                     temperatures: dict[str, float]) -> None:
    """Write rows of metrics, one column per model; the first column holds the row labels."""
    labels: list[str] = []
    for rows in columns.values():
        for label, _ in rows:
            if label not in labels:
                labels.append(label)
    labels.append("temperature")
    table = vtk.vtkTable()
    names = vtk.vtkStringArray()
    names.SetName("metric")
    for label in labels:
        names.InsertNextValue(label)
    table.AddColumn(names)
    for model, rows in columns.items():
        values = dict(rows)
        values["temperature"] = float(temperatures.get(model, math.nan))
        array = vtk.vtkDoubleArray()
        array.SetName(model)
        array.SetNumberOfTuples(len(labels))
        for i, label in enumerate(labels):
            array.SetValue(i, float(values.get(label, math.nan)))
        table.AddColumn(array)
    tableNode.SetAndObserveTable(table)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.Modified()


def readMetricsTable(tableNode) -> dict[str, dict[str, float]]:
    """``{model column: {row label: value}}`` from a metrics table node."""
    table = tableNode.GetTable()
    labels = table.GetColumnByName("metric")
    out = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        if column.GetName() == "metric":
            continue
        out[column.GetName()] = {
            labels.GetValue(r): column.GetValue(r) for r in range(table.GetNumberOfRows())
        }
    return out
