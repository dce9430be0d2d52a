"""Fused CPU kernel: softmax, confidence and normalised entropy in one pass over the logits.

Per voxel, with ``s_c = (z_c - max_c z_c) / T`` and ``S = sum_c exp(s_c)``:
``p_c = exp(s_c) / S``, confidence ``max_c p_c = 1 / S`` (the largest term is
``exp(0)``) and entropy ``-sum_c p_c log p_c = log S - sum_c p_c s_c``. So one
exponential per class and one logarithm per voxel give all three maps, and the
logits are read once. Voxels are processed in blocks with class-major inner
loops (contiguous reads of each class row), one block range per thread
(``nogil``; threads as torch's intra-op setting). Probabilities are written as
float32 or as uint16 fixed point ``round(p * 65535)``
(:mod:`CalibSegLib.calibration.fixed_point`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from CalibSegLib.calibration.fixed_point import FIXED_POINT_SCALE
from CalibSegLib.threads import default_threads, guided_bounds, run_tasks

_BLOCK = 2048
#: Smallest task of the parallel split (threads take tasks as they finish them).
_SMALLEST_TASK = 32 * _BLOCK


@numba.njit(cache=True, nogil=True)
def _maps_range(z, inv_t, inv_log_c, scale, offset, probs, confidence, entropy, start,
                stop):  # pragma: no cover - compiled
    """Maps of voxels ``start:stop``; ``probs[c, i] = p * scale + offset`` (cast to its dtype)."""
    num_classes = z.shape[0]
    top = np.empty(_BLOCK, np.float32)
    total = np.empty(_BLOCK, np.float32)
    weighted = np.empty(_BLOCK, np.float32)
    exps = np.empty((num_classes, _BLOCK), np.float32)
    for b0 in range(start, stop, _BLOCK):
        n = min(_BLOCK, stop - b0)
        for j in range(n):
            top[j] = z[0, b0 + j]
            total[j] = 0.0
            weighted[j] = 0.0
        for c in range(1, num_classes):
            for j in range(n):
                v = z[c, b0 + j]
                if v > top[j]:
                    top[j] = v
        for c in range(num_classes):
            for j in range(n):
                s = (z[c, b0 + j] - top[j]) * inv_t
                e = math.exp(s)
                exps[c, j] = e
                total[j] += e
                weighted[j] += e * s
        for j in range(n):
            inv = 1.0 / total[j]
            confidence[b0 + j] = inv
            h = (math.log(total[j]) - weighted[j] * inv) * inv_log_c
            entropy[b0 + j] = min(max(h, 0.0), 1.0)
            total[j] = inv * scale
        for c in range(num_classes):
            for j in range(n):
                probs[c, b0 + j] = exps[c, j] * total[j] + offset


def probability_maps_cpu(logits: np.ndarray, temperature: float, fixed_point: bool = False,
                         chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs, confidence, entropy / log C)`` of ``(C, ...)`` logits.

    ``fixed_point``: ``probs`` as uint16 ``round(p * 65535)`` instead of float32.
    Logits that are not C-contiguous float32 (e.g. float16) are converted ``chunk``
    voxels at a time, so the extra memory is bounded by the chunk.
    """
    logits = np.asarray(logits)
    num_classes = logits.shape[0]
    flat = logits.reshape(num_classes, -1)
    n = flat.shape[1]
    probs = np.empty(flat.shape, np.uint16 if fixed_point else np.float32)
    confidence = np.empty(n, np.float32)
    entropy = np.empty(n, np.float32)
    inv_t = np.float32(1.0 / float(temperature))
    inv_log_c = np.float32(1.0 / math.log(num_classes)) if num_classes > 1 else np.float32(0.0)
    scale = np.float32(FIXED_POINT_SCALE if fixed_point else 1.0)
    offset = np.float32(0.5 if fixed_point else 0.0)
    direct = flat.dtype == np.float32 and flat.flags.c_contiguous
    step = max(n, 1) if direct else max(int(chunk), _BLOCK)
    workers = min(default_threads(), max(1, min(n, step) // (64 * _BLOCK)))
    for first in range(0, n, step):
        last = min(n, first + step)
        if direct:
            z, z0 = flat, 0
        else:
            z, z0 = np.ascontiguousarray(flat[:, first:last], dtype=np.float32), first
        p = probs if direct else probs[:, first:last]
        c = confidence if direct else confidence[first:last]
        e = entropy if direct else entropy[first:last]
        # several tasks per thread: a core slowed by other load takes fewer of them
        bounds = guided_bounds(last - first, workers, _SMALLEST_TASK)
        base = first - z0

        def work(i: int, z=z, p=p, c=c, e=e, bounds=bounds, base=base) -> None:
            _maps_range(z, inv_t, inv_log_c, scale, offset, p, c, e, base + bounds[i],
                        base + bounds[i + 1])

        run_tasks(work, len(bounds) - 1, workers)
    spatial = logits.shape[1:]
    return probs.reshape(logits.shape), confidence.reshape(spatial), entropy.reshape(spatial)
