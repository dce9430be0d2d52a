"""The minimum-bin-mass rule and the typed per-bin data of a reliability diagram.

A confidence bin holding a handful of voxels has an observed frequency that is
mostly noise (one voxel gives 0 or 1), yet the maximum calibration error (MCE)
and the ends of a diagram's curve are driven by exactly such bins. The rule,
used by every metric, diagram, report and plot of CalibSeg:

    a bin is **reliable** when it holds at least ``MIN_BIN_FRACTION`` (0.1 %) of
    the diagram's voxels *and* at least ``MIN_BIN_COUNT`` (100) voxels.

With 100 voxels the standard error of the observed frequency is at most
0.05 (``0.5 / sqrt(100)``); the fraction keeps the rule meaningful on large
volumes. Non-reliable, non-empty bins are drawn greyed out with their count and
left out of MCE; the raw MCE over every non-empty bin is reported alongside
(``mce_raw``). ECE is count-weighted, so such bins barely move it; ACE keeps the
mL1-ACE paper's definition (mean over every non-empty bin) so that it stays
comparable with the paper and with the training loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from CalibSegLib.calibration.binned_errors import bin_means

#: Smallest share of a diagram's voxels a bin must hold to be reliable.
MIN_BIN_FRACTION = 1e-3
#: Smallest number of voxels a bin must hold to be reliable.
MIN_BIN_COUNT = 100


def min_reliable_count(total, min_fraction: float = MIN_BIN_FRACTION,
                       min_count: int = MIN_BIN_COUNT) -> np.ndarray:
    """The smallest reliable bin count for diagrams of ``total`` voxels.

    ``total`` may have any shape, such as shape (C,) per class; the result has the same one.
    """
    total = np.asarray(total, dtype=np.float64)
    return np.maximum(np.ceil(min_fraction * total - 1e-9), min_count).astype(np.int64)


def reliable_bins(count, min_fraction: float = MIN_BIN_FRACTION,
                  min_count: int = MIN_BIN_COUNT) -> np.ndarray:
    """Boolean ``(..., B)``: which bins of ``count`` ``(..., B)`` are reliable (never empty)."""
    count = np.asarray(count)
    threshold = min_reliable_count(count.sum(axis=-1), min_fraction, min_count)
    return (count > 0) & (count >= threshold[..., None])


def maximum_calibration_error(count, sum_p, sum_y, min_fraction: float = MIN_BIN_FRACTION,
                              min_count: int = MIN_BIN_COUNT) -> tuple[np.ndarray, np.ndarray]:
    """``(mce, mce_raw)`` over the last (bin) axis of binned sums ``(..., B)``.

    ``mce`` is the largest gap over reliable bins (NaN when no bin is reliable);
    ``mce_raw`` the largest gap over every non-empty bin (NaN when all are empty).
    """
    count = np.asarray(count, dtype=np.float64)
    mean_p, mean_y = bin_means(count, sum_p, sum_y)
    gap = np.abs(mean_p - mean_y)
    filled = count > 0
    reliable = reliable_bins(count, min_fraction, min_count)
    mce = np.where(reliable.any(axis=-1), np.where(reliable, gap, -np.inf).max(axis=-1), np.nan)
    raw = np.where(filled.any(axis=-1), np.where(filled, gap, -np.inf).max(axis=-1), np.nan)
    return mce, raw


@dataclass(frozen=True)
class DiagramBins:
    """Per-bin data of one reliability diagram (B bins), read off ReliabilityStats.

    ``confidence`` and ``accuracy`` (observed frequency) are NaN in empty bins;
    ``reliable`` marks bins that pass the minimum-bin-mass rule (draw the others
    greyed out, with their ``count``). ``mce`` is over reliable bins, ``mce_raw``
    over every non-empty bin; ``min_count`` is the threshold this diagram used.
    """

    label: str
    edges: np.ndarray       # (B + 1,)
    centres: np.ndarray     # (B,)
    confidence: np.ndarray  # (B,) mean confidence
    accuracy: np.ndarray    # (B,) observed frequency
    count: np.ndarray       # (B,) int64 voxels
    reliable: np.ndarray    # (B,) bool
    ece: float
    ace: float
    mce: float
    mce_raw: float
    min_count: int

    @property
    def n_bins(self) -> int:
        """The number of bins."""
        return int(self.count.shape[0])

    @property
    def total(self) -> int:
        """Voxels counted over all bins."""
        return int(self.count.sum())

    @property
    def filled(self) -> np.ndarray:
        """Boolean ``(B,)``: non-empty bins."""
        return self.count > 0

    @property
    def sparse(self) -> np.ndarray:
        """Boolean ``(B,)``: non-empty bins below the minimum mass (shown greyed out)."""
        return self.filled & ~self.reliable

    @property
    def fraction(self) -> np.ndarray:
        """``(B,)`` share of the diagram's voxels in each bin."""
        return self.count / max(self.total, 1)

    @property
    def gap(self) -> np.ndarray:
        """``(B,)`` mean confidence minus observed frequency (NaN in empty bins)."""
        return self.confidence - self.accuracy


def diagram_bins(count, sum_p, sum_y, edges, centres, label: str, ece: float, ace: float,
                 min_fraction: float = MIN_BIN_FRACTION,
                 min_count: int = MIN_BIN_COUNT) -> DiagramBins:
    """A :class:`DiagramBins` from one diagram's binned sums ``(B,)``."""
    count = np.asarray(count, dtype=np.int64)
    confidence, accuracy = bin_means(count, sum_p, sum_y)
    mce, raw = maximum_calibration_error(count, sum_p, sum_y, min_fraction, min_count)
    return DiagramBins(
        label=label, edges=np.asarray(edges, dtype=np.float64),
        centres=np.asarray(centres, dtype=np.float64), confidence=confidence,
        accuracy=accuracy, count=count, reliable=reliable_bins(count, min_fraction, min_count),
        ece=float(ece), ace=float(ace), mce=float(mce), mce_raw=float(raw),
        min_count=int(min_reliable_count(count.sum(), min_fraction, min_count)))
