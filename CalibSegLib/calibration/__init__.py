"""Calibration core: reliability statistics, metrics, mL1-ACE losses, temperature scaling.

ACE here is the *Average* Calibration Error (mean gap over non-empty bins).
"""

from CalibSegLib.calibration.backend import KernelFallbackWarning
from CalibSegLib.calibration.binned_errors import compute_calibration_errors, compute_dice
from CalibSegLib.calibration.binning import bin_centres, bin_edges, bin_index
from CalibSegLib.calibration.diagram import (
    MIN_BIN_COUNT,
    MIN_BIN_FRACTION,
    DiagramBins,
    maximum_calibration_error,
    reliable_bins,
)
from CalibSegLib.calibration.losses import (
    DiceCEL1ACELoss,
    HardL1ACELoss,
    SoftL1ACELoss,
    hard_l1_ace,
    soft_l1_ace,
)
from CalibSegLib.calibration.metric import ReliabilityMetric, compute_reliability_stats
from CalibSegLib.calibration.modes import Backend, Binning, LossReduction, Reduction
from CalibSegLib.calibration.plots import (
    plot_dataset_reliability_histogram,
    plot_reliability_diagram,
    save_dataset_reliability_histogram,
    save_reliability_diagram,
)
from CalibSegLib.calibration.reliability_metrics import ClassMetrics, ReliabilityMetrics
from CalibSegLib.calibration.stats import ReliabilityStats
from CalibSegLib.calibration.temperature import (
    apply_temperature_to_logits,
    default_temperature_grid,
    fit_temperature,
    fit_temperature_from_grid,
    nll_over_temperature_grid,
)

__all__ = [
    "MIN_BIN_COUNT", "MIN_BIN_FRACTION", "DiagramBins", "maximum_calibration_error",
    "reliable_bins", "DiceCEL1ACELoss", "HardL1ACELoss", "ReliabilityMetric", "ReliabilityStats",
    "SoftL1ACELoss", "apply_temperature_to_logits", "bin_centres", "bin_edges", "bin_index",
    "compute_calibration_errors", "compute_dice", "compute_reliability_stats",
    "default_temperature_grid", "fit_temperature", "fit_temperature_from_grid",
    "hard_l1_ace", "nll_over_temperature_grid", "plot_dataset_reliability_histogram",
    "plot_reliability_diagram", "save_dataset_reliability_histogram",
    "save_reliability_diagram", "soft_l1_ace", "Backend", "Binning", "ClassMetrics",
    "KernelFallbackWarning", "LossReduction", "Reduction", "ReliabilityMetrics",
]
