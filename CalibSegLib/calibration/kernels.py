"""Fused one-pass accumulation of reliability statistics.

Two back ends fill the same sufficient statistics:

- :func:`accumulate_numba` (CPU): one pass over voxels reading every class
  probability of a voxel once; bins, counts and sums for all classes, the top
  label, Dice counts, NLL and Brier together, into per-thread partial
  histograms that are summed at the end (no atomics, no one-hot, no per-voxel
  temporaries).
- :func:`accumulate_torch` (any torch device, used for CUDA tensors): bucketize
  plus ``bincount``/``scatter_add`` per chunk on the tensors' device, float64
  accumulators.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

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


@numba.njit(cache=True, nogil=True, inline="never")
def _bin(p, edges, top_bin):  # pragma: no cover - compiled
    """Bin of ``p``: edges[k] < p <= edges[k + 1] (exact against the float32 edges)."""
    k = int(p * (top_bin + 1))
    if k > top_bin:
        k = top_bin
    elif k < 0:
        k = 0
    while k > 0 and p <= edges[k]:
        k -= 1
    while k < top_bin and p > edges[k + 1]:
        k += 1
    return k


@numba.njit(cache=True, nogil=True)
def _accumulate_range(probs, p0, labels, l0, ref, r0, mask, start, stop, edges, has_ref,
                      has_mask, count, sum_p, sum_y, soft_y, top_count, top_sum_p, top_sum_y,
                      top_soft_y, intersection, predicted, reference,
                      scalars):  # pragma: no cover - compiled
    """Serial accumulation of voxels [start, stop) into one block's histograms."""
    n_classes = probs.shape[0]
    top_bin = edges.shape[0] - 2
    n_bins_f = np.float32(top_bin + 1)
    log_mantissa = 1.0
    log_exponent = 0
    brier = 0.0
    voxels = 0
    bad_label = 0
    bad_nan = 0
    bad_sum = 0
    pending = 0
    for i in range(start, stop):
        if has_mask and not mask[l0 + i]:
            continue
        t = np.int64(labels[l0 + i])
        if t < 0 or t >= n_classes:
            bad_label += 1
            continue
        best = np.float32(-1.0)
        arg = 0
        total = 0.0
        squares = 0.0
        kt = 0
        kb = 0
        pt = 0.0
        for c in range(n_classes):
            p = probs[c, p0 + i]
            if p != p:
                bad_nan += 1
                p = np.float32(0.0)
            # branch-free bucketize (edges[k] < p <= edges[k + 1]): int(p * B) is at most
            # one bin off the float32 edges; data-dependent branches here cost ~2x
            k = min(max(int(p * n_bins_f), 0), top_bin)
            k = min(max(k - (p <= edges[k]) + (p > edges[k + 1]), 0), top_bin)
            pf = np.float64(p)
            count[c, k] += 1
            sum_p[c, k] += pf
            if c == t:
                kt = k
                pt = pf
            better = p > best
            kb = k if better else kb
            if has_ref:
                soft_y[c, k] += np.float64(ref[c, r0 + i])
            if p > best:
                best = p
                arg = c
            total += pf
            squares += pf * pf
        sum_y[t, kt] += 1.0
        # NLL: multiply probabilities, take the logarithm only every 16 voxels
        log_mantissa *= max(pt, 1e-12)
        pending += 1
        if pending == 16:
            mantissa, exponent = math.frexp(log_mantissa)
            log_mantissa = mantissa
            log_exponent += exponent
            pending = 0
        brier += squares - 2.0 * pt + 1.0
        if abs(total - 1.0) > 1e-3:
            bad_sum += 1
        k = kb  # the top label's bin is its class's bin
        top_count[k] += 1
        top_sum_p[k] += np.float64(best)
        if arg == t:
            top_sum_y[k] += 1.0
            intersection[t] += 1
        if has_ref:
            top_soft_y[k] += np.float64(ref[arg, r0 + i])
        predicted[arg] += 1
        reference[t] += 1
        voxels += 1
    scalars[0] += -(math.log(log_mantissa) + log_exponent * math.log(2.0))
    scalars[1] += brier
    scalars[2] += voxels
    scalars[3] += bad_label
    scalars[4] += bad_nan
    scalars[5] += bad_sum


_EMPTY_REF = np.zeros((0, 1), np.float32)
_EMPTY_MASK = np.zeros(0, np.bool_)


def _threads() -> int:
    try:
        import torch

        wanted = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        wanted = os.cpu_count() or 1
    return max(1, min(wanted, os.cpu_count() or 1))


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
    threads = _threads() if threads is None else max(1, int(threads))
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
        start = index * step
        stop = min(n, start + step)
        _accumulate_range(probs, p0, labels, l0, ref_a, r0, mask_a, start, stop, edges, soft,
                          mask is not None, part.count, part.sum_p, part.sum_y, part.soft_y,
                          part.top_count, part.top_sum_p, part.top_sum_y, part.top_soft_y,
                          part.intersection, part.predicted, part.reference, part.scalars)

    if threads == 1:
        work(0)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(threads)))
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
