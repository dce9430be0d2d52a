"""The typed result of :meth:`ReliabilityStats.metrics`.

Every calibration error lies in ``[0, 1]`` (a gap between a mean probability and an
observed frequency) and is NaN where no bin holds a voxel (or, for ``mce``, no bin
is reliable under the minimum-bin-mass rule of :mod:`CalibSegLib.calibration.diagram`).
ACE is the *Average* Calibration Error: the mean gap over non-empty bins. ECE weights
each bin's gap by its voxel count; MCE is the largest gap over reliable bins and
``mce_raw`` the largest over every non-empty bin. ``to_dict`` gives the JSON layout the
command line, reports and federated payloads write (keys in a fixed order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from CalibSegLib.calibration.modes import Reduction

#: Names of the four calibration errors, in the order of the JSON layout.
ERROR_NAMES = ("ece", "ace", "mce", "mce_raw")


@dataclass(frozen=True)
class ClassMetrics:
    """Marginal (one-vs-rest) calibration and overlap of one class.

    Attributes
    ----------
    ece, ace, mce, mce_raw
        Calibration errors of the class's probability against "voxel is this class",
        in ``[0, 1]``; NaN when the class is absent from every image's reference and
        empty classes are ignored.
    dice
        Dice of the argmax segmentation for this class, ``2|A∩B| / (|A| + |B|)`` in
        ``[0, 1]``; NaN when the class is neither predicted nor in the reference.
    soft_ece, soft_ace, soft_mce, soft_mce_raw
        The same errors against a soft reference (reference probabilities instead of
        labels); ``None`` without one.
    """

    ece: float
    ace: float
    mce: float
    mce_raw: float
    dice: float
    soft_ece: float | None = None
    soft_ace: float | None = None
    soft_mce: float | None = None
    soft_mce_raw: float | None = None

    def to_dict(self) -> dict[str, float]:
        """``{ece, ace, mce, mce_raw, dice}`` plus ``soft_*`` when present."""
        out = {name: getattr(self, name) for name in ERROR_NAMES + ("dice",)}
        if self.soft_ece is not None:
            out.update({f"soft_{name}": getattr(self, f"soft_{name}") for name in ERROR_NAMES})
        return out


@dataclass(frozen=True)
class ReliabilityMetrics:
    """Calibration and overlap metrics of a set of images.

    Attributes
    ----------
    reduction
        ``macro``: metrics per image (and class), then the mean over images;
        ``micro``: bins pooled over images first.
    include_background, ignore_empty_classes
        Whether class 0 enters the class means; whether classes absent from an image's
        reference are left out of that image's marginal errors.
    n_bins, min_bin_fraction, min_bin_count
        Confidence bins and the minimum-bin-mass rule MCE was taken with.
    n_images, n_voxels
        Images and (masked, valid) voxels the statistics hold.
    ece, ace, mce, mce_raw
        Top-label errors: the winning class's probability against "the winning class
        is right", in ``[0, 1]``.
    marginal_ece, marginal_ace, marginal_mce, marginal_mce_raw
        Mean over classes (background by ``include_background``) of the per-class
        marginal errors, in ``[0, 1]``.
    per_class
        :class:`ClassMetrics` of every class by name, in class order.
    mean_dice
        Mean Dice over classes (background by ``include_background``), in ``[0, 1]``.
    nll
        Mean negative log-likelihood of the reference label per voxel, ``>= 0``
        (probabilities floored at 1e-12).
    brier
        Mean Brier score per voxel, ``sum_c (p_c - y_c)^2`` in ``[0, 2]``.
    soft_ece … soft_marginal_mce_raw
        The top-label and marginal errors against a soft reference; ``None`` without one.
    """

    reduction: Reduction
    include_background: bool
    ignore_empty_classes: bool
    n_bins: int
    min_bin_fraction: float
    min_bin_count: int
    n_images: int
    n_voxels: int
    ece: float
    ace: float
    mce: float
    mce_raw: float
    marginal_ece: float
    marginal_ace: float
    marginal_mce: float
    marginal_mce_raw: float
    per_class: Mapping[str, ClassMetrics]
    mean_dice: float
    nll: float
    brier: float
    soft_ece: float | None = None
    soft_ace: float | None = None
    soft_mce: float | None = None
    soft_mce_raw: float | None = None
    soft_marginal_ece: float | None = None
    soft_marginal_ace: float | None = None
    soft_marginal_mce: float | None = None
    soft_marginal_mce_raw: float | None = None

    @property
    def dice(self) -> dict[str, float]:
        """Dice of every class by name, ``{name: value}`` in class order."""
        return {name: c.dice for name, c in self.per_class.items()}

    @property
    def has_soft_reference(self) -> bool:
        """Whether the ``soft_*`` errors were computed (statistics with a soft reference)."""
        return self.soft_ece is not None

    def to_dict(self) -> dict:
        """The JSON layout: the settings, top-label and marginal errors, ``per_class``
        ``{name: {ece, ace, mce, mce_raw, dice[, soft_*]}}``, ``dice`` ``{name: value}``,
        ``mean_dice``, ``nll``, ``brier``, then the ``soft_*`` errors when present."""
        out: dict = {
            "reduction": str(self.reduction),
            "include_background": self.include_background,
            "ignore_empty_classes": self.ignore_empty_classes,
            "n_bins": self.n_bins,
            "min_bin_fraction": self.min_bin_fraction,
            "min_bin_count": self.min_bin_count,
            "n_images": self.n_images,
            "n_voxels": self.n_voxels,
        }
        out.update({name: getattr(self, name) for name in ERROR_NAMES})
        out.update({f"marginal_{name}": getattr(self, f"marginal_{name}")
                    for name in ERROR_NAMES})
        out["per_class"] = {name: c.to_dict() for name, c in self.per_class.items()}
        out["dice"] = self.dice
        out.update({"mean_dice": self.mean_dice, "nll": self.nll, "brier": self.brier})
        if self.has_soft_reference:
            out.update({f"soft_{name}": getattr(self, f"soft_{name}") for name in ERROR_NAMES})
            out.update({f"soft_marginal_{name}": getattr(self, f"soft_marginal_{name}")
                        for name in ERROR_NAMES})
        return out
