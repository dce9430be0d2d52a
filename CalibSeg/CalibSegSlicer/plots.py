"""Reliability diagram (plot chart) and metrics table nodes.

One chart shows, for each model, the observed frequency of the predicted class
against the mean confidence of each confidence bin (a line), the share of voxels
in each bin (bars), and the diagonal of perfect calibration. A table node holds
ACE, ECE, MCE, Dice per class and the other scores, one column per model.

Values come straight from :class:`CalibSegLib.calibration.ReliabilityStats`; the
functions here only copy them into VTK tables.
"""

from __future__ import annotations

import math

import numpy as np
import slicer
import vtk

CHART_NAME = "CalibSeg reliability diagram"
DIAGONAL_TABLE = "CalibSeg reliability diagonal"
METRICS_TABLE = "CalibSeg metrics"

#: Column names of a model's reliability table (one row per confidence bin).
BIN_CENTRE, CONFIDENCE, OBSERVED, FRACTION, COUNT = (
    "bin centre", "mean confidence", "observed frequency", "fraction of voxels", "count")

#: Line colours of models A and B (bars use the same colour, lighter).
SERIES_COLORS = {"A": (0.85, 0.30, 0.10), "B": (0.15, 0.45, 0.80)}

#: Metric rows: (row label, key in the metrics dict); Dice rows are added per class.
METRIC_ROWS = [
    ("ACE", "ace"), ("ECE", "ece"), ("MCE", "mce"),
    ("marginal ACE", "marginal_ace"), ("marginal ECE", "marginal_ece"),
    ("marginal MCE", "marginal_mce"), ("NLL", "nll"), ("Brier", "brier"),
]


def diagramArrays(diagram: dict) -> dict[str, np.ndarray]:
    """Normalise a ``reliability_diagram()`` dict to the four columns of the table.

    Accepts the library's key names (and a few spellings of them) and returns
    float64 arrays ``{BIN_CENTRE, CONFIDENCE, OBSERVED, COUNT, FRACTION}``.
    """

    def pick(*candidates):
        for key in candidates:
            if key in diagram:
                return np.asarray(diagram[key], dtype=np.float64).ravel()
        raise KeyError(f"reliability diagram lacks one of {candidates}; has {sorted(diagram)}")

    centres = pick("bin_centers", "bin_centres", "centers", "centres", "bin_center")
    confidence = pick("mean_confidence", "confidence", "avg_confidence", "conf")
    observed = pick("observed_frequency", "frequency", "accuracy", "observed", "acc")
    counts = pick("counts", "count", "bin_counts")
    total = float(np.sum(counts))
    fraction = counts / total if total > 0 else np.zeros_like(counts)
    return {BIN_CENTRE: centres, CONFIDENCE: confidence, OBSERVED: observed,
            COUNT: counts, FRACTION: fraction}


def fillColumns(tableNode, columns: dict[str, np.ndarray]) -> None:
    """Replace a table node's content with float columns (same length each)."""
    table = vtk.vtkTable()
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
    if plotType == "bar":
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
    chart.SetTitle("Reliability diagram")
    chart.SetXAxisTitle("confidence (max probability)")
    chart.SetYAxisTitle("observed frequency / fraction of voxels")
    chart.SetXAxisRangeAuto(False)
    chart.SetYAxisRangeAuto(False)
    chart.SetXAxisRange(0.0, 1.0)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(True)
    return chart


def metricRows(metrics: dict, classNames) -> list[tuple[str, float]]:
    """``(label, value)`` rows of the metrics table for one model's metrics dict."""
    rows = [(label, _number(metrics.get(key))) for label, key in METRIC_ROWS if key in metrics]
    dice = metrics.get("dice")
    if isinstance(dice, dict):
        for name in classNames:
            if name in dice:
                rows.append((f"Dice {name}", _number(dice[name])))
    elif dice is not None and np.ndim(dice) == 1:
        for name, value in zip(classNames, np.asarray(dice, dtype=np.float64)):
            rows.append((f"Dice {name}", _number(value)))
    elif dice is not None:
        rows.append(("Dice", _number(dice)))
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


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
