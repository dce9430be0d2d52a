"""Fused one-pass accumulation of reliability statistics.

Two back ends fill the same sufficient statistics:

- :func:`accumulate_numba` (CPU): one pass over the volume in class-major blocks
  of voxels (each block read from memory once, then from L1); bins, counts and
  sums for all classes, the top label, Dice counts, NLL and Brier together, into
  per-thread partial histograms that are summed at the end (no atomics, no
  one-hot, only block-sized temporaries).
- :func:`accumulate_torch` (any torch device, used for CUDA tensors): bucketize
  plus ``bincount``/``scatter_add`` per chunk on the tensors' device, float64
  accumulators.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from CalibSegLib.threads import default_threads, run_parallel

#: Clamp for log(p) in the NLL so a zero probability gives a large finite value.
NLL_FLOOR = 1e-12
#: Tolerance on sum_c p_c = 1 per voxel.
SUM_TOLERANCE = 1e-3


class Accumulators:
    """Float64/int64 sums for one image, filled chunk by chunk."""

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
        # nll sum, brier sum, voxel count, invalid labels, NaN probabilities, bad sums
        self.scalars = np.zeros(6, np.float64)


#: Voxels per block of the class-major loop (the block's bins, C x BLOCK, stay in L1).
_BLOCK = 1024
#: Interleaved copies of every local histogram: voxel j of a block updates copy j % LANES.
_LANES = 4
#: Up to this many bins, bins are found by counting inner edges below p (vectorised).
_COMPARE_BINS = 48
#: Voxels per kernel call at most (packed top-label counts hold 32 bits per field).
_MAX_RANGE = 1 << 30


@numba.njit(cache=True, nogil=True, inline="always")
def _bin(p, edges, top_bin, n_bins_f):  # pragma: no cover - compiled
    """Bin of ``p``: edges[k] < p <= edges[k + 1], exact against the float32 edges.

    ``int(p * B)`` is at most one bin off the float32 edges, so a single branch-free
    correction (comparisons with the two neighbouring edges, as 0/1 integers) makes it
    exact. ``p`` is clamped to [0, 2] first (same bin; keeps the conversion defined);
    unsigned indices (no negative-index wraparound) let LLVM vectorise with gathers.
    """
    q = min(max(p, np.float32(0.0)), np.float32(2.0))
    k = min(np.int32(q * n_bins_f), top_bin)
    lo = edges[np.uint32(k)]
    hi = edges[np.uint32(k + 1)]
    k = k - np.int32(q <= lo) + np.int32(q > hi)
    return min(max(k, np.int32(0)), top_bin)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _block_sum(x, n):  # pragma: no cover - compiled
    """Sum of ``x[:n]`` (float64; reassociated so it vectorises, no binning involved)."""
    s = 0.0
    for j in range(n):
        s += x[j]
    return s


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _block_nll(x, n):  # pragma: no cover - compiled
    """-sum(log(x[:n])) as one logarithm per product of 16 factors (each >= 1e-12)."""
    s = 0.0
    for g in range(0, n, 16):
        m = 1.0
        for j in range(g, min(n, g + 16)):
            m *= x[j]
        s -= math.log(m)
    return s


@numba.njit(cache=True, nogil=True)
def _accumulate_range(probs, p0, labels, l0, ref, r0, mask, start, stop, edges, has_ref,
                      has_mask, count, sum_p, sum_y, soft_y, top_count, top_sum_p, top_sum_y,
                      top_soft_y, intersection, predicted, reference,
                      scalars):  # pragma: no cover - compiled
    """Serial accumulation of voxels [start, stop) into one block's histograms.

    Class-major blocks of ``_BLOCK`` voxels: (1) labels and mask are checked once;
    (2) for each class, a vectorised loop over the contiguous row ``probs[c, block]``
    zeroes NaN, bins every probability and updates the running argmax, sum and sum of
    squares per voxel (block buffers), then a scalar loop adds count and probability
    sum into that class's histogram; (3) a loop per voxel adds the label and top-label
    histograms, NLL and Brier from the buffers. Every local histogram has ``_LANES``
    interleaved copies (voxel j updates copy j % LANES) so consecutive voxels in the
    same bin do not wait on each other's store. The integer (label, bin of p_label)
    histogram gives ``sum_y`` and ``reference``; the (argmax, top bin) histograms give
    ``top_count``, ``predicted``, ``top_sum_y`` and ``intersection``. The copies are
    summed into the float64/int64 accumulators at the end.
    """
    n_classes = probs.shape[0]
    n_bins = edges.shape[0] - 1
    top_bin = np.int32(n_bins - 1)
    n_bins_f = np.float32(n_bins)
    width = _LANES * n_bins
    # inner edges padded with +inf to a multiple of 4 (p > inf is never true)
    by_compare = n_bins <= _COMPARE_BINS
    n_thr = (n_bins - 1 + 3) // 4 * 4
    thr = np.full(n_thr, np.inf, np.float32)
    thr[:n_bins - 1] = edges[1:n_bins]
    cnt = np.zeros((n_classes, width), np.int64)
    sp = np.zeros((n_classes, width), np.float64)
    sy = np.zeros((n_classes, width), np.int64)
    soft = np.zeros((n_classes if has_ref else 0, width), np.float64)
    tpk = np.zeros((n_classes, width), np.int64)
    tsp = np.zeros(width, np.float64)
    tsoft = np.zeros(width if has_ref else 0, np.float64)
    kbuf = np.empty((n_classes, _BLOCK), np.int32)
    pbuf = np.empty((n_classes, _BLOCK), np.float32)
    tbuf = np.empty(_BLOCK, np.int64)
    vbuf = np.empty(_BLOCK, np.int32)
    best = np.empty(_BLOCK, np.float32)
    arg = np.empty(_BLOCK, np.int32)
    total = np.empty(_BLOCK, np.float64)
    ptb = np.zeros(_BLOCK, np.float32)
    terms = np.empty(_BLOCK, np.float64)
    factors = np.empty(_BLOCK, np.float64)
    nll = 0.0
    squares = np.empty(_BLOCK, np.float64)
    brier = 0.0
    voxels = 0
    bad_label = 0
    bad_nan = 0
    bad_sum = 0
    for s in range(start, stop, _BLOCK):
        nb = min(stop, s + _BLOCK) - s
        valid = 0
        for j in range(nb):
            t = np.int64(labels[l0 + s + j])
            inside = not has_mask or mask[l0 + s + j]
            good = t >= 0 and t < n_classes
            bad_label += inside and not good
            ok = inside and good
            vbuf[j] = ok
            tbuf[j] = t if ok else 0
            valid += ok
        dense = valid == nb
        for j in range(nb):
            best[j] = -1.0
            arg[j] = 0
            total[j] = 0.0
            squares[j] = 0.0
        for c in range(n_classes):
            row = probs[c, p0 + s:p0 + s + nb]
            pb = pbuf[c]
            kb = kbuf[c]
            # separate short loops: each one vectorises (few arrays, no aliasing checks)
            for j in range(nb):
                p = row[j]
                nan = p != p
                bad_nan += np.int32(nan) & vbuf[j]
                pb[j] = np.float32(0.0) if nan else p
            if by_compare:
                # k = #{edges[1..B-1] < p}, four thresholds per vectorised sweep
                for j in range(nb):
                    kb[j] = 0
                for g in range(0, n_thr, 4):
                    e0 = thr[g]
                    e1 = thr[g + 1]
                    e2 = thr[g + 2]
                    e3 = thr[g + 3]
                    for j in range(nb):
                        p = pb[j]
                        kb[j] += ((np.int32(p > e0) + np.int32(p > e1))
                                  + (np.int32(p > e2) + np.int32(p > e3)))
            else:
                for j in range(nb):
                    kb[j] = _bin(pb[j], edges, top_bin, n_bins_f)
            for j in range(nb):
                p = pb[j]
                better = p > best[j]
                best[j] = p if better else best[j]
                arg[j] = np.int32(c) if better else arg[j]
                ptb[j] = p if tbuf[j] == c else ptb[j]
            for j in range(nb):
                pf = np.float64(pb[j])
                total[j] += pf
                squares[j] += pf * pf
            cnt_c = cnt[c]
            sp_c = sp[c]
            if dense:
                for j in range(nb):
                    b = (j & (_LANES - 1)) * n_bins + kb[j]
                    cnt_c[b] += 1
                    sp_c[b] += np.float64(pb[j])
            else:
                for j in range(nb):
                    if vbuf[j]:
                        b = (j & (_LANES - 1)) * n_bins + kb[j]
                        cnt_c[b] += 1
                        sp_c[b] += np.float64(pb[j])
            if has_ref:
                rrow = ref[c, r0 + s:r0 + s + nb]
                soft_c = soft[c]
                for j in range(nb):
                    if vbuf[j]:
                        soft_c[(j & (_LANES - 1)) * n_bins + kb[j]] += np.float64(rrow[j])
        # per voxel, vectorised: Brier terms, NLL factors, bad sums (invalid voxels: 0, 1, 0)
        for j in range(nb):
            pt = np.float64(ptb[j])
            v = vbuf[j] != 0
            terms[j] = squares[j] - 2.0 * pt + 1.0 if v else 0.0
            factors[j] = max(pt, 1e-12) if v else 1.0
            bad_sum += np.int32(abs(total[j] - 1.0) > 1e-3) & vbuf[j]
        brier += _block_sum(terms, nb)
        nll += _block_nll(factors, nb)
        # per voxel, scalar: label and top-label histograms
        for j in range(nb):
            if not vbuf[j]:
                continue
            t = tbuf[j]
            a = arg[j]
            lane = (j & (_LANES - 1)) * n_bins
            sy[t, lane + kbuf[t, j]] += 1
            b = lane + kbuf[a, j]
            # count in the low 32 bits, correct predictions in the high 32 bits
            tpk[a, b] += 1 + (np.int64(a == t) << 32)
            tsp[b] += np.float64(best[j])
            if has_ref:
                tsoft[b] += np.float64(ref[a, r0 + s + j])
        voxels += valid
    for c in range(n_classes):
        for lane in range(_LANES):
            for k in range(n_bins):
                b = lane * n_bins + k
                count[c, k] += cnt[c, b]
                sum_p[c, k] += sp[c, b]
                sum_y[c, k] += sy[c, b]
                reference[c] += sy[c, b]
                hits = tpk[c, b] & 0xFFFFFFFF
                right = tpk[c, b] >> 32
                top_count[k] += hits
                predicted[c] += hits
                top_sum_y[k] += right
                intersection[c] += right
                if has_ref:
                    soft_y[c, k] += soft[c, b]
    for lane in range(_LANES):
        for k in range(n_bins):
            top_sum_p[k] += tsp[lane * n_bins + k]
            if has_ref:
                top_soft_y[k] += tsoft[lane * n_bins + k]
    scalars[0] += nll
    scalars[1] += brier
    scalars[2] += voxels
    scalars[3] += bad_label
    scalars[4] += bad_nan
    scalars[5] += bad_sum


_EMPTY_REF = np.zeros((0, 1), np.float32)
_EMPTY_MASK = np.zeros(0, np.bool_)


def accumulate_numba(acc: Accumulators, probs: np.ndarray, p0: int, labels: np.ndarray, l0: int,
                     n: int, edges: np.ndarray, ref: np.ndarray | None = None, r0: int = 0,
                     mask: np.ndarray | None = None, threads: int | None = None) -> None:
    """Add voxels ``[0, n)`` of the given windows to ``acc`` (CPU, numba).

    ``probs`` is ``(C, M)`` float32 read from column ``p0``; ``labels`` and
    ``mask`` are 1-D read from ``l0``; ``ref`` is ``(C, M)`` float32 read from ``r0``.
    The compiled kernel releases the GIL; blocks run on plain Python threads,
    each into its own partial histograms (no OpenMP spin-waiting, which behaves
    badly on busy machines and beside torch's own thread pool).
    """
    threads = default_threads() if threads is None else max(1, int(threads))
    if n < threads * 65536:
        threads = 1
    ref_a = _EMPTY_REF if ref is None else ref
    mask_a = _EMPTY_MASK if mask is None else mask
    soft = ref is not None
    parts = [acc] + [Accumulators(acc.count.shape[0], acc.count.shape[1], soft)
                     for _ in range(threads - 1)]
    step = (n + threads - 1) // threads

    def work(index: int) -> None:
        part = parts[index]
        # calls of at most _MAX_RANGE voxels keep the packed 32-bit top-label counts exact
        for start in range(index * step, min(n, (index + 1) * step), _MAX_RANGE):
            stop = min(n, (index + 1) * step, start + _MAX_RANGE)
            _accumulate_range(probs, p0, labels, l0, ref_a, r0, mask_a, start, stop, edges,
                              soft, mask is not None, part.count, part.sum_p, part.sum_y,
                              part.soft_y, part.top_count, part.top_sum_p, part.top_sum_y,
                              part.top_soft_y, part.intersection, part.predicted,
                              part.reference, part.scalars)

    run_parallel(work, threads)
    for part in parts[1:]:
        for name in vars(acc):
            getattr(acc, name).__iadd__(getattr(part, name))


def accumulate_torch(acc: Accumulators, probs, labels, edges: np.ndarray, ref=None,
                     mask=None) -> None:
    """Add one chunk to ``acc`` with torch ops on the tensors' device.

    ``probs`` ``(C, n)`` float tensor, ``labels`` ``(n,)`` integer tensor, ``ref``
    ``(C, n)`` or None, ``mask`` ``(n,)`` bool or None.
    """
    import torch

    device = probs.device
    n_classes = probs.shape[0]
    n_bins = len(edges) - 1
    p = probs.float()
    t = labels.long()
    if mask is not None:
        keep = mask.bool()
        p, t = p[:, keep], t[keep]
        ref = None if ref is None else ref[:, keep]
    bad_label = (t < 0) | (t >= n_classes)
    n_bad_label = int(bad_label.sum())
    if n_bad_label:
        keep = ~bad_label
        p, t = p[:, keep], t[keep]
        ref = None if ref is None else ref[:, keep]
    n_nan = int(torch.isnan(p).sum())
    n_bad_sum = int(((p.double().sum(0) - 1.0).abs() > SUM_TOLERANCE).sum())
    bounds = torch.as_tensor(edges[1:], device=device)
    k = torch.bucketize(p, bounds, right=False).clamp_(max=n_bins - 1)
    flat = (k + torch.arange(n_classes, device=device)[:, None] * n_bins).reshape(-1)
    size = n_classes * n_bins
    onehot_y = torch.zeros_like(p, dtype=torch.float64)
    onehot_y.scatter_(0, t[None], 1.0)

    def binsum(weights):
        return torch.zeros(size, dtype=torch.float64, device=device).index_add_(
            0, flat, weights.reshape(-1).double())

    shape = (n_classes, n_bins)
    acc.count += torch.bincount(flat, minlength=size).reshape(shape).cpu().numpy()
    acc.sum_p += binsum(p).reshape(shape).cpu().numpy()
    acc.sum_y += binsum(onehot_y).reshape(shape).cpu().numpy()
    best, arg = p.max(dim=0)
    kt = torch.bucketize(best, bounds, right=False).clamp_(max=n_bins - 1)
    correct = (arg == t)
    acc.top_count += torch.bincount(kt, minlength=n_bins).cpu().numpy()
    acc.top_sum_p += torch.zeros(n_bins, dtype=torch.float64, device=device).index_add_(
        0, kt, best.double()).cpu().numpy()
    acc.top_sum_y += torch.zeros(n_bins, dtype=torch.float64, device=device).index_add_(
        0, kt, correct.double()).cpu().numpy()
    if ref is not None:
        r = ref.double()
        acc.soft_y += binsum(r).reshape(shape).cpu().numpy()
        acc.top_soft_y += torch.zeros(n_bins, dtype=torch.float64, device=device).index_add_(
            0, kt, r.gather(0, arg[None])[0]).cpu().numpy()
    acc.intersection += torch.bincount(t[correct], minlength=n_classes).cpu().numpy()
    acc.predicted += torch.bincount(arg, minlength=n_classes).cpu().numpy()
    acc.reference += torch.bincount(t, minlength=n_classes).cpu().numpy()
    pt = p.gather(0, t[None])[0].double()
    acc.scalars[0] += float(-torch.log(pt.clamp(min=NLL_FLOOR)).sum())
    acc.scalars[1] += float(((p.double() - onehot_y) ** 2).sum())
    acc.scalars[2] += t.numel()
    acc.scalars[3] += n_bad_label
    acc.scalars[4] += n_nan
    acc.scalars[5] += n_bad_sum
