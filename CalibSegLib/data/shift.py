"""Deterministic "shifted" variants of a sample case (held-out evaluation, augmentation).

A variant applies, with magnitudes drawn from ``seed``: a small affine
deformation (rotation, scaling, translation) shared by image and reference, a
smooth bias field, a gamma change, a simulated lower acquisition resolution and
Gaussian noise — all MONAI transforms. The variant stays on the case's grid
(same affine); labels are the argmax of the deformed soft reference when one
exists, otherwise the nearest-neighbour deformed labels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandGaussianNoised,
    RandSimulateLowResolutiond,
)

from CalibSegLib.data.case import SampleCase


def _transforms(keys_linear: list[str], key_labels: str | None, intensity_range: float):
    spatial_keys = keys_linear + ([key_labels] if key_labels else [])
    modes = ["bilinear"] * len(keys_linear) + (["nearest"] if key_labels else [])
    return Compose(
        [
            RandAffined(
                keys=spatial_keys,
                prob=1.0,
                rotate_range=(np.deg2rad(6),) * 3,
                scale_range=(0.06,) * 3,
                translate_range=(3, 3, 3),
                mode=modes,
                padding_mode="border",
            ),
            RandBiasFieldd(keys="image", prob=1.0, coeff_range=(0.05, 0.25)),
            RandAdjustContrastd(keys="image", prob=1.0, gamma=(0.75, 1.35)),
            RandSimulateLowResolutiond(keys="image", prob=1.0, zoom_range=(0.6, 1.0)),
            RandGaussianNoised(keys="image", prob=1.0, mean=0.0, std=0.03 * intensity_range),
        ]
    )


def shifted_case(case: SampleCase, seed: int) -> SampleCase:
    """Return the shifted variant of ``case`` determined by ``seed`` (the input is untouched)."""
    lo, hi = float(case.image.min()), float(case.image.max())
    span = max(hi - lo, 1e-6)
    data: dict[str, torch.Tensor] = {
        # intensities to [0, 1] so gamma/bias behave the same on MRI and CT
        "image": torch.from_numpy((case.image - lo) / span)[None].float(),
    }
    keys_linear = ["image"]
    key_labels = None
    if case.reference_probs is not None:
        data["probs"] = torch.from_numpy(case.reference_probs.copy()).float()
        keys_linear.append("probs")
    else:
        data["labels"] = torch.from_numpy(case.labels.astype(np.float32))[None]
        key_labels = "labels"
    transform = _transforms(keys_linear, key_labels, 1.0)
    transform.set_random_state(seed=int(seed) % (2**32))
    with torch.no_grad():
        out = transform(data)
    image = np.asarray(out["image"][0], dtype=np.float32) * span + lo
    probs = None
    if "probs" in out:
        probs = np.clip(np.asarray(out["probs"], dtype=np.float32), 0.0, None)
        probs /= np.maximum(probs.sum(axis=0, keepdims=True), 1e-12)
        labels = probs.argmax(axis=0).astype(np.uint8)
    else:
        labels = np.rint(np.asarray(out["labels"][0])).astype(np.uint8)
    return dataclasses.replace(
        case,
        name=f"{case.name}-shift{seed}",
        image=np.ascontiguousarray(image),
        labels=np.ascontiguousarray(labels),
        reference_probs=None if probs is None else np.ascontiguousarray(probs),
        description=f"{case.description}; shifted variant (seed {seed})",
        meta={**case.meta, "shift_seed": int(seed), "source_case": case.name},
    )
