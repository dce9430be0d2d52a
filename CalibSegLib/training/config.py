"""Hyper-parameters of one training run (network, budget, losses, stages)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from CalibSegLib.errors import CalibSegError

#: Binnings of the mL1-ACE term, as the loss takes them (``calibration.modes.Binning``'s
#: values, equal by test). Spelled out because the command line reads this module to check
#: options, and importing the calibration package loads torch.
CALIBRATION_LOSSES = ("none", "hard", "soft")
HEADS = ("linear", "prototype")


@dataclass
class TrainConfig:
    """Everything that determines a training run besides its data.

    Attributes
    ----------
    class_names
        Names of the output classes; class 0 is the background.
    head
        ``"linear"`` (1×1×1 convolution) or ``"prototype"`` (ProtoSeg-style head).
    channels, strides, num_res_units, feature_dim
        Backbone (MONAI UNet) size; ``feature_dim`` is the per-voxel feature length.
    prototypes_per_class
        Prototype head only: prototypes of each class.
    patch_size, batch_size
        ``(Z, Y, X)`` training patch and patches per step.
    steps, warmup_steps, last_layer_steps
        Joint-training steps; prototype head only: warm-up steps (backbone frozen) before and
        last-layer steps after the push.
    learning_rate, last_layer_learning_rate, weight_decay
        Adam settings (cosine decay over the joint stage).
    calibration_loss, calibration_weight, bins
        The mL1-ACE auxiliary loss: ``"none"``, ``"hard"`` or ``"soft"`` binning, its weight
        λ and number of bins.
    cluster_weight, last_layer_l1
        Prototype head only: cluster cost (voxel features near a prototype of their class)
        and L1 penalty on the last layer's connections to other classes' prototypes.
    seed
        Seed of everything random (weights, batches, augmentation).
    checkpoint_every, log_every
        Steps between checkpoints / log records.
    push_cases
        Number of training cases searched by the prototype push (0 = all).
    gallery_size
        Edge length (voxels) of the image crop saved per prototype.
    dice_checks
        Record the first validation case's Dice at stage ends and around the push.
    """

    class_names: list[str] = field(
        default_factory=lambda: ["background", "grey matter", "white matter"])
    head: str = "prototype"
    channels: tuple[int, ...] = (8, 16, 32)
    strides: tuple[int, ...] = (2, 2)
    num_res_units: int = 1
    feature_dim: int = 16
    prototypes_per_class: int = 4
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    steps: int = 300
    warmup_steps: int = 40
    last_layer_steps: int = 40
    learning_rate: float = 3e-3
    last_layer_learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    calibration_loss: str = "none"
    calibration_weight: float = 1.0
    bins: int = 20
    cluster_weight: float = 0.05
    last_layer_l1: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    push_cases: int = 8
    gallery_size: int = 24
    dice_checks: bool = True

    def validate(self) -> TrainConfig:
        """Raise :class:`CalibSegError` on inconsistent settings; return ``self``."""
        if self.head not in HEADS:
            raise CalibSegError(f"Unknown head {self.head!r}; choose {' or '.join(HEADS)}.")
        if self.calibration_loss not in CALIBRATION_LOSSES:
            raise CalibSegError(
                f"Unknown calibration loss {self.calibration_loss!r}; choose one of "
                f"{', '.join(CALIBRATION_LOSSES)}."
            )
        if len(self.class_names) < 2:
            raise CalibSegError("A segmentation model needs at least two classes.")
        divisor = 2 ** len(self.strides)
        if len(self.patch_size) != 3 or any(p % divisor for p in self.patch_size):
            raise CalibSegError(
                f"Patch size {tuple(self.patch_size)} must be three numbers divisible by "
                f"{divisor} (the network downsamples {len(self.strides)} times)."
            )
        if len(self.channels) != len(self.strides) + 1:
            raise CalibSegError("Give one more channel count than strides, e.g. 8,16,32 with 2,2.")
        for name in ("steps", "batch_size", "bins", "feature_dim", "prototypes_per_class"):
            if int(getattr(self, name)) < 1:
                raise CalibSegError(f"{name} must be at least 1.")
        for name in ("warmup_steps", "last_layer_steps", "checkpoint_every", "push_cases"):
            if int(getattr(self, name)) < 0:
                raise CalibSegError(f"{name} must not be negative.")
        if self.calibration_weight < 0:
            raise CalibSegError("The calibration weight must not be negative.")
        return self

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes (background included)."""
        return len(self.class_names)

    def stages(self) -> list[tuple[str, int]]:
        """``[(stage name, steps), ...]`` in order; the push sits between joint and last."""
        if self.head == "linear":
            return [("joint", int(self.steps))]
        return [("warmup", int(self.warmup_steps)), ("joint", int(self.steps)),
                ("last", int(self.last_layer_steps))]

    @property
    def total_steps(self) -> int:
        """Optimiser steps over all stages."""
        return sum(n for _, n in self.stages())

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Settings from :meth:`to_dict` output; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {  # values as read from JSON
            k: (tuple(v) if isinstance(v, list) and k != "class_names" else v)
            for k, v in d.items() if k in names}
        return cls(**kwargs)
