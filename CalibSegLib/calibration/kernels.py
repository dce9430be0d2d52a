"""Fused one-pass accumulation of reliability statistics: the compiled CPU kernel.

:func:`accumulate_numba` (CPU): one pass over the volume in class-major blocks
  of voxels (each block read from memory once, then from cache); bins, counts and
  sums for all classes, the top label, Dice counts, NLL and Brier together, into
  per-thread partial histograms that are summed at the end (no atomics, no
  one-hot, only block-sized temporaries). Each histogram add is one packed
  integer word (count and fixed-point probability sum), so sums of p are exact
  and any split of a volume merges to identical numbers.

This module needs numba; :mod:`~CalibSegLib.calibration.backend` imports it only
when the compiled kernel is used and falls back to
:mod:`~CalibSegLib.calibration.torch_kernel` when numba cannot load.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from CalibSegLib.calibration.accumulators import (
    NLL_FLOOR,
    SUM_TOLERANCE,
    Accumulators,
    Scalar,
    check_kernel_inputs,
)
from CalibSegLib.threads import default_threads, guided_bounds, run_tasks

__all__ = ["NLL_FLOOR", "Accumulators", "accumulate_numba"]

#: Voxels per block of the class-major loops (the block's rows and per-voxel buffers
#: stay in the L1 cache between the loops).
_BLOCK = 256
#: Interleaved copies of every histogram: voxel j updates copy j % LANES, so consecutive
#: voxels in the same bin do not wait on each other's store.
_LANES = 4
#: Histogram groups per class: (is the voxel's argmax) x (is the voxel's label).
_GROUPS = 4
#: Probabilities are summed in fixed point: round(p * 2**_Q_SHIFT) (resolution 5.8e-11).
_Q_SHIFT = 34
#: Packed histogram word: count in the top 12 bits, fixed-point probability sum below.
_COUNT_SHIFT = 52
_Q_MASK = (1 << _COUNT_SHIFT) - 1
_COUNT_MASK = (1 << (64 - _COUNT_SHIFT)) - 1
#: Largest probability summed (a valid voxel has p <= 1 + SUM_TOLERANCE).
_P_MAX = 1.0 + 2.0 ** -9
#: Blocks between unpacking the packed words (per-lane count stays <= 2048 < 4096, and
#: the sum field below 2**46 < 2**52).
_FLUSH = 8192 // _BLOCK
#: Voxels per kernel call at most (int64 fixed-point sums per entry stay below 2**63).
_MAX_RANGE = 1 << 30
#: Smallest task of the parallel split (threads take tasks as they finish them).
_SMALLEST_TASK = 1 << 16
#: Fewer voxels than this per thread run on one thread.
_MIN_PER_THREAD = 1 << 16

# The packing invariants the kernel relies on (checked once, at import).
#: Largest fixed-point word of one probability, round(_P_MAX * 2**_Q_SHIFT).
_Q_WORD_MAX = math.ceil(_P_MAX * 2.0 ** _Q_SHIFT + 0.5)
#: Most voxels one lane's histogram slot takes between flushes (a block gives each lane
#: _BLOCK / _LANES voxels).
_LANE_VOXELS_PER_FLUSH = _FLUSH * (_BLOCK // _LANES)
assert _LANES & (_LANES - 1) == 0 and _BLOCK % _LANES == 0  # lane = j & (_LANES - 1)
assert _P_MAX >= 1.0 + SUM_TOLERANCE  # every valid probability is summed unclamped
assert _LANE_VOXELS_PER_FLUSH < 1 << (64 - _COUNT_SHIFT)  # the count field cannot overflow
assert _LANE_VOXELS_PER_FLUSH * _Q_WORD_MAX < 1 << _COUNT_SHIFT  # nor the sum field
assert -(-_MAX_RANGE // _LANES) * _Q_WORD_MAX < 1 << 63  # exact int64 totals per call
assert len(Scalar) == 6 and list(Scalar) == list(range(6))  # the kernel fills every slot


@numba.njit(cache=True, nogil=True, inline="always")
def exact_bin(p, edges, n_bins):
    """Bin of ``p`` by binary search: the number of inner edges ``edges[1:B]`` below ``p``."""
    lo = 1
    hi = n_bins
    while lo < hi:
        mid = (lo + hi) >> 1
        if edges[mid] < p:
            lo = mid + 1
        else:
            hi = mid
    return np.int32(lo - 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _clamped(p):
    """``p`` clamped to [0, 2], NaN to 0 (same bin as ``p``; keeps conversions defined)."""
    p = p if p > np.float32(0.0) else np.float32(0.0)
    return p if p < np.float32(2.0) else np.float32(2.0)


@numba.njit(cache=True, nogil=True, inline="always")
def _bin_and_near(p, n_bins_f, x_hi, tol):
    """``(int(x + tol), near)`` for ``x = min(p * B, B - 1/2)``: the bin of ``p`` unless
    ``near``, i.e. ``x`` lies within ``tol`` of an inner edge 1 … B - 1, where ``int(x)``
    may differ from the bin of the float32 edges (``near`` is nonzero there)."""
    x = min(p * n_bins_f, x_hi)
    k = np.int32(x + tol)
    return k, k ^ np.int32(x - tol)


@numba.njit(cache=True, nogil=True, inline="always")
def _group(arg, label, c, n_bins):
    """Offset of the (is argmax, is label) histogram group of class ``c`` (int32)."""
    by_arg = np.int32(2) * n_bins if arg == c else np.int32(0)
    by_label = n_bins if label == c else np.int32(0)
    return np.int32(by_arg + by_label)


# Scalar slots as plain ints (compile-time constants of the kernel).
_NLL, _BRIER, _VOXELS = int(Scalar.NLL), int(Scalar.BRIER), int(Scalar.VOXELS)
_BAD_LABELS, _NAN_VALUES, _BAD_SUMS = (int(Scalar.BAD_LABELS), int(Scalar.NAN_VALUES),
                                       int(Scalar.BAD_SUMS))

_MANTISSA = (1 << 52) - 1
_EXPONENT_ONE = 1023 << 52


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _block_nll(x, n, scratch):
    """-sum(log(x[:n])) for normal positive float64 ``x``.

    log x = (exponent) * ln 2 + log(mantissa): exponents are summed as integers and
    mantissas (in [1, 2)) multiplied in runs of 512 (< 2**512), one logarithm per run.
    """
    bits = x.view(np.int64)
    mantissa = scratch.view(np.int64)
    exponent = np.int64(0)
    for j in range(n):
        b = bits[j]
        exponent += b >> 52
        mantissa[j] = (b & _MANTISSA) | _EXPONENT_ONE
    s = 0.0
    for g in range(0, n, 512):
        run = scratch[g:min(n, g + 512)]  # a slice: indices from 0 keep the loop vectorised
        m = 1.0
        for j in range(run.shape[0]):
            m *= run[j]
        s += math.log(m)
    return -(s + np.float64(exponent - 1023 * n) * math.log(2.0))


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _accumulate_range(probs, p0, labels, l0, ref, r0, mask, start, stop, edges, has_ref,
                      has_mask, count, sum_p, sum_y, soft_y, top_count, top_sum_p, top_sum_y,
                      top_soft_y, intersection, predicted, reference,
                      scalars):
    """Serial accumulation of voxels [start, stop) into one thread's histograms.

    Per block of ``_BLOCK`` voxels: (1) labels and mask are checked once; (2) one
    vectorised loop per class row ``probs[c, block]`` updates the running argmax, label
    probability, sum and sum of squares per voxel; (3) per class, a second vectorised
    loop over the row (now in L1) finds every probability's bin (``int(p * B + t)``
    with ``t = B * 2**-20``, exact against the float32 edges unless ``int(p * B - t)``
    differs, i.e. near an inner edge, where a binary search decides), its histogram
    slot (lane, is argmax, is label, bin) and its fixed-point word
    ``1 << 52 | round(p * 2**34)``; a scalar loop then adds the words: one add gives
    count and probability sum, and the groups give the marginal
    (all groups), label (``sum_y``, ``reference``) and top-label statistics (argmax
    groups: ``top_*``, ``predicted``, ``intersection``) without further passes; (4) NLL
    and Brier per voxel. Every ``_FLUSH`` blocks the packed words are unpacked into
    exact int64 totals. Sums of p are exact in fixed point (so any split of the volume
    merges to the same numbers); each probability is rounded to a multiple of 2**-34.
    """
    n_classes = probs.shape[0]
    n_bins = edges.shape[0] - 1
    n_bins_f = np.float32(n_bins)
    bins32 = np.int32(n_bins)
    width = _LANES * _GROUPS * n_bins
    invalid_slot = np.uint32(width)  # voxels outside the mask add here; never read
    near_tol = np.float32(n_bins * 2.0 ** -20)
    x_hi = np.float32(n_bins - 0.5)
    tolerance = np.float32(SUM_TOLERANCE)
    q_scale = np.float32(2.0 ** _Q_SHIFT)
    p_max = np.float32(_P_MAX)
    one = np.int64(1) << _COUNT_SHIFT
    packed = np.zeros((n_classes, width + 1), np.int64)
    soft = np.zeros((n_classes if has_ref else 0, width + 1), np.float64)
    q_total = np.zeros((n_classes, width), np.int64)
    n_total = np.zeros((n_classes, width), np.int64)
    wbuf = np.empty(_BLOCK, np.int64)
    slots = np.empty(_BLOCK, np.uint32)  # unsigned: no negative-index wraparound code
    lanes = np.empty(_BLOCK, np.int32)
    for j in range(_BLOCK):
        lanes[j] = (j & (_LANES - 1)) * _GROUPS * n_bins
    tbuf = np.empty(_BLOCK, np.int32)
    vbuf = np.empty(_BLOCK, np.int32)
    best = np.empty(_BLOCK, np.float32)
    arg = np.empty(_BLOCK, np.int32)
    total = np.empty(_BLOCK, np.float32)
    ptb = np.zeros(_BLOCK, np.float32)
    factors = np.empty(_BLOCK, np.float64)
    scratch = np.empty(_BLOCK, np.float64)
    nll = 0.0
    sq_sum = 0.0
    pt_sum = 0.0
    # int64 counters that the int32 block counts add to (casting each block count with
    # int() instead made the kernel 6 % slower)
    voxels = np.int64(0)
    bad_label = np.int64(0)
    bad_nan = 0
    bad_sum = np.int64(0)
    blocks = 0
    for s in range(start, stop, _BLOCK):
        nb = min(stop, s + _BLOCK) - s
        # (1) labels and mask
        lab = labels[l0 + s:l0 + s + nb]
        n_bad = np.int32(0)
        valid = np.int32(0)
        if has_mask:
            inside = mask[l0 + s:l0 + s + nb]
            for j in range(nb):
                t = lab[j]
                m = np.int32(inside[j])
                ok = m & np.int32((t >= 0) & (t < n_classes))
                n_bad += m - ok
                vbuf[j] = ok
                tbuf[j] = np.int32(t) if ok else np.int32(-1)
                valid += ok
        else:
            for j in range(nb):
                t = lab[j]
                ok = np.int32((t >= 0) & (t < n_classes))
                n_bad += 1 - ok
                vbuf[j] = ok
                tbuf[j] = np.int32(t) if ok else np.int32(-1)
                valid += ok
        bad_label += n_bad
        dense = valid == nb
        for j in range(nb):
            best[j] = -1.0
            arg[j] = 0
            total[j] = 0.0
        # (2) per voxel: running argmax, label probability, sum and sum of squares
        for c in range(n_classes):
            row = probs[c, p0 + s:p0 + s + nb]
            c32 = np.int32(c)  # int32 compares (numba widens mixed operands to 64 bits)
            sq = 0.0
            for j in range(nb):
                raw = row[j]
                better = raw > best[j]
                best[j] = raw if better else best[j]
                arg[j] = c32 if better else arg[j]
                ptb[j] = raw if tbuf[j] == c32 else ptb[j]
                total[j] += raw
                pf = np.float64(raw)
                sq += pf * pf
            if not dense:  # squares of voxels inside the mask only
                sq = 0.0
                for j in range(nb):
                    pf = np.float64(row[j]) if vbuf[j] else np.float64(0.0)
                    sq += pf * pf
            sq_sum += sq
        # (3) per class: slot = lane + (is argmax, is label) group + bin, packed word,
        # then one histogram add per voxel
        for c in range(n_classes):
            row = probs[c, p0 + s:p0 + s + nb]
            hist = packed[c]
            c32 = np.int32(c)
            n_near = 0
            for j in range(nb):
                p = _clamped(row[j])
                pq = p if p < p_max else p_max
                wbuf[j] = np.int64(pq * q_scale + np.float32(0.5)) + one
                k, near = _bin_and_near(p, n_bins_f, x_hi, near_tol)
                n_near |= near
                slots[j] = np.uint32(lanes[j] + k + _group(arg[j], tbuf[j], c32, bins32))
            if n_near:  # rare: a probability within rounding of an inner edge
                for j in range(nb):
                    p = _clamped(row[j])
                    if _bin_and_near(p, n_bins_f, x_hi, near_tol)[1]:
                        slots[j] = np.uint32(lanes[j] + exact_bin(p, edges, n_bins)
                                             + _group(arg[j], tbuf[j], c32, bins32))
            if not dense:  # voxels outside the mask add to a slot that is never read
                for j in range(nb):
                    slots[j] = slots[j] if vbuf[j] else invalid_slot
            for j in range(nb):
                hist[slots[j]] += wbuf[j]
            if has_ref:
                rrow = ref[c, r0 + s:r0 + s + nb]
                soft_c = soft[c]
                for j in range(nb):
                    soft_c[slots[j]] += np.float64(rrow[j])
        # (4) per voxel: NLL factors, Brier label term, sum check (NaN fails it too)
        n_off = np.int32(0)
        pts = 0.0
        for j in range(nb):
            pt = np.float64(ptb[j])
            v = vbuf[j] != 0
            pts += pt if v else 0.0
            factors[j] = max(pt, NLL_FLOOR) if v else 1.0
            n_off += np.int32(not (abs(total[j] - np.float32(1.0)) <= tolerance)) & vbuf[j]
        bad_sum += n_off
        if n_off:  # rare: count NaN inside the mask for the error message
            for c in range(n_classes):
                row = probs[c, p0 + s:p0 + s + nb]
                for j in range(nb):
                    bad_nan += (row[j] != row[j]) and vbuf[j] != 0
        pt_sum += pts
        nll += _block_nll(factors, nb, scratch)
        voxels += valid
        blocks += 1
        if blocks == _FLUSH or s + _BLOCK >= stop:
            blocks = 0
            for c in range(n_classes):
                hist = packed[c]
                qc = q_total[c]
                nc = n_total[c]
                for i in range(width):
                    w = hist[i]
                    qc[i] += w & _Q_MASK
                    nc[i] += (w >> _COUNT_SHIFT) & _COUNT_MASK
                    hist[i] = 0
                hist[width] = 0  # the slot of voxels outside the mask
    q_unit = 2.0 ** -_Q_SHIFT
    for c in range(n_classes):
        for lane in range(_LANES):
            for g in range(_GROUPS):
                is_arg = g >= 2
                is_label = (g & 1) == 1
                for k in range(n_bins):
                    i = (lane * _GROUPS + g) * n_bins + k
                    n = n_total[c, i]
                    q = np.float64(q_total[c, i]) * q_unit
                    count[c, k] += n
                    sum_p[c, k] += q
                    if is_label:
                        sum_y[c, k] += n
                        reference[c] += n
                    if is_arg:
                        top_count[k] += n
                        top_sum_p[k] += q
                        predicted[c] += n
                        if is_label:
                            top_sum_y[k] += n
                            intersection[c] += n
                    if has_ref:
                        soft_y[c, k] += soft[c, i]
                        if is_arg:
                            top_soft_y[k] += soft[c, i]
    scalars[_NLL] += nll
    scalars[_BRIER] += sq_sum - 2.0 * pt_sum + voxels
    scalars[_VOXELS] += voxels
    scalars[_BAD_LABELS] += bad_label
    scalars[_NAN_VALUES] += bad_nan
    scalars[_BAD_SUMS] += bad_sum


_EMPTY_REF = np.zeros((0, 1), np.float32)
_EMPTY_MASK = np.zeros(0, np.bool_)


def accumulate_numba(acc: Accumulators, probs: np.ndarray, p0: int, labels: np.ndarray, l0: int,
                     n: int, edges: np.ndarray, ref: np.ndarray | None = None, r0: int = 0,
                     mask: np.ndarray | None = None, threads: int | None = None) -> None:
    """Add voxels ``[0, n)`` of the given windows to ``acc`` (CPU, numba).

    ``probs`` is ``(C, M)`` float32 read from column ``p0``; ``labels`` and
    ``mask`` are 1-D read from ``l0``; ``ref`` is ``(C, M)`` float32 read from ``r0``.
    The compiled kernel releases the GIL. Large ranges are cut into tasks (large
    first, then shorter: :func:`guided_bounds`) that plain Python threads take as
    they finish the previous one, each task into its own partial histograms (no
    OpenMP spin-waiting, which behaves badly on busy machines and beside torch's own
    thread pool; a core slowed by other load takes fewer tasks instead of holding up
    the call).
    """
    check_kernel_inputs(acc, probs, p0, labels, l0, n, edges, ref, r0, mask)
    threads = default_threads() if threads is None else max(1, int(threads))
    if n < threads * _MIN_PER_THREAD:
        threads = 1
    ref_a = _EMPTY_REF if ref is None else ref
    mask_a = _EMPTY_MASK if mask is None else mask
    soft = ref is not None
    # fixed task bounds and a fixed merge order: the result does not depend on which
    # thread ran which task
    bounds = guided_bounds(n, threads, _SMALLEST_TASK)
    tasks = len(bounds) - 1
    parts = [acc] + [Accumulators(acc.count.shape[0], acc.count.shape[1], soft)
                     for _ in range(tasks - 1)]

    def work(index: int) -> None:
        part = parts[index]
        first, last = bounds[index], bounds[index + 1]
        # calls of at most _MAX_RANGE voxels keep the int64 fixed-point totals exact
        for start in range(first, last, _MAX_RANGE):
            stop = min(last, start + _MAX_RANGE)
            _accumulate_range(probs, p0, labels, l0, ref_a, r0, mask_a, start, stop, edges,
                              soft, mask is not None, part.count, part.sum_p, part.sum_y,
                              part.soft_y, part.top_count, part.top_sum_p, part.top_sum_y,
                              part.top_soft_y, part.intersection, part.predicted,
                              part.reference, part.scalars)

    run_tasks(work, tasks, threads)
    for part in parts[1:]:
        acc.add(part)
