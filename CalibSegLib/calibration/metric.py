"""Functional entry point and a MONAI-style cumulative metric over images."""

from __future__ import annotations

from CalibSegLib.calibration.modes import Reduction
from CalibSegLib.calibration.reliability_metrics import ReliabilityMetrics
from CalibSegLib.calibration.stats import ReliabilityStats


def compute_reliability_stats(probs, target, n_bins: int = 20, **kwargs) -> ReliabilityStats:
    """Functional form of :meth:`ReliabilityStats.from_probs` (same arguments)."""
    return ReliabilityStats.from_probs(probs, target, n_bins, **kwargs)


class ReliabilityMetric:
    """Accumulate images one call at a time, then :meth:`aggregate` to metrics.

    ``metric(probs, target)`` adds one image (``(C, ...)``) or a batch
    (``(B, C, ...)`` with ``batch=True``); :meth:`aggregate` returns
    :meth:`ReliabilityStats.metrics` (a :class:`ReliabilityMetrics`); :attr:`stats`
    holds the merged statistics.
    """

    def __init__(self, n_bins: int = 20, reduction: Reduction | str = Reduction.MACRO,
                 include_background: bool = False, ignore_empty_classes: bool = True,
                 class_names=None) -> None:
        self.n_bins = n_bins
        self.reduction = Reduction.from_user(reduction, "reduction")
        self.include_background = include_background
        self.ignore_empty_classes = ignore_empty_classes
        self.class_names = class_names
        self.stats: ReliabilityStats | None = None
        self._seen = 0

    def __call__(self, probs, target, batch: bool = False, image_id: str | None = None):
        items = zip(probs, target) if batch else [(probs, target)]
        for p, t in items:
            if batch and t.shape[0] == 1 and len(t.shape) == len(p.shape):
                t = t[0]
            name = image_id if (image_id is not None and not batch) else f"image-{self._seen}"
            self._seen += 1
            s = ReliabilityStats.from_probs(p, t, self.n_bins, image_id=name,
                                            class_names=self.class_names)
            self.stats = s if self.stats is None else self.stats.merge(s)
        return self

    def aggregate(self) -> ReliabilityMetrics:
        """The metrics of every image added since the last :meth:`reset`."""
        if self.stats is None:
            raise RuntimeError("aggregate() called before any image was added to the metric")
        return self.stats.metrics(self.reduction, self.include_background,
                                  self.ignore_empty_classes)

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.stats = None
        self._seen = 0
