"""uint16 fixed-point probabilities: the compact storage the statistics read directly.

A probability ``p`` in [0, 1] is stored as ``q = round(p * 65535)`` (absolute error at
most 7.7e-6, uniform over [0, 1]); :class:`~CalibSegLib.calibration.ReliabilityStats`
reads it as ``q / 65535``.
"""

from __future__ import annotations

import numpy as np
import torch

#: uint16 fixed-point probabilities hold ``round(p * FIXED_POINT_SCALE)``.
FIXED_POINT_SCALE = 65535


def to_fixed_point(probs: np.ndarray) -> np.ndarray:
    """uint16 ``round(p * 65535)`` of probabilities in [0, 1], same shape as ``probs``.

    ``probs`` is an array of any shape, such as shape (C, Z, Y, X).
    """
    probs = np.asarray(probs)
    if probs.dtype == np.uint16:
        return probs
    scaled = np.clip(probs, 0.0, 1.0).astype(np.float32) * np.float32(FIXED_POINT_SCALE)
    return np.rint(scaled, out=scaled).astype(np.uint16)


def from_fixed_point(values):
    """float32 probabilities of uint16 fixed-point ``values`` (other dtypes as float32),
    same shape; torch tensors are converted on their device."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.uint16:
            return values.float() * (1.0 / FIXED_POINT_SCALE)
        return values.float()
    values = np.asarray(values)
    if values.dtype == np.uint16:
        return values.astype(np.float32) * np.float32(1.0 / FIXED_POINT_SCALE)
    return values.astype(np.float32, copy=False)
