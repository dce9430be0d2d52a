"""One differentiable callable from an image on its own grid to logits on that grid.

Every explanation and faithfulness routine talks to a :class:`Segmenter`: a
``torch.nn.Module`` mapping ``(B, 1, Z, Y, X)`` image batches on the *input*
grid to ``(B, C, Z, Y, X)`` logits on the same grid. It wraps the network with
the steps a model needs around it (intensity normalisation, padding to a size
the network accepts, resampling to the model's spacing and back) so that the
network's layers stay reachable by name for Grad-CAM (``segmenter.network.*``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from types import EllipsisType
from typing import cast

import numpy as np
import torch
import torch.nn.functional as nnf
from monai.inferers import sliding_window_inference
from torch import nn

from CalibSegLib.inference.resample import resample
from CalibSegLib.models.networks import MapsNetwork, SimilarityNetwork


class Segmenter(nn.Module):
    """Image on the input grid -> logits on the input grid, differentiably.

    Parameters
    ----------
    network : torch.nn.Module
        ``(B, 1, z, y, x)`` -> ``(B, C, z, y, x)``.
    divisor : int
        Pad each spatial size up to a multiple of this before the network (a
        U-Net with strides 2, 2 needs 4) and crop the logits back.
    normalize : callable, optional
        Applied to the image batch before the network (intensity normalisation).
    grid : tuple, optional
        ``(input_affine, model_shape, model_affine)``: the network works on another
        grid (the model's spacing and orientation) than the input. Images are
        resampled trilinearly onto it and logits back (the same resampling as
        :func:`CalibSegLib.inference.predict`). Only valid for inputs on the grid
        of ``input_affine`` with the shape the grid was made for.
    window : dict, optional
        ``{"roi": (z, y, x), "overlap": 0.25, "sw_batch_size": 4}``: run the network
        in Gaussian-blended sliding windows exactly as
        :func:`CalibSegLib.inference.predict` does, so explanations and
        faithfulness probe the function the user's prediction came from. Inside
        :meth:`whole_volume` (used by Grad-CAM, which needs one pass for its
        hooks) the network runs once on the padded volume instead.
    """

    def __init__(
        self,
        network: nn.Module,
        divisor: int = 1,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        grid: tuple[np.ndarray, tuple[int, ...], np.ndarray] | None = None,
        window: dict | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.divisor = max(1, int(divisor))
        self.normalize = normalize
        self.grid = grid
        self.window = dict(window) if window else None
        self._whole = False

    @contextlib.contextmanager
    def whole_volume(self) -> Iterator[None]:
        """Within this block the network runs once on the whole (padded) volume."""
        previous, self._whole = self._whole, True
        try:
            yield
        finally:
            self._whole = previous

    @property
    def sliding(self) -> bool:
        """Whether the next forward pass uses sliding windows."""
        return self.window is not None and not self._whole

    def _windowed(self, x: torch.Tensor, predictor: Callable) -> torch.Tensor:
        w = self.window
        assert w is not None, "sliding windows need a window"
        # MONAI types the result loosely (tensor, tuple or dict); a tensor predictor gives a tensor
        return cast(torch.Tensor, sliding_window_inference(
            x, roi_size=tuple(int(r) for r in w["roi"]),
            sw_batch_size=int(w.get("sw_batch_size", 4)), predictor=predictor,
            overlap=float(w.get("overlap", 0.25)), mode="gaussian", padding_mode="replicate"))

    def geometry(self, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(resampled_shape, padded_shape)`` the network sees for an input of ``input_shape``."""
        resampled = tuple(int(s) for s in (self.grid[1] if self.grid else input_shape))
        padded = tuple(int(math.ceil(s / self.divisor) * self.divisor) for s in resampled)
        return resampled, padded

    def to_input_grid(self, maps: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
        """Bring maps from the padded network grid to the input grid (trilinear).

        ``maps`` of shape (B, K, z, y, x) on the network's grid become a tensor of shape
        (B, K, Z, Y, X), ``(Z, Y, X)`` being ``input_shape``.
        """
        _, padded = self.geometry(input_shape)
        if tuple(maps.shape[2:]) != padded:
            maps = nnf.interpolate(maps, size=padded, mode="trilinear", align_corners=False)
        return self._restore(maps, tuple(input_shape))

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        assert self.grid is not None
        src, shape, dst = self.grid
        return resample(x, src, shape, dst)

    def _to_input(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        assert self.grid is not None
        src, _, dst = self.grid
        return resample(x, dst, shape, src)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[2:])
        if self.normalize is not None:
            x = self.normalize(x)
        resampled, padded = self.geometry(shape)
        if self.grid is not None:
            x = self._to_model(x)
        pad = [p - s for s, p in zip(resampled, padded)]
        if any(pad) and not self.sliding:
            x = nnf.pad(x, [0, pad[2], 0, pad[1], 0, pad[0]], mode="replicate")
        return x

    def _restore(self, out: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        resampled, _ = self.geometry(shape)
        crop: tuple[EllipsisType | slice, ...] = (..., *[slice(0, s) for s in resampled])
        out = out[crop]
        if self.grid is not None:
            out = self._to_input(out, shape)
        return out

    def _network_call(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a prepared ``(B, 1, z, y, x)`` batch: ``(B, C, z, y, x)`` logits."""
        return self.network(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, C, Z, Y, X) for an image batch of shape (B, 1, Z, Y, X)."""
        shape = tuple(x.shape[2:])
        prepared = self._prepare(x)
        if self.sliding:
            out = torch.as_tensor(self._windowed(prepared, self._network_call))
        else:
            out = self._network_call(prepared)
        return self._restore(out, shape)

    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's ``forward_maps`` (prototype head), every 3D map on the input grid.

        ``x`` is an image batch of shape (B, 1, Z, Y, X); each map comes back with shape
        (B, K, Z, Y, X) (``logits``: K = C classes, ``similarity``: K = P prototypes).
        Resampling is linear, so contributions ``w_cj * sim_j`` still sum to the logits.
        """
        shape = tuple(x.shape[2:])
        resampled, padded = self.geometry(shape)
        if self.sliding:
            network = self.network
            if not isinstance(network, SimilarityNetwork):
                raise TypeError(f"{type(network).__name__} has no prototype similarity head")
            sim = torch.as_tensor(self._windowed(self._prepare(x), network.similarity))
            weight = network.last_layer.weight
            weight = weight.reshape(weight.shape[0], weight.shape[1]).to(sim.dtype)
            logits = torch.einsum("cp,bp...->bc...", weight, sim)
            return {"logits": self._restore(logits, shape),
                    "similarity": self._restore(sim, shape)}
        if not isinstance(self.network, MapsNetwork):
            raise TypeError(f"{type(self.network).__name__} has no forward_maps")
        out = self.network.forward_maps(self._prepare(x))
        return {k: self._restore(v.float(), shape)
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim == 5
                and tuple(v.shape[2:]) == padded
                else v for k, v in out.items()}


def unet_divisor(network: nn.Module) -> int:
    """The size multiple a (MONAI) U-Net needs: the product of its strides; 1 if unknown."""
    for module in network.modules():
        strides = getattr(module, "strides", None)
        if strides is not None and hasattr(module, "channels"):
            return int(np.prod([int(np.max(s)) for s in strides]))
    return 1


def predict_logits(segmenter: nn.Module, image: np.ndarray, device: str | torch.device = "cpu"
                   ) -> torch.Tensor:
    """``(C, Z, Y, X)`` logits of one ``(Z, Y, X)`` image, without gradients."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=device)[None, None]
    with torch.no_grad():
        return segmenter(x)[0]
