"""Segmentation networks: a MONAI 3D U-Net feature backbone with a linear or prototype head.

The backbone maps ``(B, 1, Z, Y, X)`` to a ``(B, D, Z, Y, X)`` feature map at
full resolution (a MONAI ``UNet``/``BasicUNet`` whose ``out_channels`` is the
feature size ``D``). Two heads turn features into class logits:

* :class:`LinearSegNet`: a 1×1×1 convolution ``D -> C``;
* :class:`PrototypeSegNet` (ProtoSeg-style): ``P = C·M`` learnable prototypes
  ``(P, D)``; per voxel the squared distance ``d_j`` to each prototype, the
  similarity ``s_j = log((d_j + 1) / (d_j + eps))`` and class logits
  ``logit_c = Σ_j w_cj s_j`` (a bias-free 1×1×1 convolution ``P -> C``).

Both return logits from ``forward`` (so MONAI inferers and losses work) and a
dict of maps from ``forward_maps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models.bundle import build_bundle_network
from CalibSegLib.models.card import ModelCard
from CalibSegLib.models.nnunet import build_nnunet_network

DEFAULT_EPSILON = 1e-4


@runtime_checkable
class MapsNetwork(Protocol):
    """A network that returns its maps beside the logits (both heads here, prototype models)."""

    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Maps of a ``(B, 1, Z, Y, X)`` batch, each of shape (B, K, Z, Y, X)."""
        ...


@runtime_checkable
class SimilarityNetwork(Protocol):
    """A prototype network whose logits are ``last_layer`` applied to its similarities."""

    last_layer: nn.Conv3d

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """Similarity to each prototype: ``(B, 1, Z, Y, X)`` -> ``(B, P, Z, Y, X)``."""
        ...


def build_backbone(network: Mapping[str, Any], out_channels: int) -> nn.Module:
    """A MONAI 3D U-Net with one input channel and ``out_channels`` outputs.

    Parameters
    ----------
    network : mapping
        The card's ``network`` object (``architecture`` ``monai.UNet`` or
        ``monai.BasicUNet`` and its hyper-parameters).
    out_channels : int
        Feature size ``D`` (or class count for a bare U-Net).
    """
    arch = network.get("architecture")
    if arch == "monai.UNet":
        kwargs: dict[str, Any] = {
            "channels": tuple(int(c) for c in network["channels"]),
            "strides": tuple(int(s) for s in network["strides"]),
            "num_res_units": int(network.get("num_res_units", 1)),
            "norm": _norm(network.get("norm", "instance")),
            "dropout": float(network.get("dropout", 0.0)),
        }
        for key in ("kernel_size", "up_kernel_size"):
            if key in network:
                kwargs[key] = int(network[key])
        if "act" in network:
            kwargs["act"] = _norm(network["act"])
        return UNet(spatial_dims=3, in_channels=1, out_channels=int(out_channels), **kwargs)
    if arch == "monai.BasicUNet":
        kwargs = {"features": tuple(int(f) for f in network["features"]),
                  "dropout": float(network.get("dropout", 0.0))}
        for key in ("act", "norm"):
            if key in network:
                kwargs[key] = _norm(network[key])
        if "upsample" in network:
            kwargs["upsample"] = str(network["upsample"])
        return BasicUNet(spatial_dims=3, in_channels=1, out_channels=int(out_channels), **kwargs)
    raise CalibSegError(f"No built-in backbone for network architecture {arch!r}.")


def _norm(value: Any) -> Any:
    """JSON lists such as ``["instance", {"affine": true}]`` become MONAI's tuple form."""
    return tuple(value) if isinstance(value, list) else value


class LinearSegNet(nn.Module):
    """U-Net features followed by a 1×1×1 convolution to class logits.

    Parameters
    ----------
    backbone : nn.Module
        ``(B, 1, ...) -> (B, D, ...)``.
    feature_size : int
        ``D``.
    num_classes : int
        ``C``.
    """

    def __init__(self, backbone: nn.Module, feature_size: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv3d(int(feature_size), int(num_classes), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, C, Z, Y, X) for an image batch of shape (B, 1, Z, Y, X)."""
        return self.head(self.backbone(x))

    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` of shape (B, C, Z, Y, X) and ``features`` of shape (B, D, Z, Y, X)."""
        features = self.backbone(x)
        return {"logits": self.head(features), "features": features}


class PrototypeSegNet(nn.Module):
    """U-Net features scored against learned prototypes (ProtoSeg-style head).

    Parameters
    ----------
    backbone : nn.Module
        ``(B, 1, ...) -> (B, D, ...)``.
    feature_size : int
        ``D``.
    num_classes : int
        ``C``.
    prototypes_per_class : int
        ``M``; prototype ``j`` belongs to class ``j // M``.
    epsilon : float
        ``eps`` in the similarity ``log((d + 1) / (d + eps))``.

    Attributes
    ----------
    prototypes : nn.Parameter
        ``(P, D)`` prototype vectors.
    prototype_class : torch.Tensor
        ``(P,)`` buffer: class index of each prototype.
    last_layer : nn.Conv3d
        Bias-free ``P -> C`` 1×1×1 convolution; weight ``(C, P, 1, 1, 1)``
        initialised to +1 (own class) and -0.5 (other classes).
    """

    prototype_class: torch.Tensor  #: ``(P,)`` buffer

    def __init__(self, backbone: nn.Module, feature_size: int, num_classes: int,
                 prototypes_per_class: int, epsilon: float = DEFAULT_EPSILON) -> None:
        super().__init__()
        c, m, d = int(num_classes), int(prototypes_per_class), int(feature_size)
        p = c * m
        self.backbone = backbone
        self.epsilon = float(epsilon)
        self.prototypes = nn.Parameter(torch.rand(p, d))
        self.register_buffer("prototype_class", torch.arange(c).repeat_interleave(m))
        self.last_layer = nn.Conv3d(p, c, kernel_size=1, bias=False)
        own = (torch.arange(c)[:, None] == self.prototype_class[None, :]).float()
        with torch.no_grad():
            self.last_layer.weight.copy_((own - 0.5 * (1.0 - own)).reshape(c, p, 1, 1, 1))

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes."""
        return int(self.last_layer.weight.shape[0])

    @property
    def num_prototypes(self) -> int:
        """``P``, the number of prototypes."""
        return int(self.prototypes.shape[0])

    @property
    def class_weights(self) -> torch.Tensor:
        """The last layer's ``(C, P)`` weight ``w``."""
        w = self.last_layer.weight
        return w.reshape(w.shape[0], w.shape[1])

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance ``(B, P, ...)`` of each voxel's feature to each prototype.

        Computed as ``||f||² - 2 f·p + ||p||²`` (a 1×1×1 convolution), clamped at 0;
        the ``(B, P, D, ...)`` difference tensor is never formed. Always in float32 (also
        under float16 autocast), as the expansion cancels badly in half precision.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            protos = self.prototypes.float()
            spatial = features.dim() - 2
            kernel = protos.reshape(*protos.shape, *([1] * spatial))
            conv = {1: nn.functional.conv1d, 2: nn.functional.conv2d,
                    3: nn.functional.conv3d}[spatial]
            cross = conv(features, kernel)
            f2 = (features * features).sum(dim=1, keepdim=True)
            p2 = (protos * protos).sum(dim=1).reshape(1, -1, *([1] * spatial))
            return (f2 - 2.0 * cross + p2).clamp_min(0.0)

    def similarity_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``log((d + 1) / (d + eps))`` for every prototype: ``(B, P, ...)``."""
        d = self.distances(features)
        return torch.log((d + 1.0) / (d + self.epsilon))

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype similarity maps ``(B, P, ...)`` of an image batch."""
        return self.similarity_from_features(self.backbone(x))

    def logits_from_similarity(self, similarity: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C, ...)`` = ``w @ similarity`` per voxel."""
        w = self.class_weights.to(device=similarity.device, dtype=similarity.dtype)
        return torch.einsum("cp,bp...->bc...", w, similarity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, C, Z, Y, X) for an image batch of shape (B, 1, Z, Y, X)."""
        return self.last_layer(self.similarity(x))

    def contributions(self, similarity: torch.Tensor) -> torch.Tensor:
        """``contribution[b, c, j, ...] = w_cj · similarity[b, j, ...]`` (sums over j to logits).

        ``similarity`` of shape (B, P, ...) gives contributions of shape (B, C, P, ...).
        Memory is ``C·P`` times one map; use on crops or single classes.
        """
        w = self.class_weights.to(device=similarity.device, dtype=similarity.dtype)
        return w.reshape(1, *w.shape, *([1] * (similarity.dim() - 2))) * similarity[:, None]

    def own_class_mask(self) -> torch.Tensor:
        """``(C, P)`` boolean: prototype ``j`` belongs to class ``c``."""
        classes = torch.arange(self.num_classes, device=self.prototype_class.device)
        return classes[:, None] == self.prototype_class[None, :]

    def maps_from_similarity(self, similarity: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-voxel explanation maps from similarity maps ``(B, P, ...)``.

        Returns
        -------
        dict
            ``logits`` (B, C, ...), ``similarity`` (B, P, ...), ``nearest_prototype``
            (B, ...) int64 index of the most similar prototype, ``top_similarity``
            (B, ...) its similarity, ``winning_class`` (B, ...) argmax of the logits and
            ``winning_contribution`` (B, ...) = ``Σ_{j of class c*} w_{c*j} s_j``: the part
            of the winning class's logit given by its own prototypes.
        """
        logits = self.logits_from_similarity(similarity)
        top, nearest = similarity.max(dim=1)
        winner = logits.argmax(dim=1)
        own_w = self.class_weights * self.own_class_mask()
        own_w = own_w.to(device=similarity.device, dtype=similarity.dtype)
        own = torch.einsum("cp,bp...->bc...", own_w, similarity)
        winning = own.gather(1, winner.unsqueeze(1)).squeeze(1)
        return {"logits": logits, "similarity": similarity, "nearest_prototype": nearest,
                "top_similarity": top, "winning_class": winner, "winning_contribution": winning}

    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits and explanation maps in one pass; also ``features`` of shape (B, D, ...).

        See :meth:`maps_from_similarity` for the keys.
        """
        features = self.backbone(x)
        maps = self.maps_from_similarity(self.similarity_from_features(features))
        maps["features"] = features
        return maps


def build_network(card: Any) -> nn.Module:
    """The (untrained) network a card describes.

    Parameters
    ----------
    card : ModelCard or mapping
        A card whose ``network.architecture`` is ``monai.UNet``, ``monai.BasicUNet``
        or ``monai.bundle``. TorchScript models are not built but loaded
        (:func:`CalibSegLib.models.load_model`).

    Returns
    -------
    torch.nn.Module
        :class:`LinearSegNet` or :class:`PrototypeSegNet` for U-Nets; the bundle's
        network for ``monai.bundle``.
    """
    if not isinstance(card, ModelCard):
        card = ModelCard(card)
    network, head = card.network, card.head
    arch = network["architecture"]
    if arch == "torchscript":
        raise CalibSegError(
            "A TorchScript model is loaded from its folder, not built; use load_model(folder)."
        )
    if arch == "monai.bundle":
        return build_bundle_network(network["config"], network["network_key"])
    if arch == "nnunet":
        return build_nnunet_network(card)
    feature_size = int(head.get("feature_size", 16))
    backbone = build_backbone(network, feature_size)
    if head["type"] == "prototype":
        return PrototypeSegNet(backbone, feature_size, card.num_classes,
                               int(head["prototypes_per_class"]),
                               float(head.get("epsilon", DEFAULT_EPSILON)))
    return LinearSegNet(backbone, feature_size, card.num_classes)
