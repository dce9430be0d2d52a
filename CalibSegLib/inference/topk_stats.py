"""Reliability statistics straight from a top-k prediction (no ``C × N`` expansion).

Per voxel only the K stored classes and the tail are touched: a top class adds
its probability to its own bin; the ``C - K`` tail classes all have the same
probability (the tail mass shared equally), so they are added once to a shared
row (later added to every class) and taken back from the K top classes' rows
(``O(K)`` work per voxel for any class count). A compiled kernel on the CPU
(threads over voxel ranges, as the other kernels), torch operations on other
devices (and on request on the CPU); both give the same integer sums up to
float64 rounding of a probability at a bin edge or a fixed-point half-step.
The top label is ``indices[0]``; the reference class's probability (NLL, Brier,
``sum_y`` bin) is its top-k probability, or for a reference class among the
unnamed ones their equal share.

All sums are integers until the end — counts, and probabilities, NLL and Brier
terms in fixed point (``round(x * 2**q)``) — so any split of a volume merges to
identical numbers (as long as a sum stays below ``2**53`` units: ``2**27`` voxels
of probability 1 per bin).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from CalibSegLib.calibration.accumulators import NLL_FLOOR, Accumulators, Scalar
from CalibSegLib.calibration.binning import bin_edges, check_n_bins
from CalibSegLib.calibration.stats import ReliabilityStats, raise_on_bad_input
from CalibSegLib.calibration.temperature import default_temperature_grid
from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import compiled
from CalibSegLib.inference.topk import (
    FLOAT16_ROUNDOFF,
    TopKPrediction,
    check_temperature,
    tail_arguments,
    tail_log_partition,
)
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report
from CalibSegLib.threads import default_threads, guided_bounds, run_tasks

#: Fixed-point shifts: probabilities, NLL terms (<= 27.7), Brier terms (<= 2).
_Q_P, _Q_NLL, _Q_BRIER = 26, 20, 24
#: The same as the scales ``2**q`` of the compiled kernel (probabilities, NLL, Brier).
_SCALES = np.array([float(1 << _Q_P), float(1 << _Q_NLL), float(1 << _Q_BRIER)], np.float64)
#: Voxels per chunk.
DEFAULT_CHUNK_VOXELS = 1 << 20


def _fixed(x: torch.Tensor, shift: int) -> torch.Tensor:
    return torch.round(x * float(1 << shift)).long()


def accumulate_topk(acc: Accumulators, prediction: TopKPrediction, target, temperature: float,
                    edges: np.ndarray, mask=None, chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
                    device=None, progress: ProgressCallback | None = None,
                    cancel: CancelCallback | None = None) -> None:
    """Add the statistics of ``prediction`` at ``temperature`` against ``target`` to ``acc``.

    ``target`` and ``mask`` have the prediction's spatial shape (Z, Y, X) (numpy or
    torch); ``edges`` are the float32 bin edges, shape (B + 1,). Labels outside
    ``[0, C)`` are counted in ``acc.scalars[Scalar.BAD_LABELS]`` (the caller raises).
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
    acc.scalars[Scalar.NLL] += float(nll_q.item()) * 2.0 ** -_Q_NLL
    acc.scalars[Scalar.BRIER] += float(brier_q.item()) * 2.0 ** -_Q_BRIER
    acc.scalars[Scalar.VOXELS] += voxels
    acc.scalars[Scalar.BAD_LABELS] += bad


def _select(v, sel: torch.Tensor):
    """The decoded voxels ``sel`` only."""
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



def check_hard_reference(target, reference_probs=None) -> None:
    """One CalibSegError for a soft (probabilistic) reference, which the top-k form cannot score."""
    soft = reference_probs is not None
    if not soft and target is not None:
        dtype = target.dtype if isinstance(target, torch.Tensor) else np.asarray(target).dtype
        if (dtype.is_floating_point if isinstance(dtype, torch.dtype)
                else np.dtype(dtype).kind == "f"):
            values = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor)
                                else target)
            soft = bool(np.any(values != np.round(values)))
    if soft:
        raise CalibSegError(
            "A soft (probabilistic) reference cannot be scored from a compact prediction; "
            "pass integer labels, or predict with form='full'.")


def nll_over_temperatures_topk(prediction: TopKPrediction, target, grid=None, *, mask=None,
                               chunk_voxels: int = 1 << 18,
                               cancel: CancelCallback | None = None
                               ) -> tuple[np.ndarray, int]:
    """Summed NLL against ``target`` at every temperature of ``grid`` ``(G,)`` and the voxel count.

    The top-k counterpart of
    :func:`~CalibSegLib.calibration.temperature.nll_over_temperature_grid`, read from
    the stored arrays without expanding them: per voxel ``-log p_ref = log Z(a) - a d_ref``
    with ``a = 1/T``, ``Z`` the stored top-k terms plus the tail's interpolated
    ``exp f(a)``; a reference class in the tail gets its equal share,
    ``-log p_ref = log Z - f(a) + log(C - K)`` (an estimate there: see
    ``docs/bench/compact.md``). float64 throughout.
    """
    grid = default_temperature_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(~np.isfinite(grid)) or np.any(grid <= 0):
        raise CalibSegError("The temperature grid must be a 1-D list of positive numbers.")
    check_hard_reference(target)
    check_target(prediction, target, mask)
    c, k, n = prediction.num_classes, prediction.k, prediction.num_voxels
    labels_all = np.asarray(target.detach().cpu().numpy() if isinstance(target, torch.Tensor)
                            else target).reshape(n)
    mask_all = None if mask is None else np.asarray(
        mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask,
        dtype=bool).reshape(n)
    idx_all = prediction.indices.reshape(k, n)
    gaps_all = prediction.gaps.reshape(prediction.gaps.shape[0], n)
    tail_all = prediction.tail.reshape(prediction.tail.shape[0], n)
    n_tail = c - k
    sums = np.zeros(grid.size, dtype=np.float64)
    count = 0
    for first in range(0, n, max(int(chunk_voxels), 1)):
        check_cancel(cancel, "temperature fitting")
        last = min(n, first + max(int(chunk_voxels), 1))
        labels = torch.from_numpy(labels_all[first:last].astype(np.int64))
        keep = None if mask_all is None else torch.from_numpy(mask_all[first:last].copy())
        if keep is not None:
            labels = labels[keep]
        if labels.numel() == 0:
            continue
        if int(labels.min()) < 0 or int(labels.max()) >= c:
            raise CalibSegError(f"The reference holds labels outside [0, {c}); it does not "
                                "match the model's classes.")

        def rows(array: np.ndarray, first: int = first, last: int = last,
                 keep: torch.Tensor | None = keep) -> torch.Tensor:
            block = torch.from_numpy(np.ascontiguousarray(array[:, first:last]).astype(np.float64))
            return block if keep is None else block[:, keep]

        idx = torch.from_numpy(np.ascontiguousarray(idx_all[:, first:last]).astype(np.int64))
        idx = idx if keep is None else idx[:, keep]
        gaps = torch.cat([torch.zeros((1, labels.numel()), dtype=torch.float64),
                          rows(gaps_all)])
        hit = idx == labels[None]
        in_top = hit.any(0)
        d_ref = (gaps * hit).sum(0)
        tail = rows(tail_all) if n_tail > 0 else None
        for g, temperature in enumerate(grid):
            a = 1.0 / float(temperature)
            z = torch.exp(gaps * a).sum(0)
            ref = a * d_ref
            if tail is not None:
                f = tail_log_partition(tail, gaps[-1], n_tail, a)[0]
                z = z + torch.exp(f)
                ref = torch.where(in_top, ref, f - math.log(n_tail))
            sums[g] += float((torch.log(z) - ref).sum())
        count += int(labels.numel())
    if count == 0:
        raise CalibSegError("No voxel to fit the temperature on (empty volume or mask).")
    return sums, count


def stats_from_topk(prediction: TopKPrediction, target, n_bins: int = 20, *,
                    temperature: float | None = None, image_id: str = "image", mask=None,
                    class_names=None, chunk_voxels: int = DEFAULT_CHUNK_VOXELS, device=None,
                    reference_probs=None, progress: ProgressCallback | None = None,
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
        ``None``: the compiled CPU kernel; a torch device (``"cuda"``, or ``"cpu"``
        for the torch path on the CPU): torch operations there, chunk by chunk.
    reference_probs
        Soft references are not supported from the top-k form (one CalibSegError).
    """
    if not isinstance(prediction, TopKPrediction):
        raise TypeError(f"Expected a TopKPrediction (see CalibSegLib.inference.topk), got "
                        f"{type(prediction).__name__}.")
    check_hard_reference(target, reference_probs)
    n_bins = check_n_bins(n_bins)
    check_target(prediction, target, mask)
    t = prediction.temperature if temperature is None else check_temperature(temperature)
    names = class_names if class_names is not None else (prediction.class_names or None)
    if names is not None and len(names) != prediction.num_classes:
        raise CalibSegError(
            f"{len(names)} class names given for {prediction.num_classes} classes.")
    acc = Accumulators(prediction.num_classes, n_bins, soft=False)
    if device is None and compiled.available():
        accumulate_topk_cpu(acc, prediction, target, t, bin_edges(n_bins), mask, chunk_voxels,
                            progress, cancel)
    else:
        accumulate_topk(acc, prediction, target, t, bin_edges(n_bins), mask, chunk_voxels,
                        "cpu" if device is None else device, progress, cancel)
    raise_on_bad_input(acc.scalars)
    return ReliabilityStats._from_accumulators(str(image_id), n_bins, acc, names)


def accumulate_topk_cpu(acc: Accumulators, prediction: TopKPrediction, target, temperature,
                        edges: np.ndarray, mask=None, chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
                        progress: ProgressCallback | None = None,
                        cancel: CancelCallback | None = None) -> None:
    """:func:`accumulate_topk` by the compiled kernel: threads take voxel ranges into
    their own integer sums (summed in a fixed order: exact, independent of scheduling).
    Arguments as there: ``target`` shape (Z, Y, X), ``edges`` shape (B + 1,)."""
    c, b = prediction.num_classes, len(edges) - 1
    k = prediction.k
    a, forms, lowers, forms2, lowers2, log_n = tail_arguments(c, k, temperature)
    n = prediction.num_voxels
    idx_all = prediction.indices.reshape(k, n)
    gaps_all = prediction.gaps.reshape(prediction.gaps.shape[0], n)
    tail_all = prediction.tail.reshape(prediction.tail.shape[0], n)
    labels_all = np.asarray(target.detach().cpu().numpy() if isinstance(target, torch.Tensor)
                            else target).reshape(n)
    if labels_all.dtype.kind not in "iu":
        labels_all = labels_all.astype(np.int64)
    mask_all = None if mask is None else np.asarray(
        mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask,
        dtype=bool).reshape(n)
    edges32 = np.asarray(edges, np.float32)
    threads = default_threads()
    sums = _IntegerSums(c, b)
    step = max(int(chunk_voxels), 1) * 4
    for first in range(0, n, step):
        check_cancel(cancel, "calibration statistics computation")
        last = min(n, first + step)
        idx = np.ascontiguousarray(idx_all[:, first:last])
        gaps = np.ascontiguousarray(gaps_all[:, first:last], dtype=np.float32)
        tail = np.ascontiguousarray(tail_all[:, first:last], dtype=np.float32)
        labels = np.ascontiguousarray(labels_all[first:last])
        m = (np.ones(1, bool) if mask_all is None
             else np.ascontiguousarray(mask_all[first:last]))
        workers = min(threads, max(1, (last - first) // (1 << 15)))
        bounds = guided_bounds(last - first, workers, 1 << 14)
        parts = [_IntegerSums(c, b) for _ in range(len(bounds) - 1)]

        def work(i: int, idx=idx, gaps=gaps, tail=tail, labels=labels, m=m, bounds=bounds,
                 parts=parts) -> None:
            p = parts[i]
            compiled.topk_kernel.stats_range(
                         idx, gaps, tail, labels, m, mask_all is not None, c, a, forms, lowers,
                         forms2, lowers2, log_n, FLOAT16_ROUNDOFF, edges32, _SCALES, bounds[i],
                         bounds[i + 1], p.count, p.sum_q, p.sum_y, p.shared_count,
                         p.shared_q, p.top_count, p.top_q, p.top_y, p.intersection,
                         p.predicted, p.reference, p.scalars)

        run_tasks(work, len(bounds) - 1, workers)
        for p in parts:
            sums.add(p)
        report(progress, last / max(n, 1), "calibration statistics")
    sums.into(acc)


class _IntegerSums:
    """int64 sums of one task (fixed-point probabilities, NLL and Brier)."""

    def __init__(self, c: int, b: int) -> None:
        self.count = np.zeros((c, b), np.int64)
        self.sum_q = np.zeros((c, b), np.int64)
        self.sum_y = np.zeros((c, b), np.int64)
        self.shared_count = np.zeros(b, np.int64)
        self.shared_q = np.zeros(b, np.int64)
        self.top_count = np.zeros(b, np.int64)
        self.top_q = np.zeros(b, np.int64)
        self.top_y = np.zeros(b, np.int64)
        self.intersection = np.zeros(c, np.int64)
        self.predicted = np.zeros(c, np.int64)
        self.reference = np.zeros(c, np.int64)
        self.scalars = np.zeros(4, np.int64)  # NLL, Brier (fixed point), voxels, bad labels

    def add(self, other: _IntegerSums) -> None:
        for name, value in vars(other).items():
            getattr(self, name).__iadd__(value)

    def into(self, acc: Accumulators) -> None:
        acc.count += self.count + self.shared_count[None]
        acc.sum_p += (self.sum_q + self.shared_q[None]).astype(np.float64) * 2.0 ** -_Q_P
        acc.sum_y += self.sum_y.astype(np.float64)
        acc.top_count += self.top_count
        acc.top_sum_p += self.top_q.astype(np.float64) * 2.0 ** -_Q_P
        acc.top_sum_y += self.top_y.astype(np.float64)
        acc.intersection += self.intersection
        acc.predicted += self.predicted
        acc.reference += self.reference
        acc.scalars[Scalar.NLL] += float(self.scalars[0]) * 2.0 ** -_Q_NLL
        acc.scalars[Scalar.BRIER] += float(self.scalars[1]) * 2.0 ** -_Q_BRIER
        acc.scalars[Scalar.VOXELS] += float(self.scalars[2])
        acc.scalars[Scalar.BAD_LABELS] += float(self.scalars[3])
