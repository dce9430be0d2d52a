"""CPU kernel of the top-k compaction: one pass for the ranks, one for the tail.

Per block of voxels (class-major loops over contiguous rows): the K + 1 largest
logits by insertion (strictly greater moves up, so ties keep the lower class
first, as ``argmax`` and a stable sort), then for the other classes the tail
log-partition ``log Σ exp(a d_j)`` at ``a = 1/3, 1, 2`` with one exponential per
class (``e = exp((d - m) / 3)``, ``e³``, ``e⁶``; ``m`` the largest tail gap) in
float64. Same bytes as :func:`CalibSegLib.inference.topk.compact_block` (the
torch path, used on other devices) except where the two float64 sums round to
neighbouring float32 values before the float16 conversion (one float16 step,
rarely). Threads take voxel ranges (``nogil``), as the other kernels.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from CalibSegLib.threads import default_threads, guided_bounds, run_tasks

_BLOCK = 256
_SMALLEST_TASK = 1 << 14
_MOST_NEGATIVE = -60000.0


@numba.njit(cache=True, nogil=True)
def _compact_range(z, k, gaps_out, tail_out, idx_out, start, stop):  # pragma: no cover
    """Ranks, gaps (float32) and tail rows (float32 of float64 sums) of voxels ``start:stop``."""
    num_classes = z.shape[0]
    keep = min(k + 1, num_classes)
    has_tail = num_classes > k
    best_v = np.empty((keep, _BLOCK), np.float32)
    best_i = np.empty((keep, _BLOCK), np.int32)
    s1 = np.empty(_BLOCK, np.float64)
    s2 = np.empty(_BLOCK, np.float64)
    s3 = np.empty(_BLOCK, np.float64)
    for b0 in range(start, stop, _BLOCK):
        n = min(_BLOCK, stop - b0)
        for r in range(keep):
            for j in range(n):
                best_v[r, j] = -np.inf
                best_i[r, j] = num_classes
        for c in range(num_classes):
            for j in range(n):
                v = z[c, b0 + j]
                if v > best_v[keep - 1, j]:
                    r = keep - 1
                    while r > 0 and v > best_v[r - 1, j]:
                        best_v[r, j] = best_v[r - 1, j]
                        best_i[r, j] = best_i[r - 1, j]
                        r -= 1
                    best_v[r, j] = v
                    best_i[r, j] = c
        for r in range(k):
            for j in range(n):
                idx_out[r, b0 + j] = best_i[r, j]
        for r in range(1, k):
            for j in range(n):
                g = best_v[r, j] - best_v[0, j]
                gaps_out[r - 1, b0 + j] = g if g > _MOST_NEGATIVE else _MOST_NEGATIVE
        if not has_tail:
            continue
        for j in range(n):
            s1[j] = 0.0
            s2[j] = 0.0
            s3[j] = 0.0
        for c in range(num_classes):
            for j in range(n):
                named = False
                for r in range(k):
                    named = named or best_i[r, j] == c
                if not named:
                    d = np.float64(np.float32(z[c, b0 + j] - best_v[0, j]))
                    m = np.float64(np.float32(best_v[k, j] - best_v[0, j]))
                    e = math.exp((d - m) / 3.0)
                    e3 = e * e * e
                    s1[j] += e
                    s2[j] += e3
                    s3[j] += e3 * e3
        for j in range(n):
            m = np.float64(np.float32(best_v[k, j] - best_v[0, j]))
            f1 = m / 3.0 + math.log(s1[j])
            f2 = m + math.log(s2[j])
            f3 = 2.0 * m + math.log(s3[j])
            tail_out[0, b0 + j] = f1 if f1 > _MOST_NEGATIVE else _MOST_NEGATIVE
            tail_out[1, b0 + j] = f2 if f2 > _MOST_NEGATIVE else _MOST_NEGATIVE
            tail_out[2, b0 + j] = f3 if f3 > _MOST_NEGATIVE else _MOST_NEGATIVE


def compact_block_cpu(z: np.ndarray, k: int, index_dtype: np.dtype
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indices, gaps float16, tail float16)`` of C-contiguous float32 ``(C, n)`` logits."""
    num_classes, n = z.shape
    rows = 3 if num_classes > k else 0
    idx = np.empty((k, n), np.int32)
    gaps = np.empty((k - 1, n), np.float32)
    tail = np.empty((rows, n), np.float32)  # float64 sums, stored via float32 as torch does
    tail_arg = tail if rows else np.empty((3, 0), np.float32)
    workers = min(default_threads(), max(1, n // (4 * _SMALLEST_TASK)))
    bounds = guided_bounds(n, workers, _SMALLEST_TASK)

    def work(i: int) -> None:
        _compact_range(z, k, gaps, tail_arg, idx, bounds[i], bounds[i + 1])

    run_tasks(work, len(bounds) - 1, workers)
    return idx.astype(index_dtype), gaps.astype(np.float16), tail.astype(np.float16)
