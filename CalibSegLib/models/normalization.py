"""Intensity normalisation of an image as a model card describes it (numpy or torch).

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

:func:`normalizer` (numpy images) and :func:`torch_normalizer` (torch batches, used
by explanations so that gradients flow) run the same MONAI transforms from
:func:`transform_list`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from CalibSegLib.models.preprocessing import legacy_to_transforms, preprocessor

NormalizationSpec = Any
"""A card (anything with ``.preprocessing``), a card's ``preprocessing`` list, a format-1
``normalization`` mapping, or ``None`` (no transform)."""


def transform_list(spec: NormalizationSpec) -> Sequence[Mapping[str, Any]]:
    """The ``preprocessing`` transform list that ``spec`` stands for.

    Parameters
    ----------
    spec : card, list, mapping or None
        A card (its ``preprocessing``), a ``preprocessing`` list, a format-1
        ``{"type": "zscore" | "percentile" | "range" | "none", ...}`` object, or
        ``None`` (an empty list: cast to float32 only).
    """
    if hasattr(spec, "preprocessing"):
        spec = spec.preprocessing
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        return legacy_to_transforms(spec)
    return list(spec)


def normalize_intensity(image: np.ndarray,
                        spec: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
    """A new float32 array: ``image`` normalised per ``spec``.

    Parameters
    ----------
    image : numpy.ndarray
        A 3D image, array of shape (Z, Y, X); not modified.
    spec : mapping or list
        A format-1 ``{"type": "zscore" | "percentile" | "range" | "none", ...}`` or a
        card's ``preprocessing`` list.

    Returns
    -------
    numpy.ndarray
        float32, same shape.
    """
    return normalizer(spec)(image)


def normalizer(spec: NormalizationSpec) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``image (Z, Y, X) -> normalised float32 image``, for a card, a transform
    list or a format-1 normalisation object (see :func:`transform_list`).

    The function takes an array of shape (Z, Y, X) and returns a new one of that shape.
    """
    run = preprocessor(transform_list(spec))

    def apply(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))[None]
        return run(x)[0].numpy()

    return apply


def torch_normalizer(spec: NormalizationSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-image normalisation of a ``(B, 1, Z, Y, X)`` batch, as :func:`normalizer` does it.

    Each image runs through the same MONAI transforms; gradients flow through them
    and the batch keeps its dtype.
    """
    run = preprocessor(transform_list(spec))

    def apply(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([run(sample) for sample in x]).to(x.dtype)

    return apply
