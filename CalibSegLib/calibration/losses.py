"""Differentiable marginal L1 Average Calibration Error (mL1-ACE) losses.

Per image and class (one-vs-rest), the mean over non-empty confidence bins of
``|mean probability - observed frequency|``; hard binning (gradients through the
bin means) or soft binning (each probability shares its weight between the two
nearest bin centres, gradients through the weights too). Vectorised over images
and classes with ``index_add`` into ``B·C·n_bins`` bins: memory O(N·C), never
O(N·C·n_bins).
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from CalibSegLib.calibration.binning import EPS32, check_n_bins
from CalibSegLib.calibration.modes import Binning, LossReduction

#: Soft bins whose total weight is below this count as empty.
SOFT_EMPTY_WEIGHT = 0.01


def _flatten(probs: torch.Tensor, onehot: torch.Tensor):
    if probs.shape != onehot.shape or probs.ndim < 3:
        raise ValueError(
            f"Calibration loss expects probabilities and one-hot targets of equal shape "
            f"(B, C, ...); got {tuple(probs.shape)} and {tuple(onehot.shape)}.")
    b, c = probs.shape[:2]
    return probs.reshape(b, c, -1), onehot.reshape(b, c, -1).to(probs.dtype)


def _bin_offsets(b: int, c: int, n_bins: int, device) -> torch.Tensor:
    return (torch.arange(b * c, device=device) * n_bins).view(b, c, 1)


def _ace_from_sums(weight, sum_p, sum_y, filled, onehot, ignore_empty_classes):
    mean_p = sum_p / weight.clamp(min=torch.finfo(weight.dtype).tiny)
    mean_y = sum_y / weight.clamp(min=torch.finfo(weight.dtype).tiny)
    gap = torch.where(filled, (mean_p - mean_y).abs(), torch.zeros_like(mean_p))
    ace = gap.sum(-1) / filled.sum(-1).clamp(min=1)
    if ignore_empty_classes:
        ace = ace * (onehot.sum(-1) > 0).to(ace.dtype)
    return ace


def hard_l1_ace(probs: torch.Tensor, onehot: torch.Tensor, n_bins: int = 20,
                ignore_empty_classes: bool = True) -> torch.Tensor:
    """Hard-binned L1 ACE per image and class, shape ``(B, C)``.

    Bins as in :mod:`CalibSegLib.calibration.binning`. With
    ``ignore_empty_classes`` a class absent from an image's target contributes 0
    (it stays in any later mean over classes, as in the mL1-ACE paper).
    """
    n_bins = check_n_bins(n_bins)
    p, y = _flatten(probs, onehot)
    b, c, _ = p.shape
    edges = torch.linspace(0.0, 1.0 + EPS32, n_bins + 1, dtype=torch.float32, device=p.device)
    k = torch.bucketize(p.detach().float(), edges[1:], right=False).clamp_(max=n_bins - 1)
    flat = (k + _bin_offsets(b, c, n_bins, p.device)).reshape(-1)
    size = b * c * n_bins
    count = torch.bincount(flat, minlength=size).to(p.dtype).view(b, c, n_bins)
    zeros = torch.zeros(size, dtype=p.dtype, device=p.device)
    sum_p = zeros.index_add(0, flat, p.reshape(-1)).view(b, c, n_bins)
    sum_y = zeros.index_add(0, flat, y.reshape(-1)).view(b, c, n_bins)
    return _ace_from_sums(count, sum_p, sum_y, count > 0, y, ignore_empty_classes)


def soft_l1_ace(probs: torch.Tensor, onehot: torch.Tensor, n_bins: int = 20,
                ignore_empty_classes: bool = True) -> torch.Tensor:
    """Soft-binned L1 ACE per image and class, shape ``(B, C)``.

    A probability ``p`` sits at ``u = p·n_bins − 0.5`` in units of bin centres
    ``(k + 0.5) / n_bins`` and shares its weight linearly between the two nearest
    centres; beyond the outer centres the edge bin takes all of it. Soft counts
    below :data:`SOFT_EMPTY_WEIGHT` count as empty bins.
    """
    n_bins = check_n_bins(n_bins)
    p, y = _flatten(probs, onehot)
    b, c, _ = p.shape
    offsets = _bin_offsets(b, c, n_bins, p.device)
    size = b * c * n_bins
    if n_bins == 1:
        left = torch.zeros_like(p, dtype=torch.long)
        w_right = torch.zeros_like(p)
    else:
        u = (p * n_bins - 0.5).clamp(0.0, n_bins - 1.0)
        left = u.detach().floor().clamp_(max=n_bins - 2).long()
        w_right = u - left.to(p.dtype)
    w_left = 1.0 - w_right
    i_left = (left + offsets).reshape(-1)
    i_right = (left + 1).clamp(max=n_bins - 1).add(offsets).reshape(-1)
    zeros = torch.zeros(size, dtype=p.dtype, device=p.device)

    def spread(values: torch.Tensor) -> torch.Tensor:
        return (zeros.index_add(0, i_left, (w_left * values).reshape(-1))
                .index_add(0, i_right, (w_right * values).reshape(-1)).view(b, c, n_bins))

    weight = spread(torch.ones_like(p))
    sum_p = spread(p)
    sum_y = spread(y)
    return _ace_from_sums(weight, sum_p, sum_y, weight >= SOFT_EMPTY_WEIGHT, y,
                          ignore_empty_classes)


class _CalibrationLoss(nn.Module):
    """Common MONAI-style handling of activation, one-hot, background and reduction."""

    _per_image_class = staticmethod(hard_l1_ace)
    class_weight: torch.Tensor | None  #: ``(C,)`` buffer, or None

    def __init__(self, n_bins: int = 20, include_background: bool = True,
                 to_onehot_y: bool = False, softmax: bool = False,
                 ignore_empty_classes: bool = True,
                 reduction: LossReduction | str = LossReduction.MEAN,
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.reduction = LossReduction.parse(reduction, "reduction")
        self.n_bins = check_n_bins(n_bins)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.softmax = softmax
        self.ignore_empty_classes = ignore_empty_classes
        self.register_buffer("class_weight", None if weight is None
                             else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        """``input`` (B, C, ...) logits (``softmax=True``) or probabilities; ``target``
        (B, 1, ...) labels (``to_onehot_y=True``) or one-hot (B, C, ...)."""
        n_classes = input.shape[1]
        probs = torch.softmax(input, dim=1) if self.softmax else input
        if self.to_onehot_y:
            if target.shape[1] != 1:
                raise ValueError("to_onehot_y=True expects targets of shape (B, 1, ...).")
            labels = target.long()
            if labels.min() < 0 or labels.max() >= n_classes:
                raise ValueError(
                    f"Target labels must lie in [0, {n_classes}); found {int(labels.min())}.."
                    f"{int(labels.max())}.")
            onehot = torch.zeros_like(probs).scatter_(1, labels, 1.0)
        else:
            onehot = target
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        values = self._per_image_class(probs, onehot, self.n_bins, self.ignore_empty_classes)
        if self.class_weight is not None:
            w = self.class_weight.to(values)
            if not self.include_background and w.numel() == n_classes:
                w = w[1:]
            values = values * w
        if self.reduction is LossReduction.MEAN:
            return values.mean()
        if self.reduction is LossReduction.SUM:
            return values.sum()
        return values


class HardL1ACELoss(_CalibrationLoss):
    """mL1-ACE with hard binning (keeps Dice; smaller calibration gain in the paper)."""

    _per_image_class = staticmethod(hard_l1_ace)


class SoftL1ACELoss(_CalibrationLoss):
    """mL1-ACE with soft binning (best calibration in the paper, possible Dice cost)."""

    _per_image_class = staticmethod(soft_l1_ace)


class DiceCEL1ACELoss(nn.Module):
    """``lambda_dice·Dice + lambda_ce·CE + lambda_ace·mL1-ACE`` on logits.

    The one Dice + CE + calibration objective (training uses it too). The mL1-ACE
    paper weights the three terms 1/3 each; MONAI's tutorial uses 1 : 1 : 0.3.
    ``ace`` picks ``"hard"`` or ``"soft"`` binning, or ``"none"`` for Dice + CE alone.
    Inputs as MONAI's ``DiceCELoss`` with ``softmax=True``: logits (B, C, ...) and
    labels (B, 1, ...) (``to_onehot_y=True``) or one-hot targets.
    """

    def __init__(self, ace: Binning | str = Binning.HARD, n_bins: int = 20,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, lambda_ace: float = 1.0,
                 include_background: bool = True, to_onehot_y: bool = True,
                 ignore_empty_classes: bool = True) -> None:
        super().__init__()
        self.binning = Binning.parse(ace, "ace")
        self.dice_ce = DiceCELoss(include_background=include_background,
                                  to_onehot_y=to_onehot_y, softmax=True,
                                  lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        cls = {Binning.HARD: HardL1ACELoss, Binning.SOFT: SoftL1ACELoss}.get(self.binning)
        self.ace = None if cls is None else cls(
            n_bins=n_bins, include_background=include_background, to_onehot_y=to_onehot_y,
            softmax=True, ignore_empty_classes=ignore_empty_classes)
        self.lambda_ace = float(lambda_ace)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        """The loss, a tensor of shape (), for logits of shape (B, C, Z, Y, X).

        ``target`` holds labels of shape (B, 1, Z, Y, X) or one-hot targets of shape
        (B, C, Z, Y, X).
        """
        return self.combine(self.terms(input, target))

    def terms(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002
        """The terms separately, for logging: ``dice_ce`` and (unless ``ace="none"``) the
        unweighted ``ace``; :meth:`combine` gives the loss from them.

        Inputs as :meth:`forward`; each term is a tensor of shape ().
        """
        out = {"dice_ce": self.dice_ce(input, target)}
        if self.ace is not None:
            out["ace"] = self.ace(input, target)
        return out

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss ``dice_ce + lambda_ace · ace`` from :meth:`terms`, a tensor of shape ()."""
        total = terms["dice_ce"]
        if "ace" in terms:
            total = total + self.lambda_ace * terms["ace"]
        return total
