"""Any explainable object as a :class:`~CalibSegLib.explain.segmenter.Segmenter`.

A segmenter passes through; a CalibSeg ``Model`` (card + network) gets the model
adapter (:mod:`CalibSegLib.explain.modeladapter`); a bare network gets a plain
segmenter with its U-Net size multiple.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from CalibSegLib.explain.modeladapter import model_segmenter
from CalibSegLib.explain.segmenter import Segmenter, unet_divisor


def as_segmenter(obj: nn.Module | Segmenter, divisor: int | None = None,
                 affine: np.ndarray | None = None) -> Segmenter:
    """A :class:`Segmenter` for a segmenter, a CalibSeg ``Model`` or a bare network.

    ``affine`` (the image's voxel-to-RAS matrix) lets a model resample images
    whose voxel size differs from its own; it is an array of shape (4, 4).
    """
    if isinstance(obj, Segmenter):
        return obj
    network = getattr(obj, "network", None)
    if isinstance(network, nn.Module) and hasattr(obj, "card"):
        return model_segmenter(obj, affine)
    if not isinstance(obj, nn.Module):
        raise TypeError(f"cannot explain a {type(obj).__name__}; pass a network or a Model")
    return Segmenter(obj, divisor=unet_divisor(obj) if divisor is None else divisor)
