"""Reliability statistics straight from a top-k prediction (no ``C × N`` expansion).

Per voxel only the K stored classes and the tail are touched: a top class adds
its probability to its own bin; the ``C - K`` tail classes all have the same
probability (the tail mass shared equally), so they are added once to a shared
row (later added to every class) and taken back from the K top classes' rows
(``O(K)`` work per voxel for any class count). The top label is ``indices[0]``;
the reference class's probability (NLL, Brier, ``sum_y`` bin) is its top-k
probability, or for a reference class among the unnamed ones their equal share.

All sums are integers until the end — counts, and probabilities, NLL and Brier
terms in fixed point (``round(x * 2**q)``) — so any split of a volume merges to
identical numbers (as long as a sum stays below ``2**53`` units: ``2**27`` voxels
of probability 1 per bin). Torch operations on the arrays' device: CPU, or CUDA.
"""

from __future__ import annotations

import numpy as np
import torch

from CalibSegLib.calibration.kernels import NLL_FLOOR, Accumulators
from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference.topk import TopKPrediction
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

#: Fixed-point shifts: probabilities, NLL terms (<= 27.7), Brier terms (<= 2).
_Q_P, _Q_NLL, _Q_BRIER = 26, 20, 24
#: Voxels per chunk.
DEFAULT_CHUNK_VOXELS = 1 << 20


def _fixed(x: torch.Tensor, shift: int) -> torch.Tensor:
    return torch.round(x * float(1 << shift)).long()


def accumulate_topk(acc: Accumulators, prediction: TopKPrediction, target, temperature: float,
                    edges: np.ndarray, mask=None, chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
                    device=None, progress: ProgressCallback | None = None,
                    cancel: CancelCallback | None = None) -> None:
    """Add the statistics of ``prediction`` at ``temperature`` against ``target`` to ``acc``.

    ``target`` and ``mask`` have the prediction's spatial shape (numpy or torch);
    ``edges`` are the float32 bin edges. Labels outside ``[0, C)`` are counted in
    ``acc.scalars[3]`` (the caller raises).
    """
    c, b = prediction.num_classes, len(edges) - 1
    dev = torch.device("cpu") if device is None else torch.device(device)
    n = prediction.num_voxels
    labels = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor)
                             else target).reshape(-1)
    keep_all = None
    if mask is not None:
        keep_all = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor)
                                   else mask).reshape(-1).bool()
    bounds = torch.as_tensor(np.asarray(edges[1:], np.float32), device=dev)
    count = torch.zeros(c * b, dtype=torch.int64, device=dev)
    sum_q = torch.zeros(c * b, dtype=torch.int64, device=dev)
    sum_y = torch.zeros(c * b, dtype=torch.int64, device=dev)
    shared_count = torch.zeros(b, dtype=torch.int64, device=dev)
    shared_q = torch.zeros(b, dtype=torch.int64, device=dev)
    top_count = torch.zeros(b, dtype=torch.int64, device=dev)
    top_q = torch.zeros(b, dtype=torch.int64, device=dev)
    top_y = torch.zeros(b, dtype=torch.int64, device=dev)
    intersection = torch.zeros(c, dtype=torch.int64, device=dev)
    predicted = torch.zeros(c, dtype=torch.int64, device=dev)
    reference = torch.zeros(c, dtype=torch.int64, device=dev)
    nll_q = torch.zeros((), dtype=torch.int64, device=dev)
    brier_q = torch.zeros((), dtype=torch.int64, device=dev)
    voxels = bad = 0
    for start, stop, v, _ in prediction.blocks(temperature, None, chunk_voxels, dev,
                                               torch.float64):
        check_cancel(cancel, "calibration statistics computation")
        t = labels[start:stop].to(dev).long()
        valid = (t >= 0) & (t < c)
        inside = valid if keep_all is None else valid & keep_all[start:stop].to(dev)
        bad += int((~valid).sum()) if keep_all is None else int(
            (keep_all[start:stop].to(dev) & ~valid).sum())
        if not bool(inside.all()):
            sel = inside.nonzero().squeeze(1)
            t = t[sel]
            v = _select(v, sel)
        voxels += int(t.numel())
        if t.numel() == 0:
            continue
        idx = v.indices
        p_top = v.top
        bin_top = torch.bucketize(p_top.float(), bounds).clamp_(max=b - 1)
        q_top = _fixed(p_top, _Q_P)
        slot = idx * b + bin_top
        count.index_add_(0, slot.reshape(-1), torch.ones_like(slot).reshape(-1))
        sum_q.index_add_(0, slot.reshape(-1), q_top.reshape(-1))
        hit = idx == t[None]
        in_top = hit.any(0)
        label_bin = (bin_top * hit).sum(0)
        p_label = (p_top * hit).sum(0)
        if v.n_rest > 0:
            share = v.rest / v.n_rest
            bin_tail = torch.bucketize(share.float(), bounds).clamp_(max=b - 1)
            q_tail = _fixed(share, _Q_P)
            shared_count += torch.bincount(bin_tail, minlength=b)
            shared_q.index_add_(0, bin_tail, q_tail)
            back = (idx * b + bin_tail[None]).reshape(-1)
            count.index_add_(0, back, torch.full_like(back, -1))
            sum_q.index_add_(0, back, (-q_tail)[None].expand_as(idx).reshape(-1))
            label_bin = torch.where(in_top, label_bin, bin_tail)
            p_label = torch.where(in_top, p_label, share)
        sum_y.index_add_(0, t * b + label_bin, torch.ones_like(t))
        bin_first = bin_top[0]
        correct = idx[0] == t
        top_count += torch.bincount(bin_first, minlength=b)
        top_q.index_add_(0, bin_first, q_top[0])
        top_y.index_add_(0, bin_first, correct.long())
        intersection += torch.bincount(t[correct], minlength=c)
        predicted += torch.bincount(idx[0], minlength=c)
        reference += torch.bincount(t, minlength=c)
        nll_q += _fixed(-torch.log(p_label.clamp(min=NLL_FLOOR)), _Q_NLL).sum()
        brier = (v.square - 2.0 * p_label + 1.0).clamp(min=0.0)
        brier_q += _fixed(brier, _Q_BRIER).sum()
        report(progress, stop / max(n, 1), "calibration statistics")
    counts = (count.reshape(c, b) + shared_count[None]).cpu().numpy()
    sums = (sum_q.reshape(c, b) + shared_q[None]).cpu().numpy()
    acc.count += counts
    acc.sum_p += sums.astype(np.float64) * 2.0 ** -_Q_P
    acc.sum_y += sum_y.reshape(c, b).cpu().numpy().astype(np.float64)
    acc.top_count += top_count.cpu().numpy()
    acc.top_sum_p += top_q.cpu().numpy().astype(np.float64) * 2.0 ** -_Q_P
    acc.top_sum_y += top_y.cpu().numpy().astype(np.float64)
    acc.intersection += intersection.cpu().numpy()
    acc.predicted += predicted.cpu().numpy()
    acc.reference += reference.cpu().numpy()
    acc.scalars[0] += float(nll_q.item()) * 2.0 ** -_Q_NLL
    acc.scalars[1] += float(brier_q.item()) * 2.0 ** -_Q_BRIER
    acc.scalars[2] += voxels
    acc.scalars[3] += bad


def _select(v, sel: torch.Tensor):
    """The decoded voxels ``sel`` only."""
    import dataclasses

    changes = {}
    for f in dataclasses.fields(v):
        value = getattr(v, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = value[..., sel]
    return dataclasses.replace(v, **changes)


def check_target(prediction: TopKPrediction, target, mask) -> None:
    """One CalibSegError when the reference or mask do not match the prediction."""
    shape = tuple(int(s) for s in target.shape)
    if shape != prediction.shape:
        raise CalibSegError(
            f"The reference has shape {shape} but the prediction has spatial shape "
            f"{prediction.shape}; resample the reference onto the prediction grid.")
    if mask is not None and tuple(int(s) for s in mask.shape) != prediction.shape:
        raise CalibSegError(f"The mask has shape {tuple(mask.shape)}; expected {prediction.shape}.")



def stats_from_topk(prediction: TopKPrediction, target, n_bins: int = 20, *,
                    temperature: float | None = None, image_id: str = "image", mask=None,
                    class_names=None, chunk_voxels: int = DEFAULT_CHUNK_VOXELS, device=None,
                    progress: ProgressCallback | None = None,
                    cancel: CancelCallback | None = None):
    """:class:`~CalibSegLib.calibration.ReliabilityStats` of one top-k prediction.

    Parameters
    ----------
    prediction : TopKPrediction
    target
        Reference labels ``(Z, Y, X)`` in ``[0, C)``.
    n_bins
        Equal-width confidence bins.
    temperature
        Default the prediction's own.
    image_id, mask, class_names, progress, cancel
        As :meth:`ReliabilityStats.from_probs`.
    device
        Torch device to compute on (default the CPU; ``"cuda"`` moves each chunk there).
    """
    from CalibSegLib.calibration.binning import bin_edges, check_n_bins
    from CalibSegLib.calibration.stats import ReliabilityStats, _raise_on_bad_input
    from CalibSegLib.inference.topk import check_temperature

    if not isinstance(prediction, TopKPrediction):
        raise CalibSegError("Expected a TopKPrediction (see CalibSegLib.inference.topk).")
    n_bins = check_n_bins(n_bins)
    check_target(prediction, target, mask)
    t = prediction.temperature if temperature is None else check_temperature(temperature)
    names = class_names if class_names is not None else (prediction.class_names or None)
    if names is not None and len(names) != prediction.num_classes:
        raise CalibSegError(
            f"{len(names)} class names given for {prediction.num_classes} classes.")
    acc = Accumulators(prediction.num_classes, n_bins, soft=False)
    accumulate_topk(acc, prediction, target, t, bin_edges(n_bins), mask, chunk_voxels, device,
                    progress, cancel)
    _raise_on_bad_input(acc.scalars)
    return ReliabilityStats._from_accumulators(str(image_id), n_bins, acc, names)
