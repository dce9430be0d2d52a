"""Deterministic patch batches from in-memory cases (MONAI transforms).

Batch ``n`` depends only on ``(seed, n)``: every step reseeds the transforms
from a generator keyed by both, so a resumed run draws exactly the batches an
uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    FgBgToIndicesd,
    MapTransform,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from CalibSegLib.data.pairs import TrainingCase


def patch_transform(patch_size: Sequence[int], pos: float = 2.0, neg: float = 1.0,
                    flip: bool = True, intensity: bool = True):
    """The augmentation + patch-sampling pipeline on ``{"image", "label"}`` channel-first dicts.

    Foreground-centred crops (``pos : neg`` odds against background-centred ones), a
    left-right flip and small intensity scale/shift changes.
    """
    keys = ["image", "label"]
    steps: list[MapTransform] = [
        SpatialPadd(keys=keys, spatial_size=tuple(patch_size), mode="constant"),
        RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=tuple(patch_size), pos=pos, neg=neg,
            num_samples=1, fg_indices_key="fg", bg_indices_key="bg", allow_smaller=True,
        ),
    ]
    if flip:
        steps.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=2))
    if intensity:
        steps += [RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                  RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5)]
    return Compose(steps)


class PatchSampler:
    """Draw batches of ``(image (B,1,*patch), labels (B,1,*patch))`` patches.

    Parameters
    ----------
    cases
        Training cases (kept in memory).
    normalise
        Maps a raw ``(Z, Y, X)`` image to the network's input intensities.
    patch_size, batch_size, seed
        Patch ``(Z, Y, X)`` size, patches per batch, base seed.
    """

    def __init__(self, cases: Sequence[TrainingCase], normalise: Callable[[np.ndarray], np.ndarray],
                 patch_size: Sequence[int], batch_size: int, seed: int,
                 flip: bool = True, intensity: bool = True) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.transform = patch_transform(self.patch_size, flip=flip, intensity=intensity)
        pad = SpatialPadd(keys=["image", "label"], spatial_size=self.patch_size, mode="constant")
        indices = FgBgToIndicesd(keys="label", fg_postfix="fg", bg_postfix="bg")
        self.items = []
        for case in cases:
            tensors: dict[Hashable, torch.Tensor] = {
                "image": torch.from_numpy(normalise(case.image).astype(np.float32))[None],
                "label": torch.from_numpy(case.labels.astype(np.int64))[None],
            }
            item = indices(pad(tensors))
            item["fg"], item["bg"] = item.pop("labelfg"), item.pop("labelbg")
            self.items.append(item)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of global step ``step`` (same ``(seed, step)``, same batch)."""
        rng = np.random.default_rng([self.seed, int(step)])
        images, labels = [], []
        for index in rng.integers(len(self.items), size=self.batch_size):
            self.transform.set_random_state(seed=int(rng.integers(2**31 - 1)))
            out = self.transform(dict(self.items[int(index)]))
            out = out[0] if isinstance(out, list) else out
            images.append(torch.as_tensor(out["image"]).float())
            labels.append(torch.as_tensor(out["label"]).long())
        return torch.stack(images).as_subclass(torch.Tensor), torch.stack(labels).as_subclass(
            torch.Tensor)

    @property
    def voxels_per_batch(self) -> int:
        """Voxels in one batch of patches."""
        return self.batch_size * int(np.prod(self.patch_size))
