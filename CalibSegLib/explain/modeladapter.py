"""A :class:`Segmenter` for a loaded CalibSeg model (card + network).

The model's intensity normalisation is applied per image inside the forward
pass (so perturbed images are normalised like real ones), and images whose
voxel size differs from the model's are resampled trilinearly to it and the
logits back, which keeps every explanation on the input grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain.segmenter import Segmenter, unet_divisor


def _card_get(card: Any, key: str, default: Any = None) -> Any:
    if isinstance(card, Mapping):
        return card.get(key, default)
    value = getattr(card, key, None)
    if value is None and hasattr(card, "get"):
        value = card.get(key, default)
    return default if value is None else value


def _percentile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolated percentile (numpy's default); kthvalue works on any size."""
    pos = q / 100.0 * (flat.numel() - 1)
    lo, frac = int(np.floor(pos)), pos - np.floor(pos)
    a = flat.kthvalue(lo + 1).values
    if frac == 0:
        return a
    b = flat.kthvalue(min(lo + 2, flat.numel())).values
    return a + (b - a) * frac


def torch_normalizer(spec: Mapping[str, Any] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-image intensity normalisation of a ``(B, 1, …)`` batch, as a card describes it.

    Types: ``zscore`` (``nonzero``: statistics over non-zero voxels), ``percentile``
    (``lower``/``upper`` percentiles, default 0.5/99.5, mapped to ``b_min``/``b_max``,
    default 0/1), ``range`` (``a_min``/``a_max`` to ``b_min``/``b_max``), ``none``;
    ``clip`` defaults to true. The same rules as
    :func:`CalibSegLib.models.normalization.normalize_intensity`, on torch batches.
    """
    spec = dict(spec or {"type": "none"})
    kind = spec.get("type", "none")

    def zscore(x: torch.Tensor) -> torch.Tensor:
        out = []
        for sample in x:
            values = sample[sample != 0] if spec.get("nonzero") else sample.flatten()
            if values.numel() == 0:
                values = sample.flatten()
            mean, std = values.mean(), values.std(unbiased=False)
            scaled = (sample - mean) / torch.clamp(std, min=1e-8)
            out.append(torch.where(sample != 0, scaled, sample) if spec.get("nonzero")
                       else scaled)
        return torch.stack(out)

    def linear(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        b_min, b_max = float(spec.get("b_min", 0.0)), float(spec.get("b_max", 1.0))
        if float(hi - lo) == 0.0:
            return torch.full_like(x, b_min)
        y = (x - lo) / (hi - lo) * (b_max - b_min) + b_min
        if spec.get("clip", True):
            y = torch.clamp(y, min(b_min, b_max), max(b_min, b_max))
        return y

    def percentile(x: torch.Tensor) -> torch.Tensor:
        out = []
        for sample in x:
            flat = sample.detach().flatten()
            lo = _percentile(flat, float(spec.get("lower", 0.5)))
            hi = _percentile(flat, float(spec.get("upper", 99.5)))
            out.append(linear(sample, lo, hi))
        return torch.stack(out)

    def value_range(x: torch.Tensor) -> torch.Tensor:
        return linear(x, torch.tensor(float(spec["a_min"])), torch.tensor(float(spec["a_max"])))

    table = {"zscore": zscore, "percentile": percentile, "range": value_range,
             "none": lambda x: x}
    if kind not in table:
        raise CalibSegError(f"Unknown intensity normalisation {kind!r} in the model card.")
    return table[kind]


def model_segmenter(model: Any, affine: np.ndarray | None = None,
                    shape: tuple[int, int, int] | None = None, overlap: float = 0.25
                    ) -> Segmenter:
    """A :class:`Segmenter` for a loaded model (``.card`` and ``.network``).

    Parameters
    ----------
    model : Model
        From :func:`CalibSegLib.models.load_model`.
    affine : numpy.ndarray, optional
        Voxel-to-RAS matrix of the images to explain. When their spacing or
        orientation differs from the model's, the segmenter resamples to the
        model grid (:func:`CalibSegLib.inference.resample.model_grid`) and back;
        ``shape`` (Z, Y, X) is then needed too, or the segmenter adapts to the
        first image it sees.
    overlap : float
        Sliding-window overlap (the card's ``patch_size`` is the window), as in
        :func:`CalibSegLib.inference.predict`.
    """
    card = model.card
    network = model.network
    divisor = int(_card_get(card, "divisor", 0) or unet_divisor(network))
    patch = _card_get(card, "patch_size")
    window = ({"roi": tuple(int(v) for v in reversed(tuple(patch))), "overlap": overlap,
               "sw_batch_size": 4} if patch else None)
    segmenter = _ModelSegmenter(network, divisor=divisor, window=window,
                                normalize=torch_normalizer(_card_get(card, "normalization")))
    segmenter.card = card
    segmenter.input_affine = None if affine is None else np.asarray(affine, np.float64)
    if shape is not None and affine is not None:
        segmenter.set_input_grid(tuple(shape))
    return segmenter


class _ModelSegmenter(Segmenter):
    """A :class:`Segmenter` that finds the model grid for the input grid it is given."""

    card: Any = None
    input_affine: np.ndarray | None = None
    _grid_shape: tuple[int, ...] | None = None

    def set_input_grid(self, shape: tuple[int, ...]) -> None:
        from CalibSegLib.inference.resample import model_grid, same_grid

        self._grid_shape = tuple(int(s) for s in shape)
        if self.input_affine is None:
            self.grid = None
            return
        spacing = _card_get(self.card, "spacing_mm")
        orientation = _card_get(self.card, "orientation", "RAS")
        grid_shape, grid_affine = model_grid(shape, self.input_affine, spacing, orientation)
        if same_grid(shape, self.input_affine, grid_shape, grid_affine):
            self.grid = None
        else:
            self.grid = (self.input_affine, tuple(grid_shape), grid_affine)

    def geometry(self, input_shape: tuple[int, ...]):
        if tuple(int(s) for s in input_shape) != self._grid_shape:
            self.set_input_grid(tuple(input_shape))
        return super().geometry(input_shape)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        self.geometry(tuple(x.shape[2:]))
        return super()._prepare(x)
