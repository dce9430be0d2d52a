"""Turning a segmentation network into a per-class score of one region.

Attribution methods built for classifiers (Grad-CAM, occlusion) need one number
per class. For segmentation that number is the class logit (or probability)
pooled over a region fixed in advance: the predicted segment of the target
class, or a region of interest the user drew.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from CalibSegLib.errors import CalibSegError


def region_mask(
    labels: np.ndarray,
    target_class: int,
    roi: np.ndarray | None = None,
    class_label: str | None = None,
) -> tuple[np.ndarray, str]:
    """The explained region and a one-line description of it.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` predicted labels of the unperturbed image.
    target_class : int
        Explained class.
    roi : numpy.ndarray, optional
        ``(Z, Y, X)`` region of interest (non-zero inside). When given, the
        region is the ROI itself; otherwise the predicted segment of the class.
    class_label : str, optional
        How the class is named in the description (default ``"class <index>"``).

    Returns
    -------
    mask : numpy.ndarray
        ``(Z, Y, X)`` bool.
    description : str
    """
    labels = np.asarray(labels)
    if roi is not None:
        roi = np.asarray(roi)
        if roi.shape != labels.shape:
            raise CalibSegError(
                f"The region of interest has shape {roi.shape} but the image has {labels.shape}; "
                "resample the ROI onto the image grid first."
            )
        mask = roi != 0
        what = "region of interest"
    else:
        mask = labels == target_class
        what = f"predicted segment of {class_label or f'class {target_class}'}"
    count = int(mask.sum())
    if count == 0:
        raise CalibSegError(
            f"The {what} is empty, so there is nothing to explain; choose another class "
            "(--class) or give a non-empty region of interest."
        )
    return mask, f"{what} ({count} voxels)"


class RegionScore(nn.Module):
    """``(B, C)`` class scores pooled over a fixed region of a segmentation output.

    Parameters
    ----------
    segmenter : torch.nn.Module
        Maps ``(B, 1, Z, Y, X)`` images to ``(B, C, Z, Y, X)`` logits on the same grid.
    region : numpy.ndarray or torch.Tensor
        ``(Z, Y, X)`` bool mask of the pooled voxels.
    reduction : {"mean", "sum"}
        Pooling over the region. ``"mean"`` keeps scores in logit range (Grad-CAM++
        exponentiates the score, which overflows for sums over large segments).
    activation : {"logits", "softmax"}
        Pool raw logits (gradient methods) or class probabilities (perturbation methods).
    """

    region: torch.Tensor  #: ``(Z, Y, X)`` bool buffer

    def __init__(
        self,
        segmenter: nn.Module,
        region: np.ndarray | torch.Tensor,
        reduction: str = "mean",
        activation: str = "logits",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
        if activation not in ("logits", "softmax"):
            raise ValueError(f"activation must be 'logits' or 'softmax', not {activation!r}")
        self.segmenter = segmenter
        self.reduction = reduction
        self.activation = activation
        self.register_buffer("region", torch.as_tensor(np.asarray(region), dtype=torch.bool),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of shape (B, C) for an image batch of shape (B, 1, Z, Y, X)."""
        out = self.segmenter(x)
        if self.activation == "softmax":
            out = torch.softmax(out, dim=1)
        flat = out.flatten(2)[:, :, self.region.flatten().to(out.device)]
        return flat.mean(2) if self.reduction == "mean" else flat.sum(2)
