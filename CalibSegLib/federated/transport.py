"""Models as Flower records: the card as JSON text, the weights as an ``ArrayRecord``.

Weights travel as plain tensors (Flower's ``Array``: dtype, shape, raw bytes);
nothing is pickled in either direction. A site rebuilds the network from the
card (:func:`CalibSegLib.models.build_network`) and checks every tensor name and
shape before loading, so a wrong or tampered model is refused with a reason.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import Model, ModelCard, build_network
from CalibSegLib.models.store import check_state_dict


def model_to_records(model) -> tuple[ConfigRecord, ArrayRecord]:
    """``(ConfigRecord {"card": json}, ArrayRecord state dict)`` for a loaded model."""
    if model.card.architecture == "torchscript":
        raise CalibSegError(
            f"Model {model.name}: TorchScript models cannot be sent to sites; use a CalibSeg "
            "model folder (model.json + model.safetensors)."
        )
    state = {k: v.detach().cpu() for k, v in model.network.state_dict().items()}
    return ConfigRecord({"card": model.card.to_json(indent=0)}), ArrayRecord(state)


def model_from_records(card_json: str, weights: ArrayRecord, device: str = "cpu"):
    """Rebuild a :class:`~CalibSegLib.models.Model` from :func:`model_to_records` output."""
    card = ModelCard.from_json(card_json, source="model card sent by the server")
    network = build_network(card)
    tensors = weights_to_state_dict(weights)
    check_state_dict(network, tensors, "weights sent by the server")
    network.load_state_dict(tensors, strict=True)
    network.to(torch.device(device)).eval()
    return Model(card=card, network=network, folder=None, _device=torch.device(device))


def weights_to_state_dict(weights: ArrayRecord) -> dict[str, torch.Tensor]:
    """A torch state dict from an ``ArrayRecord`` (NaN/inf weights are refused).

    Each tensor keeps its array's shape, e.g. a 3D convolution's weight of shape
    (C_out, C_in, kZ, kY, kX).
    """
    tensors = {}
    for key in weights:
        array = weights[key].numpy()
        if array.dtype.kind == "f" and not bool(torch.isfinite(torch.from_numpy(array)).all()):
            raise CalibSegError(f"Weight tensor {key} holds NaN or infinite values.")
        tensors[key] = torch.from_numpy(array.copy())
    return tensors
