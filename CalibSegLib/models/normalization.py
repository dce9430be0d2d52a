"""Intensity normalisation as a model card describes it (``normalization`` field).

Types
-----
``zscore``
    ``(x - mean) / std`` over all voxels, or over non-zero voxels with
    ``"nonzero": true`` (zero voxels then stay 0).
``percentile``
    Map the ``lower``/``upper`` percentiles (default 0.5 / 99.5) to ``b_min`` /
    ``b_max`` (default 0 / 1), clipping when ``clip`` (default true).
``range``
    Map ``a_min``/``a_max`` to ``b_min``/``b_max`` (default 0 / 1), clipping when
    ``clip`` (default true).
``none``
    Cast to float32 only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from CalibSegLib.errors import CalibSegError


def _affine_map(x: np.ndarray, a_min: float, a_max: float, b_min: float, b_max: float,
                clip: bool) -> np.ndarray:
    if a_max == a_min:
        return np.full_like(x, b_min, dtype=np.float32)
    scale = (b_max - b_min) / (a_max - a_min)
    out = ((x - np.float32(a_min)) * np.float32(scale) + np.float32(b_min)).astype(np.float32)
    if clip:
        np.clip(out, min(b_min, b_max), max(b_min, b_max), out=out)
    return out


def normalize_intensity(image: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """A new float32 array: ``image`` normalised per ``spec`` (the card's ``normalization``).

    Parameters
    ----------
    image : numpy.ndarray
        Any shape; not modified.
    spec : mapping
        ``{"type": "zscore" | "percentile" | "range" | "none", ...}``.

    Returns
    -------
    numpy.ndarray
        float32, same shape.
    """
    kind = spec.get("type")
    x = np.asarray(image, dtype=np.float32)
    if kind == "none":
        return x.copy() if x is image else x
    if kind == "zscore":
        if spec.get("nonzero", False):
            mask = x != 0
            values = x[mask] if mask.any() else x.ravel()
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
            out = (x - np.float32(mean)) / np.float32(max(std, 1e-8))
            out[~mask] = 0.0
            return out.astype(np.float32, copy=False)
        mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
        return ((x - np.float32(mean)) / np.float32(max(std, 1e-8))).astype(np.float32, copy=False)
    if kind == "percentile":
        lo, hi = np.percentile(x, [float(spec.get("lower", 0.5)), float(spec.get("upper", 99.5))])
        return _affine_map(x, float(lo), float(hi), float(spec.get("b_min", 0.0)),
                           float(spec.get("b_max", 1.0)), bool(spec.get("clip", True)))
    if kind == "range":
        return _affine_map(x, float(spec["a_min"]), float(spec["a_max"]),
                           float(spec.get("b_min", 0.0)), float(spec.get("b_max", 1.0)),
                           bool(spec.get("clip", True)))
    raise CalibSegError(
        f"Unknown intensity normalisation {kind!r}; use zscore, percentile, range or none."
    )


def normalizer(card: Any):
    """A function ``image -> normalised float32 image`` for a card (or its normalisation spec)."""
    spec = card.normalization if hasattr(card, "normalization") else card

    def apply(image: np.ndarray) -> np.ndarray:
        return normalize_intensity(image, spec)

    return apply
