"""Sliding-window inference straight into a :class:`~CalibSegLib.inference.topk.TopKPrediction`.

The windows, their order and the Gaussian blending are MONAI's
(``dense_patch_slices``, ``compute_importance_map``, the same padding of inputs
smaller than a window), so the blended logits equal those of MONAI's
``sliding_window_inference``. But the full-precision logits live only in a slab
buffer of ``C × roi_z × Y × X`` (plus the blending weights of the slab): windows
come in order of their first plane along axis 0, and when a window starts at
plane ``s`` no later window touches planes before ``s``, so those planes are
finished — divided by their weights and written into the top-k form (at most 16
bytes per voxel) — and the buffer moves on. Peak extra memory is the slab, not
``C × N`` float32.

When CUDA runs out of memory in the network call, the window batch is halved (the
CUDA cache freed) and the stream goes on from the first window not yet blended: a
batch that failed added nothing to the slab, so the windows, their order and the
sums are those of an uninterrupted run. One window at a time still failing ends
with one :class:`~CalibSegLib.errors.CalibSegError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from torch.nn import functional

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference.sliding import _is_cuda_oom, _Predictor
from CalibSegLib.inference.topk import TopKPrediction, TopKWriter, compaction_chunk
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel

log = logging.getLogger(__name__)

GPU_MEMORY_ADVICE = ("run on the CPU (--device cpu), use a smaller window (the card's "
                     "roi_size), or free GPU memory.")

def scan_interval(image_size: Sequence[int], roi_size: Sequence[int],
                  overlap: float) -> tuple[int, ...]:
    """Step between windows per axis, as MONAI's sliding window takes it."""
    steps = []
    for size, window in zip(image_size, roi_size):
        if window == size:
            steps.append(int(window))
        else:
            steps.append(max(int(window * (1.0 - overlap)), 1))
    return tuple(steps)


class _Slab:
    """Blending buffer of planes ``[base, base + depth)`` along axis 0 (padded grid)."""

    def __init__(self, channels: int, depth: int, plane: Sequence[int], device,
                 dtype: torch.dtype) -> None:
        self.base = 0
        self.depth = int(depth)
        self.values = torch.zeros((channels, self.depth, *plane), dtype=dtype, device=device)
        self.weights = torch.zeros((1, self.depth, *plane), dtype=dtype, device=device)

    def add(self, window: tuple[slice, ...], values: torch.Tensor, weight: torch.Tensor) -> None:
        z = slice(window[0].start - self.base, window[0].stop - self.base)
        key = (slice(None), z, *window[1:])
        self.values[key] += values
        self.weights[key] += weight

    def take(self, stop: int) -> torch.Tensor:
        """Blended planes ``[base, stop)``; the buffer then starts at ``stop``."""
        n = int(stop) - self.base
        out = self.values[:, :n] / self.weights[:, :n]
        keep = self.depth - n
        if keep > 0:
            self.values[:, :keep] = self.values[:, n:].clone()
            self.weights[:, :keep] = self.weights[:, n:].clone()
        self.values[:, max(keep, 0):] = 0
        self.weights[:, max(keep, 0):] = 0
        self.base = int(stop)
        return out


def sliding_window_topk(x: torch.Tensor, network: Callable[[torch.Tensor], Any],
                        roi_size: Sequence[int], num_classes: int, *, sw_batch_size: int = 4,
                        overlap: float = 0.25, mode: str = "gaussian", sigma_scale: float = 0.125,
                        padding_mode: str = "replicate", cval: float = 0.0,
                        temperature: float = 1.0, affine=None, class_names: tuple[str, ...] = (),
                        chunk_voxels: int | None = None,
                        planes: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        progress: ProgressCallback | None = None,
                        cancel: CancelCallback | None = None, cuda: bool | None = None
                        ) -> tuple[TopKPrediction, dict[str, Any]]:
    """Blended sliding-window logits of ``network`` over ``x`` (1, 1, Z, Y, X), as top-k.

    Parameters as :func:`~CalibSegLib.inference.sliding.sliding_window` (MONAI's
    arguments); ``network`` gives ``(n, C, *roi)`` logits with ``C = num_classes``.
    The slab buffer and the compaction run on ``x``'s device (CUDA: float16
    autocast for the network as in ``sliding_window``); the top-k arrays are on the
    CPU. ``chunk_voxels`` bounds the compaction's temporaries (default
    :func:`~CalibSegLib.inference.topk.compaction_chunk`). Peak extra memory: about
    three slabs (the buffer, the blended planes taken from it, a shift copy), one
    compaction chunk and the top-k arrays. ``planes`` turns each finished block of
    blended network output ``(C, planes, Y, X)`` into logits before it is compacted
    (checks and conversion of probability or log-probability output). A CUDA
    out-of-memory error of the network halves ``sw_batch_size`` and goes on from the
    first window not yet blended (down to one window; then one ``CalibSegError``).

    Returns
    -------
    (prediction, info)
        The :class:`TopKPrediction` on ``x``'s grid and ``{"windows", "slab_bytes",
        "sw_batch_size", "retries"}``: the window batch that finished the run and how
        many times it was halved.
    """
    if x.ndim != 5 or x.shape[0] != 1:
        # the input is built by predict, never given by a user: a caller's mistake
        raise ValueError(f"Expected a (1, channels, Z, Y, X) input, got {tuple(x.shape)}.")
    if not 0.0 <= float(overlap) < 1.0:
        raise CalibSegError(f"overlap must be in [0, 1), got {overlap}.")
    if int(sw_batch_size) < 1:
        raise CalibSegError(f"sw_batch_size must be at least 1, got {sw_batch_size}.")
    roi = tuple(int(r) for r in roi_size)
    shape = tuple(int(s) for s in x.shape[2:])
    cuda = bool(x.is_cuda) if cuda is None else bool(cuda)
    # pad inputs smaller than a window, centred, as MONAI does
    pad: list[int] = []
    for axis in range(2, -1, -1):
        diff = max(roi[axis] - shape[axis], 0)
        pad.extend([diff // 2, diff - diff // 2])
    if any(pad):
        x = functional.pad(x, pad=pad, mode=padding_mode, value=cval)
    size = tuple(int(s) for s in x.shape[2:])
    lead = (pad[4], pad[2], pad[0])  # padding before the image along z, y, x
    windows = dense_patch_slices(size, roi, scan_interval(size, roi, float(overlap)))
    weight = compute_importance_map(roi, mode=mode, sigma_scale=sigma_scale, device=x.device,
                                    dtype=x.dtype)[None]
    predictor = _Predictor(network, int(math.ceil(len(windows) / int(sw_batch_size))), progress,
                           cancel, autocast=cuda)
    writer = TopKWriter(num_classes, shape)
    slab = _Slab(num_classes, roi[0], size[1:], x.device, x.dtype)
    crop = (slice(None), slice(lead[1], lead[1] + shape[1]), slice(lead[2], lead[2] + shape[2]))

    def flush(stop: int) -> None:
        first = slab.base
        taken = slab.take(stop)
        # keep only planes inside the image, cropped to it
        lo, hi = max(first, lead[0]), min(stop, lead[0] + shape[0])
        if hi <= lo:
            return
        block = taken[:, lo - first:hi - first][(slice(None), *crop)]
        if planes is not None:
            block = planes(block)
        plane = block.shape[2] * block.shape[3]
        chunk = int(chunk_voxels or compaction_chunk(num_classes))
        for z in range(hi - lo):
            rows = block[:, z].reshape(num_classes, plane)
            first_voxel = (lo - lead[0] + z) * plane
            for v in range(0, plane, chunk):
                writer.write_flat(first_voxel + v, rows[:, v:v + chunk])

    batch_size = int(sw_batch_size)
    retries = 0
    start = 0
    while start < len(windows):
        check_cancel(cancel, "prediction")
        batch = windows[start:start + batch_size]
        out: torch.Tensor | None
        try:
            out = predictor(torch.cat([x[(slice(None), slice(None), *w)] for w in batch]))
        except Exception as exc:
            if not _is_cuda_oom(exc):
                raise
            if batch_size == 1:
                raise CalibSegError(
                    "Out of GPU memory even with one window at a time; "
                    + GPU_MEMORY_ADVICE) from exc
            out = None  # retried below, once the error's frames are released
        if out is None:
            smaller = max(1, batch_size // 2)
            log.warning("CUDA out of memory with sw_batch_size=%d; retrying the remaining "
                        "%d windows with sw_batch_size=%d.", batch_size,
                        len(windows) - start, smaller)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size, retries = smaller, retries + 1
            predictor.total = predictor.done + int(
                math.ceil((len(windows) - start) / batch_size))
            continue
        if out.shape[1] != num_classes:
            raise CalibSegError(
                f"The network gives {out.shape[1]} output channels but {num_classes} classes "
                "were expected; fix the card's classes.")
        for values, window in zip(out, batch):
            if window[0].start > slab.base:
                flush(window[0].start)
            slab.add(window, values * weight[0], weight)
        del out
        start += len(batch)
    flush(size[0])
    info = {"windows": len(windows), "sw_batch_size": batch_size, "retries": retries,
            "slab_bytes": int(slab.values.nbytes + slab.weights.nbytes)}
    return writer.finish(temperature=temperature, affine=affine, class_names=class_names), info
