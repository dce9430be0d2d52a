"""Self-contained HTML reports: model cards, metrics, diagrams, overlays, galleries."""

from CalibSegLib.report.figures import gallery_figure, montage_figure
from CalibSegLib.report.html import HtmlReport, figure_data_uri

__all__ = ["HtmlReport", "figure_data_uri", "gallery_figure", "montage_figure"]
