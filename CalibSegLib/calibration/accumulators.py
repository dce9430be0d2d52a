"""The sums one image's reliability statistics are accumulated into, and their invariants.

Both back ends (:mod:`~CalibSegLib.calibration.kernels`, numba, and
:mod:`~CalibSegLib.calibration.torch_kernel`) fill the same :class:`Accumulators`;
:func:`check_kernel_inputs` states what the compiled kernel relies on and is checked
where arrays enter it.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from CalibSegLib.calibration.binning import MAX_BINS

#: Clamp for log(p) in the NLL so a zero probability gives a large finite value.
NLL_FLOOR = 1e-12
#: Tolerance on sum_c p_c = 1 per voxel.
SUM_TOLERANCE = 1e-3


class Scalar(IntEnum):
    """Slots of :attr:`Accumulators.scalars` (float64, shape ``(len(Scalar),)``)."""

    #: Sum over valid voxels of ``-log(max(p_label, NLL_FLOOR))``.
    NLL = 0
    #: Sum over valid voxels of ``sum_c (p_c - y_c)^2``.
    BRIER = 1
    #: Valid voxels: inside the mask, with a label in ``[0, C)``.
    VOXELS = 2
    #: Voxels inside the mask whose label is outside ``[0, C)`` (skipped).
    BAD_LABELS = 3
    #: Probability values that are NaN (inside the mask).
    NAN_VALUES = 4
    #: Valid voxels whose probabilities do not sum to 1 within ``SUM_TOLERANCE``.
    BAD_SUMS = 5


class Accumulators:
    """Float64/int64 sums for one image, filled chunk by chunk.

    Attributes (C classes, B bins): ``count``, ``sum_p``, ``sum_y`` ``(C, B)``;
    ``soft_y`` ``(C, B)`` with a soft reference, else ``(0, B)``; ``top_count``,
    ``top_sum_p``, ``top_sum_y`` ``(B,)``; ``top_soft_y`` ``(B,)`` or ``(0,)``;
    ``intersection``, ``predicted``, ``reference`` ``(C,)`` voxel counts;
    ``scalars`` ``(6,)`` indexed by :class:`Scalar`.
    """

    def __init__(self, num_classes: int, n_bins: int, soft: bool) -> None:
        c, b = num_classes, n_bins
        self.count = np.zeros((c, b), np.int64)
        self.sum_p = np.zeros((c, b), np.float64)
        self.sum_y = np.zeros((c, b), np.float64)
        self.soft_y = np.zeros((c if soft else 0, b), np.float64)
        self.top_count = np.zeros(b, np.int64)
        self.top_sum_p = np.zeros(b, np.float64)
        self.top_sum_y = np.zeros(b, np.float64)
        self.top_soft_y = np.zeros(b if soft else 0, np.float64)
        self.intersection = np.zeros(c, np.int64)
        self.predicted = np.zeros(c, np.int64)
        self.reference = np.zeros(c, np.int64)
        self.scalars = np.zeros(len(Scalar), np.float64)

    def scalar(self, slot: Scalar) -> float:
        """The value of one scalar slot."""
        return float(self.scalars[slot])

    def add(self, other: Accumulators) -> None:
        """Add ``other``'s sums (same classes, bins and soft reference) in place."""
        for name, array in vars(self).items():
            array += getattr(other, name)


def check_kernel_inputs(acc: Accumulators, probs: np.ndarray, p0: int, labels: np.ndarray,
                        l0: int, n: int, edges: np.ndarray, ref: np.ndarray | None, r0: int,
                        mask: np.ndarray | None) -> None:
    """Assert what the compiled kernel relies on (programmer errors, not user input).

    ``probs`` and ``ref`` ``(C, M)`` C-contiguous float32 read over columns
    ``[p0, p0 + n)`` / ``[r0, r0 + n)``; ``labels`` (integers) and ``mask`` (bool)
    1-D over ``[l0, l0 + n)``; ``edges`` the ``B + 1`` float32 bin edges, increasing
    from 0, each inner edge ``k`` within the kernel's tolerance ``B * 2**-20`` of
    ``k / B`` in units of bins (so ``int(p * B ± tolerance)`` finds the bin away from
    the edges); ``acc`` shaped for ``C`` classes and ``B`` bins.
    """
    n_classes, n_bins = acc.count.shape
    assert probs.dtype == np.float32 and probs.ndim == 2 and probs.flags.c_contiguous
    assert probs.shape[0] == n_classes and p0 >= 0 and p0 + n <= probs.shape[1]
    assert labels.ndim == 1 and labels.dtype.kind in "iu" and l0 >= 0 and l0 + n <= labels.size
    assert edges.dtype == np.float32 and edges.shape == (n_bins + 1,) and edges[0] == 0.0
    assert 1 <= n_bins <= MAX_BINS
    inner = edges[1:-1].astype(np.float64) * n_bins - np.arange(1, n_bins)
    # the float32 product p * B adds at most B * 2**-24 to the offset of the edges
    assert np.all(np.diff(edges) > 0) and np.all(np.abs(inner) + n_bins * 2.0 ** -24
                                                 < n_bins * 2.0 ** -20)
    if ref is not None:
        assert ref.dtype == np.float32 and ref.flags.c_contiguous and ref.ndim == 2
        assert ref.shape[0] == n_classes and r0 >= 0 and r0 + n <= ref.shape[1]
        assert acc.soft_y.shape == (n_classes, n_bins)
    if mask is not None:
        assert mask.dtype == np.bool_ and mask.ndim == 1 and l0 + n <= mask.size
