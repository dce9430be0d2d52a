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

from CalibSegLib.calibration.accumulators import NLL_FLOOR
from CalibSegLib.calibration.kernels import exact_bin
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


# ---------------------------------------------------------------------------- decoding

@numba.njit(cache=True, nogil=True, inline="always")
def _form(forms, row, v0, v1, v2, v3):  # pragma: no cover - compiled
    return forms[row, 0] * v0 + forms[row, 1] * v1 + forms[row, 2] * v2 + forms[row, 3] * v3


@numba.njit(cache=True, nogil=True, inline="always")
def _slack(forms, row, v1, v2, v3, u):  # pragma: no cover - compiled
    return (abs(forms[row, 1] * v1) + abs(forms[row, 2] * v2) + abs(forms[row, 3] * v3)) * u


@numba.njit(cache=True, nogil=True)
def _tail_estimate(forms, lowers, a, log_n, d_last, v1, v2, v3, u):  # pragma: no cover
    """``(estimate, slope)`` of the tail log-partition at ``a`` (as the torch path)."""
    upper = min(log_n + a * d_last * (1.0 - u),
                _form(forms, 0, log_n, v1, v2, v3) + _slack(forms, 0, v1, v2, v3, u))
    lower = -np.inf
    for i in range(lowers):
        lower = max(lower, _form(forms, 1 + i, log_n, v1, v2, v3)
                    - _slack(forms, 1 + i, v1, v2, v3, u))
    lower = min(lower, upper)
    estimate = min(max(_form(forms, 4, log_n, v1, v2, v3), lower), upper)
    slope = min(_form(forms, 5, log_n, v1, v2, v3), d_last * (1.0 - u))
    return estimate, slope


@numba.njit(cache=True, nogil=True)
def _decode_voxel(gaps, tail, j, a, forms, lowers, forms2, lowers2, log_n, u, probs,
                  need_square):  # pragma: no cover - compiled
    """Probabilities of voxel ``j`` into ``probs[:K]``; returns
    ``(tail mass, mean gap term, log Z, Σ p²)`` (``Σ p²`` only with ``need_square``)."""
    k = gaps.shape[0] + 1
    z_top = 1.0
    probs[0] = 1.0
    for r in range(1, k):
        w = math.exp(a * np.float64(gaps[r - 1, j]))
        probs[r] = w
        z_top += w
    s = 0.0
    slope = 0.0
    s2 = 0.0
    if tail.shape[0] > 0:
        d_last = np.float64(gaps[k - 2, j]) if k > 1 else 0.0
        v1 = np.float64(tail[0, j])
        v2 = np.float64(tail[1, j])
        v3 = np.float64(tail[2, j])
        f, slope = _tail_estimate(forms, lowers, a, log_n, d_last, v1, v2, v3, u)
        s = math.exp(f)
        if need_square:
            f2, _ = _tail_estimate(forms2, lowers2, 2.0 * a, log_n, d_last, v1, v2, v3, u)
            s2 = math.exp(f2)
    z = z_top + s
    mean_gap = 0.0
    square = 0.0
    for r in range(k):
        p = probs[r] / z
        probs[r] = p
        if r > 0:
            mean_gap += p * np.float64(gaps[r - 1, j])
        square += p * p
    summary = s / z
    mean_gap += summary * slope
    square += s2 / (z * z)
    return summary, mean_gap, math.log(z), square


@numba.njit(cache=True, nogil=True)
def _maps_range(gaps, tail, a, forms, lowers, forms2, lowers2, log_n, u, inv_log_c,
                confidence, entropy, start, stop):  # pragma: no cover - compiled
    probs = np.empty(gaps.shape[0] + 1, np.float64)
    for j in range(start, stop):
        _, mean_gap, log_z, _ = _decode_voxel(gaps, tail, j, a, forms, lowers, forms2, lowers2,
                                              log_n, u, probs, False)
        confidence[j] = probs[0]
        h = (log_z - a * mean_gap) * inv_log_c
        entropy[j] = min(max(h, 0.0), 1.0)


def maps_cpu(gaps: np.ndarray, tail: np.ndarray, num_classes: int, arguments: tuple,
             roundoff: float) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, entropy / log C)`` float32 of flat ``(K-1, n)`` gaps and tail rows.

    ``arguments``: :func:`CalibSegLib.inference.topk.tail_arguments` of the class count,
    ``K`` and the temperature; ``roundoff`` the float16 unit roundoff of the stored values.
    """
    g = np.ascontiguousarray(gaps, dtype=np.float32)
    t = np.ascontiguousarray(tail, dtype=np.float32)
    n = g.shape[1] if g.shape[0] else t.shape[1]
    a, forms, lowers, forms2, lowers2, log_n = arguments
    inv_log_c = 1.0 / math.log(num_classes) if num_classes > 1 else 0.0
    confidence = np.empty(n, np.float32)
    entropy = np.empty(n, np.float32)
    workers = min(default_threads(), max(1, n // (4 * _SMALLEST_TASK)))
    bounds = guided_bounds(n, workers, _SMALLEST_TASK)

    def work(i: int) -> None:
        _maps_range(g, t, a, forms, lowers, forms2, lowers2, log_n, roundoff,
                    inv_log_c, confidence, entropy, bounds[i], bounds[i + 1])

    run_tasks(work, len(bounds) - 1, workers)
    return confidence, entropy


# ---------------------------------------------------------------------------- statistics


@numba.njit(cache=True, nogil=True)
def stats_range(indices, gaps, tail, labels, mask, has_mask, num_classes, a, forms, lowers,
                forms2, lowers2, log_n, u, edges, scales, start, stop, count, sum_q, sum_y,
                shared_count, shared_q, top_count, top_q, top_y, intersection, predicted,
                reference, scalars):  # pragma: no cover - compiled
    """Integer sums of voxels ``start:stop`` of a top-k prediction's reliability statistics
    (as the torch path of :func:`CalibSegLib.inference.topk_stats.accumulate_topk`).

    ``scales``: the fixed-point scales ``2**q`` of probabilities, NLL and Brier terms;
    ``scalars`` receives NLL, Brier (fixed point), voxels and bad labels.
    """
    k = indices.shape[0]
    n_bins = edges.shape[0] - 1
    n_rest = num_classes - k
    scale = scales[0]
    probs = np.empty(k, np.float64)
    bins = np.empty(k, np.int64)
    nll = np.int64(0)
    brier = np.int64(0)
    voxels = 0
    bad = 0
    for j in range(start, stop):
        if has_mask and not mask[j]:
            continue
        t = np.int64(labels[j])
        if t < 0 or t >= num_classes:
            bad += 1
            continue
        voxels += 1
        summary, _, _, square = _decode_voxel(gaps, tail, j, a, forms, lowers, forms2,
                                              lowers2, log_n, u, probs, True)
        label_bin = -1
        p_label = 0.0
        for r in range(k):
            c = np.int64(indices[r, j])
            b = exact_bin(np.float32(probs[r]), edges, n_bins)
            bins[r] = b
            q = np.int64(probs[r] * scale + 0.5)
            count[c, b] += 1
            sum_q[c, b] += q
            if c == t:
                label_bin = b
                p_label = probs[r]
        if n_rest > 0:
            share = summary / n_rest
            bt = exact_bin(np.float32(share), edges, n_bins)
            qt = np.int64(share * scale + 0.5)
            shared_count[bt] += 1
            shared_q[bt] += qt
            for r in range(k):
                c = np.int64(indices[r, j])
                count[c, bt] -= 1
                sum_q[c, bt] -= qt
            if label_bin < 0:
                label_bin = bt
                p_label = share
        sum_y[t, label_bin] += 1
        first = np.int64(indices[0, j])
        b0 = bins[0]
        top_count[b0] += 1
        top_q[b0] += np.int64(probs[0] * scale + 0.5)
        predicted[first] += 1
        reference[t] += 1
        if first == t:
            top_y[b0] += 1
            intersection[t] += 1
        nll += np.int64(-math.log(max(p_label, NLL_FLOOR)) * scales[1] + 0.5)
        brier += np.int64(max(square - 2.0 * p_label + 1.0, 0.0) * scales[2] + 0.5)
    scalars[0] += nll
    scalars[1] += brier
    scalars[2] += voxels
    scalars[3] += bad
