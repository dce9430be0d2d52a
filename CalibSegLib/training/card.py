"""TEMPORARY development shim until CalibSegLib.models / calibration land."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn


class _StubProto(nn.Module):
    def __init__(self, config):
        super().__init__()
        from monai.networks.nets import UNet

        self.backbone = UNet(3, 1, config.feature_dim, channels=config.channels,
                             strides=config.strides, num_res_units=config.num_res_units)
        c = config.num_classes
        p = c * config.prototypes_per_class
        self.prototypes = nn.Parameter(torch.rand(p, config.feature_dim))
        self.register_buffer("prototype_class",
                             torch.arange(c).repeat_interleave(config.prototypes_per_class))
        self.last_layer = nn.Conv3d(p, c, 1, bias=False)

    def forward_maps(self, x):
        f = self.backbone(x)
        d = ((f[:, None] - self.prototypes[None, :, :, None, None, None]) ** 2).sum(2)
        sim = torch.log((d + 1) / (d + 1e-4))
        return {"logits": self.last_layer(sim), "similarity": sim, "features": f}

    def forward(self, x):
        return self.forward_maps(x)["logits"]


class _StubLinear(nn.Module):
    def __init__(self, config):
        super().__init__()
        from monai.networks.nets import UNet

        self.backbone = UNet(3, 1, config.num_classes, channels=config.channels,
                             strides=config.strides, num_res_units=config.num_res_units)

    def forward(self, x):
        return self.backbone(x)


def initial_card(config, name=None, command=None, data=None):
    return {"config": config.to_dict(), "command": command, "data": data}


def build(card):
    from CalibSegLib.training.config import TrainConfig

    config = TrainConfig.from_dict(card["config"])
    return _StubProto(config) if config.head == "prototype" else _StubLinear(config)


def normaliser(card):
    def norm(a):
        a = np.asarray(a, dtype=np.float32)
        return (a - a.mean()) / max(float(a.std()), 1e-6)
    return norm


def fit_validation_temperature(logits, labels):
    return 1.0


def validation_metrics(logits, cases, temperature, config):
    return {}


def final_card(card, config, temperature, catalogue, history, summary):
    return {**card, "temperature": temperature, "prototypes": catalogue, "summary": summary}


def save(output, card, network, history):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in network.state_dict().items()},
              os.path.join(output, "model.safetensors"))
    with open(os.path.join(output, "model.json"), "w") as fh:
        json.dump(card, fh, indent=1)
