"""The torch back end of the reliability statistics (any torch device; used for CUDA
tensors, and on CPU when the compiled kernel cannot load).

Per chunk: ``bucketize`` plus ``bincount``/``index_add`` on the tensors' device into
float64 accumulators.
"""

from __future__ import annotations

import numpy as np
import torch

from CalibSegLib.calibration.accumulators import (
    NLL_FLOOR,
    SUM_TOLERANCE,
    Accumulators,
    Scalar,
)


def accumulate_torch(acc: Accumulators, probs, labels, edges: np.ndarray, ref=None,
                     mask=None) -> None:
    """Add one chunk to ``acc`` with torch ops on the tensors' device.

    ``probs`` ``(C, n)`` float tensor, ``labels`` ``(n,)`` integer tensor, ``ref``
    ``(C, n)`` or None, ``mask`` ``(n,)`` bool or None.
    """
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
    acc.scalars[Scalar.NLL] += float(-torch.log(pt.clamp(min=NLL_FLOOR)).sum())
    acc.scalars[Scalar.BRIER] += float(((p.double() - onehot_y) ** 2).sum())
    acc.scalars[Scalar.VOXELS] += t.numel()
    acc.scalars[Scalar.BAD_LABELS] += n_bad_label
    acc.scalars[Scalar.NAN_VALUES] += n_nan
    acc.scalars[Scalar.BAD_SUMS] += n_bad_sum
