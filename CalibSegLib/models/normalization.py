"""Intensity normalisation of a numpy image as a model card describes it.

The card's ``preprocessing`` transform list
(:mod:`CalibSegLib.models.preprocessing`) is the one definition; the format-1
``normalization`` objects are accepted here and converted to it:

``zscore``
    ``(x - mean) / std`` over all voxels, or over non-zero voxels with
    ``"nonzero": true`` (zero voxels then stay 0): ``NormalizeIntensity``.
``percentile``
    Map the ``lower``/``upper`` percentiles (default 0.5 / 99.5) to ``b_min`` /
    ``b_max`` (default 0 / 1), clipping when ``clip`` (default true):
    ``ScaleIntensityRangePercentiles``.
``range``
    Map ``a_min``/``a_max`` to ``b_min``/``b_max`` (default 0 / 1), clipping when
    ``clip`` (default true): ``ScaleIntensityRange``.
``none``
    Cast to float32 only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from CalibSegLib.models.preprocessing import legacy_to_transforms, preprocess, preprocessor


def normalize_intensity(image: np.ndarray,
                        spec: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
    """A new float32 array: ``image`` normalised per ``spec``.

    Parameters
    ----------
    image : numpy.ndarray
        A 3D image; not modified.
    spec : mapping or list
        A format-1 ``{"type": "zscore" | "percentile" | "range" | "none", ...}`` or a
        card's ``preprocessing`` list.

    Returns
    -------
    numpy.ndarray
        float32, same shape.
    """
    items = legacy_to_transforms(spec) if isinstance(spec, Mapping) else list(spec)
    return preprocess(image, items)


def normalizer(card: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``image -> normalised float32 image`` for a card, a transform list or a
    format-1 normalisation object."""
    if hasattr(card, "preprocessing"):
        items = card.preprocessing
    elif isinstance(card, Mapping):
        items = legacy_to_transforms(card)
    else:
        items = list(card)
    run = preprocessor(items)

    def apply(image: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))[None]
        return run(x)[0].numpy()

    return apply
