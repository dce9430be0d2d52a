"""The :class:`Prediction` result and temperature rescaling without re-inference.

Memory per voxel for ``C`` classes (and ``P`` prototypes for prototype models):
``logits`` 4·C bytes, ``probs`` 4·C (float32), ``confidence`` 4, ``entropy`` 4,
``labels`` 1 (2 beyond 255 classes); prototype models add ``similarity`` 4·P,
``top_similarity`` 4, ``nearest_prototype`` 2, ``prototype_contribution`` 4.
A 1 mm brain (8.5 M voxels) with 3 classes and 9 prototypes takes about
8.5 M × (12 + 12 + 9 + 36 + 10) B ≈ 670 MB.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError


def _readonly(array: np.ndarray | None) -> np.ndarray | None:
    if array is not None:
        array.flags.writeable = False
    return array


def probability_maps(logits: torch.Tensor, temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(probs, confidence, entropy)`` of ``(C, ...)`` logits at ``temperature``.

    ``probs = softmax(logits / T)`` over the first axis, ``confidence`` its maximum,
    ``entropy`` the Shannon entropy divided by ``log C`` (so in [0, 1]). On the CPU a
    fused one-pass kernel (:mod:`CalibSegLib.inference.softmax_kernel`); on other
    devices :func:`probability_maps_torch`.
    """
    if logits.device.type == "cpu" and logits.is_floating_point():
        from CalibSegLib.inference.softmax_kernel import probability_maps_cpu

        array = logits.detach().float().numpy()
        probs, confidence, entropy = probability_maps_cpu(array, temperature)
        return torch.from_numpy(probs), torch.from_numpy(confidence), torch.from_numpy(entropy)
    return probability_maps_torch(logits, temperature)


def probability_maps_torch(logits: torch.Tensor, temperature: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`probability_maps` in torch operations, on the logits' device (CUDA)."""
    # One softmax pass plus cheap reductions: with
    # s = logits / T - max_c(logits / T), log p_c = s_c - log(sum exp s) and
    # log(sum exp s) = -log(max p), so the entropy is -log(max p) - sum_c p_c s_c.
    # (amax, not max: max with indices is several times slower over dim 0.)
    logits = logits.detach().float()
    shifted = torch.sub(logits, logits.amax(dim=0, keepdim=True)).mul_(1.0 / float(temperature))
    probs = torch.softmax(shifted, dim=0)
    confidence = probs.amax(dim=0)
    entropy = torch.einsum("c...,c...->...", probs, shifted).neg_().sub_(torch.log(confidence))
    num_classes = logits.shape[0]
    entropy = (entropy / math.log(num_classes)).clamp_(0.0, 1.0) if num_classes > 1 else (
        torch.zeros_like(entropy))
    return probs, confidence, entropy


def label_dtype(num_classes: int) -> np.dtype:
    """``uint8`` up to 256 classes, else ``uint16``."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


@dataclass(frozen=True, eq=False)
class Prediction:
    """Everything one model says about one volume, on the input grid.

    Arrays are read-only: :func:`apply_temperature` shares ``logits``, ``labels``
    and the prototype maps with the prediction it starts from.

    Attributes
    ----------
    logits : numpy.ndarray
        ``(C, Z, Y, X)`` float32 raw class logits (before temperature); kept so a
        new temperature needs no re-inference.
    probs : numpy.ndarray
        ``(C, Z, Y, X)`` float32 ``softmax(logits / temperature)``.
    labels : numpy.ndarray
        ``(Z, Y, X)`` uint8 (uint16 beyond 256 classes): argmax of the logits.
    confidence : numpy.ndarray
        ``(Z, Y, X)`` float32 maximum probability.
    entropy : numpy.ndarray
        ``(Z, Y, X)`` float32 entropy of ``probs`` divided by ``log C`` (in [0, 1]).
    affine : numpy.ndarray
        4×4 IJK-to-RAS of the input grid.
    class_names, class_colors : tuple
        From the model card.
    temperature : float
        Temperature ``probs`` were computed at.
    model_name, model_version : str
    similarity : numpy.ndarray or None
        Prototype models: ``(P, Z, Y, X)`` float32 similarity
        ``log((d + 1) / (d + eps))`` to each prototype (``logits = W @ similarity``).
    top_similarity : numpy.ndarray or None
        ``(Z, Y, X)`` float32 similarity to the nearest prototype.
    nearest_prototype : numpy.ndarray or None
        ``(Z, Y, X)`` int16 index of the most similar prototype.
    prototype_contribution : numpy.ndarray or None
        ``(Z, Y, X)`` float32 ``Σ_{j of class c*} w_{c*j} s_j``: the part of the
        winning class's logit given by its own prototypes (logit units, unscaled by T).
    prototype_class : numpy.ndarray or None
        ``(P,)`` class index of each prototype.
    prototype_weights : numpy.ndarray or None
        ``(C, P)`` last-layer weight ``W``.
    info : dict
        How it was computed (device, sw_batch_size, retries, resampled grid ...).
    """

    logits: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    affine: np.ndarray
    class_names: tuple[str, ...]
    temperature: float
    model_name: str = ""
    model_version: str = ""
    class_colors: tuple[tuple[float, float, float], ...] = ()
    similarity: np.ndarray | None = None
    top_similarity: np.ndarray | None = None
    nearest_prototype: np.ndarray | None = None
    prototype_contribution: np.ndarray | None = None
    prototype_class: np.ndarray | None = None
    prototype_weights: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                _readonly(value)

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial ``(Z, Y, X)`` shape."""
        return tuple(int(s) for s in self.logits.shape[1:])

    @property
    def is_prototype(self) -> bool:
        return self.similarity is not None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(X, Y, Z)`` in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(getattr(self, f.name).nbytes for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), np.ndarray))

    def class_contributions(self, class_index: int) -> np.ndarray:
        """``(P, Z, Y, X)`` float32 ``w[c, j] · similarity[j]``; sums over ``j`` to ``logits[c]``.

        Computed on demand (``P`` maps of memory); prototype models only.
        """
        if self.similarity is None or self.prototype_weights is None:
            raise CalibSegError("Prototype contributions need a prototype model's prediction.")
        if not 0 <= int(class_index) < self.num_classes:
            raise CalibSegError(
                f"Class index {class_index} out of range; the model has {self.num_classes}."
            )
        w = self.prototype_weights[int(class_index)].astype(np.float32)
        return w[:, None, None, None] * self.similarity

    def contributions_at(self, voxel: tuple[int, int, int]) -> np.ndarray:
        """``(C, P)`` contributions ``w[c, j] · similarity[j]`` at voxel ``(z, y, x)``."""
        if self.similarity is None or self.prototype_weights is None:
            raise CalibSegError("Prototype contributions need a prototype model's prediction.")
        s = self.similarity[(slice(None), *tuple(int(v) for v in voxel))]
        return self.prototype_weights.astype(np.float32) * s[None, :]


def apply_temperature(prediction: Prediction, temperature: float) -> Prediction:
    """A new :class:`Prediction` with ``probs``/``confidence``/``entropy`` at ``temperature``.

    Recomputed from the stored logits (``softmax(logits / T)``), no re-inference.
    ``prediction`` is not changed; labels and prototype maps are shared (read-only).
    Compact predictions (:func:`~CalibSegLib.inference.compact.compact_prediction`)
    stay compact.

    Raises
    ------
    CalibSegError
        When ``temperature`` is not a positive finite number.
    """
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise CalibSegError(f"Temperature must be a positive number, got {temperature!r}.")
    from CalibSegLib.inference.compact import is_compact
    from CalibSegLib.inference.softmax_kernel import probability_maps_cpu

    probs, confidence, entropy = probability_maps_cpu(np.asarray(prediction.logits), t,
                                                      fixed_point=is_compact(prediction))
    return dataclasses.replace(
        prediction, probs=probs, confidence=confidence, entropy=entropy,
        temperature=t, info=dict(prediction.info),
    )
