"""Confidence bins shared by statistics, metrics and losses.

``n_bins`` equal-width bins with edges ``linspace(0, 1 + eps, n_bins + 1)`` in
float32 (eps = float32 machine epsilon); a probability ``p`` falls in bin ``k``
when ``edges[k] < p <= edges[k + 1]`` (``p = 0`` in bin 0, ``p = 1`` in the last
bin). This is ``torch.bucketize(p, edges[1:], right=False)``, the convention of
MONAI's ``calibration_binning`` and of the mL1-ACE paper's code.
"""

from __future__ import annotations

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError

EPS32 = float(np.finfo(np.float32).eps)
#: Most bins supported (the kernels' bin slots are int32, and the compiled kernel's edge
#: tolerance ``n_bins * 2**-20`` must stay well below half a bin).
MAX_BINS = 1 << 16


def check_n_bins(n_bins: int) -> int:
    """Validate and return ``n_bins`` as an int."""
    if int(n_bins) != n_bins or not 1 <= n_bins <= MAX_BINS:
        raise CalibSegError(
            f"n_bins must be a whole number from 1 to {MAX_BINS}, got {n_bins!r}.")
    return int(n_bins)


def bin_edges(n_bins: int) -> np.ndarray:
    """The float32 bin edges, array of shape (n_bins + 1,) (identical to MONAI's boundaries)."""
    n_bins = check_n_bins(n_bins)
    return torch.linspace(0.0, 1.0 + EPS32, n_bins + 1, dtype=torch.float32).numpy()


def bin_centres(n_bins: int) -> np.ndarray:
    """Nominal bin centres ``(k + 0.5) / n_bins`` (float64), array of shape (n_bins,)."""
    return (np.arange(n_bins, dtype=np.float64) + 0.5) / n_bins


def bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each probability (reference implementation, numpy ``searchsorted``).

    ``p`` is an array of any shape, such as shape (C, Z, Y, X); the bins have the same shape.
    """
    edges = bin_edges(n_bins)
    idx = np.searchsorted(edges[1:], np.asarray(p, dtype=np.float32), side="left")
    return np.minimum(idx, n_bins - 1)
