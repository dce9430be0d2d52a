"""Fused CPU kernel: softmax, confidence and normalised entropy in one pass over the logits.

Per voxel, with ``s_c = (z_c - max_c z_c) / T`` and ``S = sum_c exp(s_c)``:
``p_c = exp(s_c) / S``, confidence ``max_c p_c = 1 / S`` (the largest term is
``exp(0)``) and entropy ``-sum_c p_c log p_c = log S - sum_c p_c s_c``. So one
exponential per class and one logarithm per voxel give all three maps, and the
logits are read once. Voxels are processed in blocks with class-major inner
loops (contiguous reads of each class row), one block range per thread
(``nogil``; threads as torch's intra-op setting).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

_BLOCK = 2048


@numba.njit(cache=True, nogil=True)
def _maps_range(z, inv_t, inv_log_c, probs, confidence, entropy, start, stop):  # pragma: no cover
    num_classes = z.shape[0]
    top = np.empty(_BLOCK, np.float32)
    total = np.empty(_BLOCK, np.float32)
    weighted = np.empty(_BLOCK, np.float32)
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
                probs[c, b0 + j] = e
                total[j] += e
                weighted[j] += e * s
        for j in range(n):
            inv = 1.0 / total[j]
            confidence[b0 + j] = inv
            h = (math.log(total[j]) - weighted[j] * inv) * inv_log_c
            entropy[b0 + j] = min(max(h, 0.0), 1.0)
            total[j] = inv
        for c in range(num_classes):
            for j in range(n):
                probs[c, b0 + j] *= total[j]


def _threads() -> int:
    import torch

    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def probability_maps_cpu(logits: np.ndarray, temperature: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs, confidence, entropy / log C)`` of C-contiguous float32 ``(C, ...)`` logits."""
    num_classes = logits.shape[0]
    flat = np.ascontiguousarray(logits, dtype=np.float32).reshape(num_classes, -1)
    n = flat.shape[1]
    probs = np.empty_like(flat)
    confidence = np.empty(n, np.float32)
    entropy = np.empty(n, np.float32)
    inv_t = np.float32(1.0 / float(temperature))
    inv_log_c = np.float32(1.0 / math.log(num_classes)) if num_classes > 1 else np.float32(0.0)
    threads = min(_threads(), max(1, n // (64 * _BLOCK)))
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)

    def work(i: int) -> None:
        _maps_range(flat, inv_t, inv_log_c, probs, confidence, entropy, bounds[i], bounds[i + 1])

    if threads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
    spatial = logits.shape[1:]
    return probs.reshape(logits.shape), confidence.reshape(spatial), entropy.reshape(spatial)
