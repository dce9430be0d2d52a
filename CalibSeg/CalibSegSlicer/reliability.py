"""The reliability diagram (one plot chart) and the metrics table of the shown results.

The chart holds the diagonal of perfect calibration and, per model, its observed
frequency per confidence bin (line over the bins with enough voxels; grey points,
labelled with their count, for the bins with too few, which MCE leaves out) and the
share of voxels per bin (bars), read from a table node of that model. The metrics
table has one column per model. While a temperature is previewed, a model's statistics
are an estimate from a voxel sample: the chart's title says so (see :func:`chartTitle`).
:class:`ReliabilityChart` remembers the ids of the shared nodes it created and
removes exactly those.
"""

from __future__ import annotations

from collections.abc import Mapping

import slicer

from CalibSegSlicer import layouts, plots
from CalibSegSlicer.results import ModelResult, removeNode


def columnName(result: ModelResult) -> str:
    """Metrics table column of a result: ``"<slot>: <model name>"``."""
    return f"{result.slot}: {result.name}"


def chartTitle(results: Mapping[str, ModelResult]) -> str:
    """The chart's title: says which models' statistics are estimates from a voxel sample."""
    estimated = [r.slot for r in results.values() if r.stats is not None and r.statsEstimated]
    if not estimated:
        return plots.CHART_TITLE
    return (f"{plots.CHART_TITLE} (estimate from a voxel sample for {', '.join(estimated)}; "
            "whole volume follows)")


class ReliabilityChart:
    """The chart, its diagonal and the metrics table of one scene (created on first use)."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.chartNodeID: str | None = None
        self.diagonalTableID: str | None = None
        self.diagonalSeriesID: str | None = None
        self.metricsTableID: str | None = None

    def _sharedNodes(self):
        scene = self.scene
        chart = scene.GetNodeByID(self.chartNodeID or "")
        if chart is None:
            diagonal = plots.newDiagonalTable()
            scene.AddNode(diagonal)
            series = plots.newSeries("perfect calibration", diagonal, "x", "y",
                                     (0.4, 0.4, 0.4), "diagonal")
            scene.AddNode(series)
            series.SetAndObserveTableNodeID(diagonal.GetID())
            chart = plots.newChart()
            scene.AddNode(chart)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.chartNodeID, self.diagonalTableID = chart.GetID(), diagonal.GetID()
            self.diagonalSeriesID = series.GetID()
        metricsTable = scene.GetNodeByID(self.metricsTableID or "")
        if metricsTable is None:
            metricsTable = slicer.vtkMRMLTableNode()
            metricsTable.SetName(plots.METRICS_TABLE)
            scene.AddNode(metricsTable)
            self.metricsTableID = metricsTable.GetID()
        return chart, metricsTable

    def _modelNodes(self, result: ModelResult):
        """The reliability table of ``result`` with its two series (created on first use)."""
        scene = self.scene
        table = scene.GetNodeByID(result.nodeIDs.get("reliability", ""))
        if table is not None:
            return table
        table = slicer.vtkMRMLTableNode()
        table.SetName(f"CalibSeg reliability {result.name} ({result.slot})")
        table.SetAttribute("CalibSeg.Slot", result.slot)
        scene.AddNode(table)
        result.nodeIDs["reliability"] = table.GetID()
        color = plots.SERIES_COLORS.get(result.slot, (0.2, 0.2, 0.2))
        for key, title, x, y, kind in (
            ("observedSeries", "observed frequency", plots.CONFIDENCE, plots.OBSERVED, "line"),
            ("lightSeries", "bins with few voxels", plots.CONFIDENCE, plots.OBSERVED_LIGHT,
             "light"),
            ("countSeries", "fraction of voxels", plots.BIN_CENTRE, plots.FRACTION, "bar"),
        ):
            series = plots.newSeries(f"{result.slot}: {result.name} {title}", table, x, y,
                                     plots.LIGHT_COLOR if kind == "light" else color, kind)
            series.SetLabelColumnName(plots.LABEL)
            series.SetAttribute("CalibSeg.Slot", result.slot)
            scene.AddNode(series)
            series.SetAndObserveTableNodeID(table.GetID())
            result.nodeIDs[key] = series.GetID()
        return table

    def update(self, results: Mapping[str, ModelResult]) -> None:
        """Draw every result that has statistics; drop series of results no longer shown."""
        chart, metricsTable = self._sharedNodes()
        wanted = [self.diagonalSeriesID]
        columns, temperatures = {}, {}
        for result in results.values():
            if result.stats is None:
                continue
            table = self._modelNodes(result)
            bins = result.stats.diagram_bins()
            plots.fillColumns(table, plots.diagramArrays(bins), plots.pointLabels(bins))
            wanted += [result.nodeIDs[key] for key in ("observedSeries", "lightSeries",
                                                        "countSeries")]
            columns[columnName(result)] = plots.metricRows(result.metrics or {},
                                                            result.classNames)
            temperatures[columnName(result)] = (result.temperature if result.statsTemperature
                                                is None else result.statsTemperature)
        present = [chart.GetNthPlotSeriesNodeID(i)
                   for i in range(chart.GetNumberOfPlotSeriesNodes())]
        for seriesID in present:
            if seriesID not in wanted:
                chart.RemovePlotSeriesNodeID(seriesID)
        for seriesID in wanted:
            if seriesID not in present:
                chart.AddAndObservePlotSeriesNodeID(seriesID)
        plots.fillMetricsTable(metricsTable, columns, temperatures)
        chart.SetTitle(chartTitle(results))
        layouts.plotViewNode(self.scene).SetPlotChartNodeID(chart.GetID())

    def remove(self) -> None:
        """Remove the chart, the diagonal and the metrics table from the scene."""
        for nodeID in (self.chartNodeID, self.diagonalSeriesID, self.diagonalTableID,
                       self.metricsTableID):
            removeNode(self.scene, self.scene.GetNodeByID(nodeID or ""))
        self.chartNodeID = self.diagonalSeriesID = self.diagonalTableID = None
        self.metricsTableID = None
