"""The training objective: Dice + CE, the mL1-ACE calibration loss, prototype terms."""

from __future__ import annotations

import torch
from torch import nn

from CalibSegLib.calibration.losses import DiceCEL1ACELoss
from CalibSegLib.training.config import TrainConfig


class SegmentationObjective(nn.Module):
    """The training loss on logits ``(B, C, Z, Y, X)`` and labels ``(B, 1, Z, Y, X)``:
    :class:`~CalibSegLib.calibration.DiceCEL1ACELoss` with the run's binning
    (``config.calibration_loss``), bins and weight λ (``config.calibration_weight``).

    :meth:`forward` returns the total and a dict of the detached terms for logging
    (``dicece`` and, with a calibration term, ``ace``).
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.loss = DiceCEL1ACELoss(ace=config.calibration_loss, n_bins=int(config.bins),
                                    lambda_ace=float(config.calibration_weight),
                                    include_background=True, to_onehot_y=True)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, terms)``: the loss, a tensor of shape (), and each term's value.

        ``logits`` has shape (B, C, Z, Y, X), ``labels`` shape (B, 1, Z, Y, X).
        """
        terms = self.loss.terms(logits, labels)
        logged = {"dicece": float(terms["dice_ce"].detach())}
        if "ace" in terms:
            logged["ace"] = float(terms["ace"].detach())
        return self.loss.combine(terms), logged


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
