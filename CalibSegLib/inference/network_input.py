"""The network's view of a volume: its input on the model grid, its axis order and window,
and a check of what it returns. Shared by the full and compact predict paths
(:mod:`CalibSegLib.inference.predict`, :mod:`CalibSegLib.inference.predict_compact`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference.resample import model_grid, resample, same_grid
from CalibSegLib.models.preprocessing import preprocessor


def to_network_axes(x: torch.Tensor, axis_order: str) -> torch.Tensor:
    """``(B, C, Z, Y, X)`` -> the network's order: unchanged for ``ZYX``, ``(B, C, X, Y, Z)``
    for ``XYZ`` (a view; the same permutation maps back, see :func:`from_network_axes`)."""
    if axis_order == "ZYX":
        return x
    if axis_order == "XYZ":
        return x.permute(0, 1, 4, 3, 2)
    # the card was validated when it was read: another value is a caller's mistake
    raise ValueError(f"Unknown axis order {axis_order!r}; a validated card has ZYX or XYZ.")


def from_network_axes(x: torch.Tensor, axis_order: str) -> torch.Tensor:
    """The network's ``(B, C, ...)`` output back in CalibSeg's ``(B, C, Z, Y, X)`` order."""
    return to_network_axes(x, axis_order)


def window_in_network_axes(card: Any) -> tuple[int, int, int]:
    """The card's ``patch_size`` (given as X, Y, Z) in the order of the network's axes."""
    x, y, z = card.patch_size
    return (x, y, z) if card.axis_order == "XYZ" else (z, y, x)


def window_options(window: dict[str, Any], sw_batch_size: int) -> dict[str, Any]:
    """Keyword arguments of the sliding window (batch, overlap, blending, padding) from the
    card's ``sliding_window`` settings."""
    return dict(sw_batch_size=sw_batch_size, overlap=float(window["overlap"]),
                mode=str(window["mode"]), sigma_scale=float(window["sigma_scale"]),
                padding_mode=str(window["padding_mode"]), cval=float(window["cval"]))


class CheckedNetwork:
    """Calls the network on a window batch and checks the shape of what it returns."""

    def __init__(self, network: Any, channels: int, what: str) -> None:
        self.network = network
        self.channels = int(channels)
        self.what = what

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.network(batch)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not torch.is_tensor(out) or out.dim() != batch.dim():
            raise CalibSegError(
                f"The network returned {type(out).__name__} "
                f"{tuple(out.shape) if torch.is_tensor(out) else ''} for a window of shape "
                f"{tuple(batch.shape)}; it must return (B, C, *window).")
        if tuple(out.shape[2:]) != tuple(batch.shape[2:]):
            raise CalibSegError(
                f"The network gives output of spatial size {tuple(out.shape[2:])} for a window "
                f"of {tuple(batch.shape[2:])}; CalibSeg needs one value per input voxel. Check "
                "the card's patch_size and axis_order.")
        if out.shape[1] != self.channels:
            raise CalibSegError(
                f"The network gives {out.shape[1]} output channels but the card lists "
                f"{self.channels} {self.what}; fix the card's classes.")
        return out


def model_input(array: np.ndarray, matrix: np.ndarray, card: Any, dev: torch.device
                ) -> tuple[torch.Tensor, tuple[int, int, int], np.ndarray, bool]:
    """The network's input ``(1, 1, Z, Y, X)`` float32 on the model grid, on ``dev``.

    Applies the card's preprocessing (on the grid ``preprocessing_grid`` names) and
    the resampling to the model grid (``spacing_mm``, ``orientation``, ``model_grid``).

    Returns
    -------
    (x, grid_shape, grid_affine, resampled)
    """
    grid_shape, grid_affine = model_grid(array.shape, matrix, card.spacing_mm, card.orientation,
                                         kind=card.model_grid)
    resampled = not same_grid(array.shape, matrix, grid_shape, grid_affine)
    prepare = preprocessor(card.preprocessing)
    x = torch.from_numpy(np.asarray(array))[None]
    if card.preprocessing_grid == "input" or not resampled:
        x = prepare(x)
    x = x[None].to(device=dev, dtype=torch.float32)
    if resampled:
        x = resample(x, matrix, grid_shape, grid_affine)
        if card.preprocessing_grid == "model":
            x = prepare(x[0])[None]
    return x, grid_shape, grid_affine, resampled
