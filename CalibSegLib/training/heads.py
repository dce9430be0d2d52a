"""What training needs to know about a network's head (linear or prototype).

A prototype network (see :mod:`CalibSegLib.models`) exposes ``prototypes``
``(P, D)``, the ``prototype_class`` buffer ``(P,)``, a bias-free ``last_layer``
with weight ``(C, P)`` and ``forward_maps(x)`` returning the similarity maps
and per-voxel features. This module is the one place that relies on those
names; everything else in :mod:`CalibSegLib.training` goes through it.
"""

from __future__ import annotations

import torch
from torch import nn


def is_prototype(network: nn.Module) -> bool:
    """Whether ``network`` has a prototype head."""
    return isinstance(getattr(network, "prototypes", None), torch.Tensor)


def prototypes(network: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prototype vectors (P, D) parameter, prototype classes (P,))``."""
    return network.prototypes, network.prototype_class.long()


def last_layer_weight(network: nn.Module) -> torch.Tensor:
    """The ``(C, P)`` class-connection weight of the last layer."""
    weight = network.last_layer.weight
    return weight.reshape(weight.shape[0], weight.shape[1])


def last_layer_parameters(network: nn.Module) -> list[nn.Parameter]:
    return list(network.last_layer.parameters())


def head_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Prototype-head parameters except the last layer (prototypes, feature projection)."""
    backbone = {id(p) for p in backbone_parameters(network)}
    last = {id(p) for p in last_layer_parameters(network)}
    return [p for p in network.parameters() if id(p) not in backbone and id(p) not in last]


def backbone_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The feature extractor's parameters (frozen during the warm-up stage)."""
    return list(network.backbone.parameters())


def forward_features(network: nn.Module, x: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits (B, C, ...), features (B, D, ...) or None)`` in one forward pass."""
    if not hasattr(network, "forward_maps"):
        return network(x), None
    maps = network.forward_maps(x)
    return maps["logits"], maps["features"]
