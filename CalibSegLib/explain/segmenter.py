"""One differentiable callable from an image on its own grid to logits on that grid.

Every explanation and faithfulness routine talks to a :class:`Segmenter`: a
``torch.nn.Module`` mapping ``(B, 1, Z, Y, X)`` image batches on the *input*
grid to ``(B, C, Z, Y, X)`` logits on the same grid. It wraps the network with
the steps a model needs around it (intensity normalisation, padding to a size
the network accepts, resampling to the model's spacing and back) so that the
network's layers stay reachable by name for Grad-CAM (``segmenter.network.*``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn


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
    spacing_ratio : tuple of float, optional
        Input voxel size over the model's voxel size, per (Z, Y, X). When not 1,
        images are resampled trilinearly to the model's spacing and logits back.
    """

    def __init__(
        self,
        network: nn.Module,
        divisor: int = 1,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        spacing_ratio: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.divisor = max(1, int(divisor))
        self.normalize = normalize
        self.spacing_ratio_zyx = tuple(spacing_ratio) if spacing_ratio is not None else None

    def geometry(self, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(resampled_shape, padded_shape)`` the network sees for an input of ``input_shape``."""
        resampled = tuple(int(s) for s in input_shape)
        if self.spacing_ratio_zyx is not None:
            resampled = tuple(max(1, int(round(s * r)))
                              for s, r in zip(resampled, self.spacing_ratio_zyx))
        padded = tuple(int(math.ceil(s / self.divisor) * self.divisor) for s in resampled)
        return resampled, padded

    def to_input_grid(self, maps: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
        """Bring ``(B, K, …)`` maps from the padded network grid to the input grid (trilinear)."""
        resampled, padded = self.geometry(input_shape)
        if tuple(maps.shape[2:]) != padded:
            maps = nnf.interpolate(maps, size=padded, mode="trilinear", align_corners=False)
        maps = maps[(..., *[slice(0, s) for s in resampled])]
        if resampled != tuple(input_shape):
            maps = nnf.interpolate(maps, size=tuple(input_shape), mode="trilinear",
                                 align_corners=False)
        return maps

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[2:])
        if self.normalize is not None:
            x = self.normalize(x)
        resampled, padded = self.geometry(shape)
        if resampled != shape:
            x = nnf.interpolate(x, size=resampled, mode="trilinear", align_corners=False)
        pad = [p - s for s, p in zip(resampled, padded)]
        if any(pad):
            x = nnf.pad(x, [0, pad[2], 0, pad[1], 0, pad[0]], mode="replicate")
        return x

    def _restore(self, out: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        resampled, _ = self.geometry(shape)
        out = out[(..., *[slice(0, s) for s in resampled])]
        if resampled != shape:
            out = nnf.interpolate(out, size=shape, mode="trilinear", align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[2:])
        return self._restore(self.network(self._prepare(x)), shape)

    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's ``forward_maps`` (prototype head), every 3D map on the input grid.

        Resampling is linear, so contributions ``w_cj * sim_j`` still sum to the logits.
        """
        shape = tuple(x.shape[2:])
        _, padded = self.geometry(shape)
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


def as_segmenter(obj: nn.Module | Segmenter, divisor: int | None = None,
                 affine: np.ndarray | None = None) -> Segmenter:
    """A :class:`Segmenter` for a segmenter, a CalibSeg ``Model`` or a bare network.

    ``affine`` (the image's voxel-to-RAS matrix) lets a model resample images
    whose voxel size differs from its own.
    """
    if isinstance(obj, Segmenter):
        return obj
    network = getattr(obj, "network", None)
    if isinstance(network, nn.Module) and hasattr(obj, "card"):
        from CalibSegLib.explain.modeladapter import model_segmenter, spacing_from_affine

        return model_segmenter(obj, None if affine is None else spacing_from_affine(affine))
    if not isinstance(obj, nn.Module):
        raise TypeError(f"cannot explain a {type(obj).__name__}; pass a network or a Model")
    return Segmenter(obj, divisor=unet_divisor(obj) if divisor is None else divisor)


def predict_logits(segmenter: nn.Module, image: np.ndarray, device: str | torch.device = "cpu"
                   ) -> torch.Tensor:
    """``(C, Z, Y, X)`` logits of one ``(Z, Y, X)`` image, without gradients."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=device)[None, None]
    with torch.no_grad():
        return segmenter(x)[0]
