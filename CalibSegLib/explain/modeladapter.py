"""A :class:`Segmenter` for a loaded CalibSeg model (card + network).

The card's preprocessing transforms (:mod:`CalibSegLib.models.preprocessing`,
the same MONAI classes :func:`CalibSegLib.inference.predict` uses) are applied
per image inside the forward pass (so perturbed images are preprocessed like
real ones), on the grid the card names (``preprocessing_grid``). Images whose
voxel size differs from the model's are resampled trilinearly to the card's
model grid and the logits back, which keeps every explanation on the input
grid. The network sees arrays in its own axis order (card ``axis_order``) and
its output becomes logits per the card's ``output_kind`` (``log p`` for
probabilities), so explanations of imported networks see the same function
as their predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from CalibSegLib.explain.segmenter import Segmenter, unet_divisor
from CalibSegLib.inference.network_input import from_network_axes, to_network_axes
from CalibSegLib.inference.resample import model_grid, same_grid
from CalibSegLib.models.card import ModelCard
from CalibSegLib.models.normalization import torch_normalizer
from CalibSegLib.models.output_kind import to_logits


def model_segmenter(model: Any, affine: np.ndarray | None = None,
                    shape: tuple[int, int, int] | None = None, overlap: float | None = None
                    ) -> Segmenter:
    """A :class:`Segmenter` for a loaded model (``.card`` and ``.network``).

    Parameters
    ----------
    model : Model
        From :func:`CalibSegLib.models.load_model`.
    affine : numpy.ndarray, optional
        Voxel-to-RAS matrix of the images to explain, array of shape (4, 4). When their spacing or
        orientation differs from the model's, the segmenter resamples to the
        model grid (:func:`CalibSegLib.inference.resample.model_grid`) and back;
        ``shape`` (Z, Y, X) is then needed too, or the segmenter adapts to the
        first image it sees.
    overlap : float, optional
        Sliding-window overlap (the card's ``patch_size`` is the window); default the
        card's, as in :func:`CalibSegLib.inference.predict`.
    """
    card: ModelCard = model.card
    network = model.network
    divisor = int(card.divisor or unet_divisor(network))
    settings = card.sliding_window
    window = {"roi": tuple(reversed(card.patch_size)),
              "overlap": float(settings["overlap"] if overlap is None else overlap),
              "sw_batch_size": 4}
    segmenter = _ModelSegmenter(network, divisor=divisor, window=window,
                                normalize=torch_normalizer(card.preprocessing))
    segmenter.card = card
    segmenter.input_affine = None if affine is None else np.asarray(affine, np.float64)
    if shape is not None and affine is not None:
        segmenter.set_input_grid(tuple(shape))
    return segmenter


class _ModelSegmenter(Segmenter):
    """A :class:`Segmenter` that follows the card's conventions: its model grid for the
    input grid it is given, where preprocessing runs, the network's axis order and
    output kind."""

    card: ModelCard
    input_affine: np.ndarray | None = None
    _grid_shape: tuple[int, ...] | None = None

    def set_input_grid(self, shape: tuple[int, ...]) -> None:
        self._grid_shape = tuple(int(s) for s in shape)
        if self.input_affine is None:
            self.grid = None
            return
        card = self.card
        grid_shape, grid_affine = model_grid(shape, self.input_affine, card.spacing_mm,
                                             card.orientation, kind=card.model_grid)
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
        if self.card.preprocessing_grid == "model" and self.grid is not None:
            normalize, self.normalize = self.normalize, None
            try:
                x = super()._prepare(x)
            finally:
                self.normalize = normalize
            return normalize(x) if normalize is not None else x
        return super()._prepare(x)

    def _network_call(self, x: torch.Tensor) -> torch.Tensor:
        """The network on ``(B, 1, Z, Y, X)`` in its own axis order; logits back in ours."""
        order = self.card.axis_order
        out = self.network(to_network_axes(x, order))
        if isinstance(out, Mapping):
            out = next(iter(out.values()))
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return to_logits(from_network_axes(out, order), self.card.output_kind)
