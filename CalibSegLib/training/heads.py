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

from CalibSegLib.models.networks import MapsNetwork


def is_prototype(network: nn.Module) -> bool:
    """Whether ``network`` has a prototype head."""
    return isinstance(getattr(network, "prototypes", None), torch.Tensor)


def prototypes(network: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prototype vectors, prototype classes)``, tensors of shape (P, D) and ``(P,)``."""
    return network.get_parameter("prototypes"), network.get_buffer("prototype_class").long()


def last_layer_weight(network: nn.Module) -> torch.Tensor:
    """The class-connection weight of the last layer, tensor of shape (C, P)."""
    weight = network.get_parameter("last_layer.weight")
    return weight.reshape(weight.shape[0], weight.shape[1])


def last_layer_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The class-connection layer's parameters (trained alone in the last stage)."""
    return list(network.get_submodule("last_layer").parameters())


def head_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Prototype-head parameters except the last layer (prototypes, feature projection)."""
    backbone = {id(p) for p in backbone_parameters(network)}
    last = {id(p) for p in last_layer_parameters(network)}
    return [p for p in network.parameters() if id(p) not in backbone and id(p) not in last]


def backbone_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The feature extractor's parameters (frozen during the warm-up stage)."""
    return list(network.get_submodule("backbone").parameters())


def forward_features(network: nn.Module, x: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, features)`` in one forward pass.

    Logits are a tensor of shape (B, C, Z, Y, X); features of shape (B, D, Z, Y, X), or
    None for a network without ``forward_maps``.
    """
    if not isinstance(network, MapsNetwork):
        return network(x), None
    maps = network.forward_maps(x)
    return maps["logits"], maps["features"]
