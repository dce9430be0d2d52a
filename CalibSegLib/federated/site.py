"""What a site computes on its own cohort (no Flower here; the ClientApp wraps these).

Everything returned is bounded by classes x bins x cases (statistics), the
temperature grid (NLL sums) or the model size (fine-tuned weights): no voxel
arrays, no images, no file names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.losses import DiceCELoss

from CalibSegLib.calibration import HardL1ACELoss
from CalibSegLib.inference import predict
from CalibSegLib.models import normalizer
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report


def case_prediction(model, case):
    """:func:`CalibSegLib.inference.predict` of ``model`` on one case (CPU, no maps)."""

    return predict(case.image, case.affine, model, device="cpu", maps=False)


def image_id(site: str, index: int) -> str:
    """The id a case carries in shared statistics: site name and position, never a file name."""
    return f"{site}/{index:03d}"


def site_statistics(model, cases: Sequence, site: str, n_bins: int,
                    progress: ProgressCallback | None = None,
                    cancel: CancelCallback | None = None):
    """Reliability statistics of ``model`` (with its card temperature) on the cohort.

    Returns the merged :class:`~CalibSegLib.calibration.ReliabilityStats` with one
    image per case (ids from :func:`image_id`).
    """
    merged = None
    for n, case in enumerate(cases):
        check_cancel(cancel, f"evaluation at {site}")
        stats = case_prediction(model, case).reliability_stats(case.labels, n_bins=n_bins,
                                                               image_id=image_id(site, n))
        merged = stats if merged is None else merged.merge(stats)
        report(progress, (n + 1) / len(cases), f"{site}: case {n + 1}/{len(cases)}")
    return merged


def site_nll(model, cases: Sequence, temperatures: Sequence[float],
             cancel: CancelCallback | None = None) -> tuple[np.ndarray, int]:
    """NLL sums over the temperature grid, an array of shape (G,) float64 for the ``G``
    ``temperatures``, and the voxel count, summed over the cohort."""
    total = np.zeros(len(temperatures), dtype=np.float64)
    count = 0
    for case in cases:
        check_cancel(cancel, "temperature fitting")
        sums, n = case_prediction(model, case).nll_over_temperatures(
            case.labels, np.asarray(temperatures, dtype=np.float64))
        total += np.asarray(sums, dtype=np.float64)
        count += int(n)
    return total, count


def local_finetune(model, cases: Sequence, *, steps: int = 2, lr: float = 1e-3,
                   calibration_weight: float = 1.0, n_bins: int = 20, seed: int = 0,
                   cancel: CancelCallback | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A few optimiser steps of Dice + CE + mL1-ACE on the whole normalised cases (images
    and labels of shape (Z, Y, X)).

    Returns the updated state dict and ``{"loss": mean loss of the last step,
    "steps": steps, "voxels": voxels seen per step}``. Deterministic for a seed.
    """
    torch.manual_seed(int(seed))
    network = model.network
    network.train()
    dicece = DiceCELoss(include_background=True, to_onehot_y=True, softmax=True)
    ace = _ace_loss(n_bins)
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=lr)
    norm = normalizer(model.card)
    divisor = int(model.card.divisor)
    batch = []
    for case in cases:
        x = torch.from_numpy(np.ascontiguousarray(norm(case.image), dtype=np.float32))[None, None]
        y = torch.from_numpy(case.labels.astype(np.int64))[None, None]
        x, shape = _pad_to_multiple(x, divisor)
        batch.append((x, y, shape))
    loss_value = float("nan")
    for step in range(int(steps)):
        check_cancel(cancel, "local fine-tuning")
        optimiser.zero_grad()
        total = 0.0
        for x, y, shape in batch:
            logits = network(x)[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]
            loss = dicece(logits, y)
            if calibration_weight > 0:
                loss = loss + calibration_weight * ace(logits, y)
            (loss / len(batch)).backward()
            total += float(loss.detach()) / len(batch)
        optimiser.step()
        loss_value = total
        report(None, (step + 1) / steps)
    network.eval()
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    voxels = int(sum(int(np.prod(s)) for _, _, s in batch))
    return state, {"loss": loss_value, "steps": int(steps), "voxels": voxels}


def _pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad (B, C, Z, Y, X) at the far end (edge values) so each size divides by ``divisor``."""
    shape = tuple(int(n) for n in x.shape[2:])
    pads = [(-n) % max(int(divisor), 1) for n in shape]
    if any(pads):
        x = torch.nn.functional.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
    return x, shape


def _ace_loss(n_bins: int) -> HardL1ACELoss:
    """The project's hard-binned mL1-ACE loss."""
    return HardL1ACELoss(n_bins=int(n_bins), include_background=True, to_onehot_y=True,
                         softmax=True)
