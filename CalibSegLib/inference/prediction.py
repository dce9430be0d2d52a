"""The :class:`Prediction` result and temperature rescaling without re-inference.

Memory per voxel for ``C`` classes (and ``P`` prototypes for prototype models):
``logits`` 4·C bytes, ``probs`` 4·C (float32), ``confidence`` 4, ``entropy`` 4,
``labels`` 1 (2 beyond 255 classes); prototype models add ``similarity`` 4·P,
``top_similarity`` 4, ``nearest_prototype`` 2, ``prototype_contribution`` 4.
A 1 mm brain (8.5 M voxels) with 3 classes and 9 prototypes takes about
8.5 M × (12 + 12 + 9 + 36 + 10) B ≈ 670 MB.

The compact form keeps ``scores`` (a :class:`~CalibSegLib.inference.topk.TopKPrediction`,
at most 16 bytes per voxel for any class count) instead of ``logits`` and ``probs``;
``labels`` is then a view of the top-k indices, so a 25-class prediction takes
16 + 8 = 24 bytes per voxel (a 512 × 512 × 300 CT: 1.9 GB instead of 16 GB).
Code that reads class scores uses the members valid in both forms
(:meth:`Prediction.class_probability`, :meth:`Prediction.probabilities`,
:meth:`Prediction.maps`, :meth:`Prediction.reliability_stats`,
:meth:`Prediction.nll_over_temperatures`), never ``probs``/``logits`` directly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from CalibSegLib.calibration.fixed_point import from_fixed_point
from CalibSegLib.calibration.stats import ReliabilityStats
from CalibSegLib.calibration.temperature import nll_over_temperature_grid
from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import compiled
from CalibSegLib.inference.topk import TopKPrediction, check_temperature
from CalibSegLib.inference.topk_stats import nll_over_temperatures_topk, stats_from_topk
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report


def _readonly(array: np.ndarray | None) -> np.ndarray | None:
    if array is not None:
        array.flags.writeable = False
    return array


def probability_maps(logits: torch.Tensor, temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(probs, confidence, entropy)`` of ``(C, ...)`` logits at ``temperature``.

    ``probs = softmax(logits / T)`` over the first axis, ``confidence`` its maximum,
    ``entropy`` the Shannon entropy divided by ``log C`` (so in [0, 1]). On the CPU a
    fused one-pass kernel (:mod:`CalibSegLib.inference.softmax_kernel`) when numba
    runs; on other devices (and without numba) :func:`probability_maps_torch`.
    """
    if logits.device.type == "cpu" and logits.is_floating_point() and compiled.available():
        array = logits.detach().float().numpy()
        probs, confidence, entropy = compiled.softmax_kernel.probability_maps_cpu(
            array, temperature)
        return torch.from_numpy(probs), torch.from_numpy(confidence), torch.from_numpy(entropy)
    return probability_maps_torch(logits, temperature)


def probability_maps_array(logits: np.ndarray, temperature: float
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs, confidence, entropy)`` float32 arrays of ``(C, ...)`` logits (any float
    dtype, memory-mapped too): the compiled kernel when numba runs, else torch on the CPU."""
    if compiled.available():
        return compiled.softmax_kernel.probability_maps_cpu(logits, temperature)
    array = np.asarray(logits)
    tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True)
                              if array.dtype != np.float32 or not array.flags.writeable
                              else array)
    probs, confidence, entropy = probability_maps_torch(tensor, temperature)
    return probs.numpy(), confidence.numpy(), entropy.numpy()


def probability_maps_torch(logits: torch.Tensor, temperature: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`probability_maps` in torch operations, on the logits' device (CUDA, or the
    CPU without numba): logits of shape (C, ...) give probabilities of shape (C, ...) and
    confidence and entropy of shape (...)."""
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


#: Regions are indices of the spatial axes: a tuple of slices and integers
#: (``(5,)``: plane z = 5; ``(slice(None), 7)``: row y = 7 of every plane), or ``None``.
Region = Any


def _spatial_key(region: Region) -> tuple:
    if region is None:
        return ()
    return region if isinstance(region, tuple) else (region,)


@dataclass(frozen=True, eq=False)
class Prediction:
    """Everything one model says about one volume, on the input grid.

    Two forms hold the class scores. **Full**: ``logits`` and ``probs`` (C float32
    maps each). **Compact**: ``scores``, a
    :class:`~CalibSegLib.inference.topk.TopKPrediction` (top-k classes, float16 gaps
    and a tail summary, at most 16 bytes per voxel; error bounds in
    ``docs/bench/compact.md``), with ``logits`` and ``probs`` ``None``. ``labels``,
    ``confidence`` and ``entropy`` are full-volume maps at ``temperature`` in both.

    Arrays are read-only: :func:`apply_temperature` shares ``logits``, ``scores``,
    ``labels`` and the prototype maps with the prediction it starts from.

    Attributes
    ----------
    logits : numpy.ndarray or None
        ``(C, Z, Y, X)`` float32 raw class logits (before temperature); kept so a
        new temperature needs no re-inference. ``None`` in the compact form.
    probs : numpy.ndarray or None
        ``(C, Z, Y, X)`` float32 ``softmax(logits / temperature)``. ``None`` in the
        compact form.
    labels : numpy.ndarray
        ``(Z, Y, X)`` uint8 (uint16 beyond 256 classes): argmax of the logits.
    confidence : numpy.ndarray
        ``(Z, Y, X)`` float32 maximum probability.
    entropy : numpy.ndarray
        ``(Z, Y, X)`` float32 entropy of the probabilities divided by ``log C`` (in [0, 1]).
    affine : numpy.ndarray
        4×4 IJK-to-RAS of the input grid.
    class_names, class_colors : tuple
        From the model card.
    temperature : float
        Temperature ``probs``/``confidence``/``entropy`` were computed at.
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
        How it was computed (device, sw_batch_size, retries, resampled grid, form ...).
    scores : TopKPrediction or None
        The compact form's class scores (``None`` in the full form).
    """

    logits: np.ndarray | None
    probs: np.ndarray | None
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
    scores: TopKPrediction | None = None

    def __post_init__(self) -> None:
        if self.scores is None and (self.logits is None or self.probs is None):
            raise CalibSegError(
                "A prediction needs either logits and probabilities (full form) or top-k "
                "scores (compact form).")
        if self.scores is not None and (self.logits is not None or self.probs is not None):
            raise CalibSegError(
                "A compact prediction (scores) holds no logits or probabilities; pass one form.")
        if self.scores is not None and self.scores.shape != tuple(self.labels.shape):
            raise CalibSegError(
                f"The top-k scores have shape {self.scores.shape} but the labels "
                f"{tuple(self.labels.shape)}.")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                _readonly(value)

    # -------------------------------------------------------------- form and size
    @property
    def is_compact(self) -> bool:
        """Whether the class scores are held in the top-k form (``scores``)."""
        return self.scores is not None

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (background included)."""
        if self.scores is not None:
            return int(self.scores.num_classes)
        assert self.logits is not None
        return int(self.logits.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial ``(Z, Y, X)`` shape."""
        z, y, x = (int(s) for s in self.labels.shape)
        return z, y, x

    @property
    def is_prototype(self) -> bool:
        """Whether the prediction holds prototype maps (a prototype model's)."""
        return self.similarity is not None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(X, Y, Z)`` in mm."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return x, y, z

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the top-k arrays included; shared arrays counted once)."""
        arrays: list[Any] = []
        if self.scores is not None:
            arrays += [self.scores.indices, self.scores.gaps, self.scores.tail]
        arrays += [getattr(self, f.name) for f in dataclasses.fields(self)]
        seen: set[int] = set()
        total = 0
        for value in arrays:
            if not isinstance(value, np.ndarray):
                continue
            chain, base = [id(value)], value
            while isinstance(base.base, np.ndarray):
                base = base.base
                chain.append(id(base))
            if any(i in seen for i in chain):
                continue  # a view (labels of the top-k indices) of an array already counted
            seen.add(id(value))
            total += int(value.nbytes)
        return total

    # -------------------------------------------------------------- class scores
    def _check_class(self, class_index: int) -> int:
        c = int(class_index)
        if not 0 <= c < self.num_classes:
            raise CalibSegError(
                f"Class index {class_index} out of range; the model has {self.num_classes}.")
        return c

    def class_probability(self, class_index: int, region: Region = None) -> np.ndarray:
        """float32 probability of one class at ``temperature``: ``(Z, Y, X)`` or ``region``'s shape.

        Computed on demand in the compact form (a tail class gets its share of the tail
        mass, see ``docs/bench/compact.md``).
        """
        c = self._check_class(class_index)
        if self.scores is not None:
            return self.scores.class_probability(c, self.temperature, region)
        assert self.probs is not None
        return _float32(self.probs[(c, *_spatial_key(region))])

    def probabilities(self, region: Region = None) -> np.ndarray:
        """``(C, ...)`` float32 probabilities of ``region`` at ``temperature`` (C maps: for
        small regions in the compact form)."""
        if self.scores is not None:
            return self.scores.probabilities(self.temperature, region)
        assert self.probs is not None
        return _float32(self.probs[(slice(None), *_spatial_key(region))])

    def maps(self, temperature: float | None = None, region: Region = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(labels, confidence, entropy)`` of ``region`` at ``temperature``.

        ``temperature`` ``None`` (or the prediction's own) returns views of the stored
        maps; another temperature computes the maps of ``region`` only (the visible
        slices of a viewer), touching nothing else of the volume.
        """
        key = _spatial_key(region)
        labels = self.labels[key]
        if temperature is None or float(temperature) == self.temperature:
            return labels, self.confidence[key], self.entropy[key]
        t = check_temperature(temperature)
        if self.scores is not None:
            confidence, entropy = self.scores.maps(t, key if key else None)
            return labels, confidence, entropy
        assert self.logits is not None
        _, confidence, entropy = probability_maps_array(
            np.asarray(self.logits[(slice(None), *key)]), t)
        return labels, confidence.reshape(labels.shape), entropy.reshape(labels.shape)

    # -------------------------------------------------------------- statistics
    def reliability_stats(self, reference: Any, n_bins: int = 20, **options: Any
                          ) -> ReliabilityStats:
        """:class:`~CalibSegLib.calibration.ReliabilityStats` against ``reference`` at the
        prediction's temperature.

        Full form: :meth:`ReliabilityStats.from_probs`; compact form:
        :func:`~CalibSegLib.inference.topk_stats.stats_from_topk` (no ``C × N`` expansion).
        ``options`` (``image_id``, ``mask``, ``class_names``, ``progress``, ``cancel`` ...)
        as those.
        """
        if self.scores is not None:
            options.setdefault("temperature", self.temperature)
            return stats_from_topk(self.scores, reference, n_bins, **options)
        return ReliabilityStats.from_probs(self.probs, reference, n_bins, **options)

    def nll_over_temperatures(self, reference: Any, grid: Any = None, *, mask: Any = None
                              ) -> tuple[np.ndarray, int]:
        """Summed NLL against ``reference`` at every temperature of ``grid`` ``(G,)`` float64,
        and the voxel count (sums add over images and sites; see
        :func:`~CalibSegLib.calibration.temperature.fit_temperature_from_grid`).

        Compact form: from the top-k arrays without expanding them
        (:func:`~CalibSegLib.inference.topk_stats.nll_over_temperatures_topk`).
        """
        if self.scores is not None:
            return nll_over_temperatures_topk(self.scores, reference, grid, mask=mask)
        return nll_over_temperature_grid(self.logits, reference, grid, mask=mask)

    # -------------------------------------------------------------- prototype models
    def class_contributions(self, class_index: int) -> np.ndarray:
        """``(P, Z, Y, X)`` float32 ``w[c, j] · similarity[j]``; sums over ``j`` to ``logits[c]``.

        Computed on demand (``P`` maps of memory); prototype models only.
        """
        if self.similarity is None or self.prototype_weights is None:
            raise CalibSegError("Prototype contributions need a prototype model's prediction.")
        w = self.prototype_weights[self._check_class(class_index)].astype(np.float32)
        return w[:, None, None, None] * self.similarity

    def contributions_at(self, voxel: tuple[int, int, int]) -> np.ndarray:
        """``(C, P)`` contributions ``w[c, j] · similarity[j]`` at voxel ``(z, y, x)``."""
        if self.similarity is None or self.prototype_weights is None:
            raise CalibSegError("Prototype contributions need a prototype model's prediction.")
        z, y, x = (int(v) for v in voxel)
        s = self.similarity[:, z, y, x]
        return self.prototype_weights.astype(np.float32) * s[None, :]


def _float32(array: np.ndarray) -> np.ndarray:
    """float32 probabilities (uint16 fixed point read as ``q / 65535``)."""
    return np.asarray(from_fixed_point(np.asarray(array)))


#: Planes per step of :func:`apply_temperature` on a compact prediction (progress, cancel).
_PLANES_PER_STEP = 8


def topk_maps(scores: TopKPrediction, progress: ProgressCallback | None = None,
              cancel: CancelCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full-volume ``(confidence, entropy)`` float32 ``(Z, Y, X)`` maps of a top-k form at its
    temperature, a few planes at a time (``progress`` and ``cancel`` per step)."""
    shape = scores.shape
    confidence = np.empty(shape, np.float32)
    entropy = np.empty(shape, np.float32)
    depth = int(shape[0])
    for z0 in range(0, depth, _PLANES_PER_STEP):
        check_cancel(cancel, "temperature scaling")
        z1 = min(depth, z0 + _PLANES_PER_STEP)
        confidence[z0:z1], entropy[z0:z1] = scores.maps(scores.temperature, (slice(z0, z1),))
        report(progress, z1 / max(depth, 1), "probability maps")
    return confidence, entropy


def apply_temperature(prediction: Prediction, temperature: float,
                      progress: ProgressCallback | None = None,
                      cancel: CancelCallback | None = None) -> Prediction:
    """A new :class:`Prediction` with ``probs``/``confidence``/``entropy`` at ``temperature``.

    Full form: recomputed from the stored logits (``softmax(logits / T)``). Compact
    form: the same ``scores``, new full-volume confidence and entropy maps, computed
    a few planes at a time (``progress`` and ``cancel`` per step). No re-inference;
    ``prediction`` is not changed; labels, scores and prototype maps are shared.

    Raises
    ------
    CalibSegError
        When ``temperature`` is not a positive finite number.
    Cancelled
        When ``cancel()`` returned true (nothing kept).
    """
    t = check_temperature(temperature)
    check_cancel(cancel, "temperature scaling")
    if prediction.scores is not None:
        scores = prediction.scores.with_temperature(t)
        confidence, entropy = topk_maps(scores, progress, cancel)
        return dataclasses.replace(prediction, confidence=confidence, entropy=entropy,
                                   temperature=t, info=dict(prediction.info), scores=scores)
    probs, confidence, entropy = probability_maps_array(np.asarray(prediction.logits), t)
    check_cancel(cancel, "temperature scaling")
    report(progress, 1.0, "temperature")
    return dataclasses.replace(
        prediction, probs=probs, confidence=confidence, entropy=entropy,
        temperature=t, info=dict(prediction.info),
    )
