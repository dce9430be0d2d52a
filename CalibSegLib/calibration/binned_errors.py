"""Calibration errors (ECE, ACE, MCE) and Dice from binned sums: the functional core.

Here ACE is the *Average* Calibration Error (mean gap over non-empty bins), not
the *Adaptive* calibration error of some other libraries.
"""

from __future__ import annotations

import numpy as np


def bin_means(count: np.ndarray, sum_p: np.ndarray, sum_y: np.ndarray):
    """Mean confidence and observed frequency per bin; NaN where a bin is empty.

    ``count``, ``sum_p`` and ``sum_y`` are arrays of shape (..., n_bins) (e.g. (C, n_bins));
    both means have that shape.
    """
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / np.where(count > 0, count, 1.0), np.nan)
        mean_y = np.where(count > 0, sum_y / np.where(count > 0, count, 1.0), np.nan)
    return mean_p, mean_y


def compute_calibration_errors(count: np.ndarray, sum_p: np.ndarray, sum_y: np.ndarray):
    """ECE, ACE and MCE over the last (bin) axis of binned sums.

    Parameters
    ----------
    count, sum_p, sum_y
        Arrays ``(..., n_bins)``: voxels per bin, sum of probabilities, sum of
        observed outcomes (0/1, or reference probabilities for a soft reference).

    Returns
    -------
    ece, ace, mce
        Arrays ``(...)``; NaN where every bin is empty.
    """
    count = np.asarray(count, dtype=np.float64)
    mean_p, mean_y = bin_means(count, sum_p, sum_y)
    gap = np.abs(mean_p - mean_y)
    filled = count > 0
    total = count.sum(axis=-1)
    n_filled = filled.sum(axis=-1)
    gap0 = np.where(filled, gap, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = (gap0 * count).sum(axis=-1)
        ece = np.where(total > 0, weighted / np.where(total > 0, total, 1), np.nan)
        ace = np.where(n_filled > 0, gap0.sum(axis=-1) / np.maximum(n_filled, 1), np.nan)
    mce = np.where(n_filled > 0, np.where(filled, gap, -np.inf).max(axis=-1), np.nan)
    return ece, ace, mce


def compute_dice(intersection: np.ndarray, predicted: np.ndarray, reference: np.ndarray):
    """Dice ``2|A∩B| / (|A| + |B|)`` from counts; NaN where both are empty.

    The counts are arrays of one shape, such as shape (N, C) per image and class; so is
    the Dice.
    """
    denom = np.asarray(predicted, dtype=np.float64) + np.asarray(reference, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * np.asarray(intersection) / np.where(denom > 0, denom, 1),
                        np.nan)
