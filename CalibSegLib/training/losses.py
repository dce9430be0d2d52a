"""The training objective: Dice + CE, the mL1-ACE calibration loss, prototype terms."""

from __future__ import annotations

import torch
from torch import nn

from CalibSegLib.training.config import TrainConfig


def calibration_loss(kind: str, bins: int) -> nn.Module | None:
    """The project's mL1-ACE loss with ``"hard"`` or ``"soft"`` binning (``None`` for "none")."""
    if kind == "none":
        return None
    from CalibSegLib import calibration

    cls = calibration.HardL1ACELoss if kind == "hard" else calibration.SoftL1ACELoss
    return cls(n_bins=int(bins), include_background=True, to_onehot_y=True, softmax=True)


class SegmentationObjective(nn.Module):
    """``DiceCE + λ · mL1-ACE`` on logits ``(B, C, Z, Y, X)`` and labels ``(B, 1, Z, Y, X)``.

    :meth:`forward` returns the total and a dict of the detached terms for logging.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.dicece = DiceCELoss(include_background=True, to_onehot_y=True, softmax=True)
        self.ace = calibration_loss(config.calibration_loss, config.bins)
        self.weight = float(config.calibration_weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        main = self.dicece(logits, labels)
        terms = {"dicece": float(main.detach())}
        total = main
        if self.ace is not None:
            ace = self.ace(logits, labels)
            terms["ace"] = float(ace.detach())
            total = total + self.weight * ace
        return total, terms


def cluster_cost(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                 prototype_class: torch.Tensor, max_voxels: int = 4096,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared distance of voxel features to the nearest prototype of their class.

    Parameters
    ----------
    features
        ``(B, D, Z, Y, X)`` per-voxel features at the labels' resolution.
    labels
        ``(B, 1, Z, Y, X)`` integer classes.
    prototypes, prototype_class
        ``(P, D)`` prototype vectors and their ``(P,)`` classes.
    max_voxels
        Voxels drawn (with ``generator``) to keep the cost cheap.
    """
    dim = features.shape[1]
    flat = features.permute(0, 2, 3, 4, 1).reshape(-1, dim)
    classes = labels.reshape(-1)
    if flat.shape[0] > max_voxels:
        pick = torch.randperm(flat.shape[0], generator=generator)[:max_voxels]
        flat, classes = flat[pick], classes[pick]
    dist = torch.cdist(flat, prototypes.to(flat.dtype)) ** 2  # (N, P)
    own = classes[:, None] == prototype_class[None, :].to(classes.device)
    dist = torch.where(own, dist, torch.full_like(dist, float("inf")))
    nearest = dist.min(dim=1).values
    keep = torch.isfinite(nearest)
    return nearest[keep].mean() if keep.any() else flat.sum() * 0.0


def off_class_l1(last_weight: torch.Tensor, prototype_class: torch.Tensor) -> torch.Tensor:
    """L1 norm of last-layer weights ``(C, P)`` joining a prototype to another class."""
    classes = torch.arange(last_weight.shape[0], device=last_weight.device)
    off = classes[:, None] != prototype_class[None, :].to(last_weight.device)
    return last_weight.abs()[off].sum()
