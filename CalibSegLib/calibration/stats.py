"""ReliabilityStats: mergeable sufficient statistics of calibration.

Per image, class and confidence bin: the voxel count, the sum of predicted
probabilities and the sum of outcomes (plus the same for the top label, Dice
counts, NLL and Brier sums, and — with a soft reference — the sum of reference
probabilities). Every metric and diagram is read off these sums, they take
memory independent of the number of voxels, and they merge exactly: the
statistics of a union of voxels (chunks of one volume, a cohort, several sites)
are the merge of the parts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from CalibSegLib.calibration.accumulators import Accumulators, Scalar
from CalibSegLib.calibration.backend import (
    disable_numba,
    is_compile_error,
    numba_kernel,
    resolve_backend,
)
from CalibSegLib.calibration.binned_errors import (
    bin_means,
    compute_calibration_errors,
    compute_dice,
)
from CalibSegLib.calibration.binning import bin_centres, bin_edges, check_n_bins
from CalibSegLib.calibration.diagram import (
    MIN_BIN_COUNT,
    MIN_BIN_FRACTION,
    DiagramBins,
    diagram_bins,
    maximum_calibration_error,
)
from CalibSegLib.calibration.fixed_point import from_fixed_point
from CalibSegLib.calibration.modes import Backend, Reduction
from CalibSegLib.calibration.reliability_metrics import (
    ERROR_NAMES,
    ClassMetrics,
    ReliabilityMetrics,
)
from CalibSegLib.calibration.torch_kernel import accumulate_torch
from CalibSegLib.errors import CalibSegError
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

#: Voxels per chunk: bounds the extra memory of float16 conversion and sets the
#: granularity of progress and cancellation.
DEFAULT_CHUNK_VOXELS = 1 << 22

_PER_BIN = ("count", "sum_p", "sum_y", "soft_y")
_PER_TOP_BIN = ("top_count", "top_sum_p", "top_sum_y", "top_soft_y")
_PER_CLASS = ("intersection", "predicted", "reference")
_PER_IMAGE = ("nll_sum", "brier_sum", "n_voxels")
ARRAY_FIELDS = _PER_BIN + _PER_TOP_BIN + _PER_CLASS + _PER_IMAGE
_INT_FIELDS = ("count", "top_count", "intersection", "predicted", "reference", "n_voxels")


@dataclass(eq=False)
class ReliabilityStats:
    """Sufficient statistics of calibration for a set of images.

    Arrays (I images, C classes, B bins): ``count``, ``sum_p``, ``sum_y`` (I, C, B);
    ``soft_y`` (I, C, B) or (I, 0, B) without a soft reference; ``top_count``,
    ``top_sum_p``, ``top_sum_y`` (I, B), ``top_soft_y`` (I, B) or (I, 0);
    ``intersection``, ``predicted``, ``reference`` (I, C) voxel counts for Dice;
    ``nll_sum``, ``brier_sum`` (I,) float sums and ``n_voxels`` (I,).
    """

    image_ids: list[str]
    n_bins: int
    count: np.ndarray
    sum_p: np.ndarray
    sum_y: np.ndarray
    soft_y: np.ndarray
    top_count: np.ndarray
    top_sum_p: np.ndarray
    top_sum_y: np.ndarray
    top_soft_y: np.ndarray
    intersection: np.ndarray
    predicted: np.ndarray
    reference: np.ndarray
    nll_sum: np.ndarray
    brier_sum: np.ndarray
    n_voxels: np.ndarray
    class_names: tuple[str, ...] | None = field(default=None)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_probs(
        cls,
        probs,
        target,
        n_bins: int = 20,
        *,
        image_id: str = "image",
        reference_probs=None,
        mask=None,
        class_names=None,
        chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
        backend: Backend | str = Backend.AUTO,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> ReliabilityStats:
        """Statistics of one image in one streaming pass.

        Parameters
        ----------
        probs
            Class probabilities ``(C, Z, Y, X)`` (any spatial shape, or ``(C, N)``),
            numpy array or torch tensor, float16/32/64, or uint16 fixed point
            ``round(p * 65535)`` (compact storage, read as ``q / 65535``); each voxel
            sums to 1.
        target
            Reference labels with the spatial shape of ``probs``, integers in ``[0, C)``.
        n_bins
            Number of equal-width confidence bins.
        image_id
            Name of the image; merging sums statistics with equal ids.
        reference_probs
            Optional soft reference ``(C, ...)`` (e.g. tissue probability maps): also
            accumulates calibration against it (``soft_*`` metrics).
        mask
            Optional boolean mask with the spatial shape; only voxels inside count.
        class_names
            Optional names for outputs.
        chunk_voxels
            Voxels per chunk (progress/cancel granularity; bounds temporary memory).
        backend
            ``"auto"`` (torch on the tensors' device for CUDA tensors, numba otherwise),
            ``"numba"`` or ``"torch"``; without a working numba the torch back end
            runs (one :class:`~CalibSegLib.calibration.backend.KernelFallbackWarning`).
        """
        n_bins = check_n_bins(n_bins)
        num_classes, spatial, device = _shape_and_device(probs)
        if _spatial_shape(target) != spatial:
            raise CalibSegError(
                f"The reference has shape {_spatial_shape(target)} but the probabilities have "
                f"spatial shape {spatial}; resample the reference onto the prediction grid."
            )
        if reference_probs is not None and tuple(reference_probs.shape) != (num_classes,) + spatial:
            raise CalibSegError(
                f"The soft reference has shape {tuple(reference_probs.shape)}; expected "
                f"{(num_classes,) + spatial} (one probability map per class)."
            )
        if mask is not None and _spatial_shape(mask) != spatial:
            raise CalibSegError(f"The mask has shape {_spatial_shape(mask)}; expected {spatial}.")
        if class_names is not None and len(class_names) != num_classes:
            raise CalibSegError(
                f"{len(class_names)} class names given for {num_classes} probability channels."
            )
        for name, values in (("probabilities", probs), ("soft reference", reference_probs)):
            if values is not None and not _is_probability_dtype(values):
                raise CalibSegError(
                    f"The {name} have type {values.dtype}; pass floating-point probabilities "
                    "(or uint16 fixed point, round(p * 65535))."
                )
        chosen = resolve_backend(backend, device)
        edges = bin_edges(n_bins)
        args = (probs, target, reference_probs, mask, edges, int(chunk_voxels), progress, cancel)
        acc = Accumulators(num_classes, n_bins, soft=reference_probs is not None)
        kernel = numba_kernel() if chosen is Backend.NUMBA else None
        if kernel is None:
            _run_torch(acc, *args)
        else:
            try:
                _run_numba(kernel, acc, *args)
            except Exception as exc:
                if not is_compile_error(exc):
                    raise
                disable_numba(f"the kernel does not compile ({type(exc).__name__})")
                acc = Accumulators(num_classes, n_bins, soft=reference_probs is not None)
                _run_torch(acc, *args)
        raise_on_bad_input(acc.scalars)
        return cls._from_accumulators(str(image_id), n_bins, acc, class_names)

    @classmethod
    def _from_accumulators(cls, image_id, n_bins, acc: Accumulators, class_names):
        return cls(
            image_ids=[image_id], n_bins=n_bins,
            count=acc.count[None], sum_p=acc.sum_p[None], sum_y=acc.sum_y[None],
            soft_y=acc.soft_y[None], top_count=acc.top_count[None],
            top_sum_p=acc.top_sum_p[None], top_sum_y=acc.top_sum_y[None],
            top_soft_y=acc.top_soft_y[None], intersection=acc.intersection[None],
            predicted=acc.predicted[None], reference=acc.reference[None],
            nll_sum=np.array([acc.scalar(Scalar.NLL)]),
            brier_sum=np.array([acc.scalar(Scalar.BRIER)]),
            n_voxels=np.array([acc.scalar(Scalar.VOXELS)], dtype=np.int64),
            class_names=None if class_names is None else tuple(str(c) for c in class_names),
        )

    # ------------------------------------------------------------------ shape
    @property
    def num_images(self) -> int:
        """``I``, the number of images."""
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes."""
        return int(self.count.shape[1])

    @property
    def has_soft_reference(self) -> bool:
        """Whether the statistics hold a soft (probabilistic) reference."""
        return self.soft_y.shape[1] > 0

    def names(self) -> tuple[str, ...]:
        """Class names (``class 0``, ``class 1``... when none were given)."""
        if self.class_names is not None:
            return self.class_names
        return tuple(f"class {c}" for c in range(self.num_classes))

    def allclose(self, other: ReliabilityStats, rtol: float = 1e-9, atol: float = 1e-9) -> bool:
        """Whether ``other`` holds the same images (ids, in order), bins and class count, with
        equal counts and float sums equal within ``rtol``/``atol`` (``==`` is identity:
        the statistics are arrays)."""
        if (not isinstance(other, ReliabilityStats) or other.image_ids != self.image_ids
                or other.n_bins != self.n_bins):
            return False
        for name in ARRAY_FIELDS:
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape:
                return False
            same = (np.array_equal(a, b) if name in _INT_FIELDS
                    else np.allclose(a, b, rtol=rtol, atol=atol))
            if not same:
                return False
        return True

    # ------------------------------------------------------------------ merging
    def merge(self, other: ReliabilityStats) -> ReliabilityStats:
        """Exact union: equal image ids are summed (chunks), new ids appended (cohorts)."""
        if not isinstance(other, ReliabilityStats):
            raise TypeError(f"cannot merge {type(other).__name__} into ReliabilityStats")
        if other.n_bins != self.n_bins or other.num_classes != self.num_classes:
            raise CalibSegError(
                f"Cannot merge statistics with {other.num_classes} classes × {other.n_bins} bins "
                f"into {self.num_classes} classes × {self.n_bins} bins; use the same model and "
                "bin count."
            )
        if other.has_soft_reference != self.has_soft_reference:
            raise CalibSegError(
                "Cannot merge statistics with and without a soft reference; compute both the "
                "same way."
            )
        if (self.class_names and other.class_names and self.class_names != other.class_names):
            raise CalibSegError(
                f"Class names differ ({self.class_names} vs {other.class_names}); merge "
                "statistics of the same classes only."
            )
        ids = list(self.image_ids)
        arrays = {name: getattr(self, name).copy() for name in ARRAY_FIELDS}
        position = {image_id: i for i, image_id in enumerate(ids)}
        new_rows = []
        for j, image_id in enumerate(other.image_ids):
            if image_id in position:
                i = position[image_id]
                for name in ARRAY_FIELDS:
                    arrays[name][i] += getattr(other, name)[j]
            else:
                position[image_id] = len(ids)
                ids.append(image_id)
                new_rows.append(j)
        if new_rows:
            for name in ARRAY_FIELDS:
                arrays[name] = np.concatenate([arrays[name], getattr(other, name)[new_rows]])
        return ReliabilityStats(image_ids=ids, n_bins=self.n_bins,
                                class_names=self.class_names or other.class_names, **arrays)

    @classmethod
    def merge_all(cls, parts) -> ReliabilityStats:
        """Merge an iterable of statistics (at least one)."""
        parts = list(parts)
        if not parts:
            raise CalibSegError("Nothing to merge: no statistics were given.")
        out = parts[0]
        for part in parts[1:]:
            out = out.merge(part)
        return out

    def pooled(self, image_id: str = "pooled") -> ReliabilityStats:
        """All images summed into one (the "micro" view)."""
        arrays = {name: getattr(self, name).sum(axis=0, keepdims=True) for name in ARRAY_FIELDS}
        return ReliabilityStats(image_ids=[image_id], n_bins=self.n_bins,
                                class_names=self.class_names, **arrays)

    def select(self, image_ids) -> ReliabilityStats:
        """The statistics of a subset of images (in the given order)."""
        index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        try:
            rows = [index[i] for i in image_ids]
        except KeyError as exc:
            raise CalibSegError(f"No image {exc.args[0]!r} in these statistics.") from None
        arrays = {name: getattr(self, name)[rows] for name in ARRAY_FIELDS}
        return ReliabilityStats(image_ids=list(image_ids), n_bins=self.n_bins,
                                class_names=self.class_names, **arrays)

    # ------------------------------------------------------------------ metrics
    def metrics(self, reduction: Reduction | str = Reduction.MACRO,
                include_background: bool = False, ignore_empty_classes: bool = True,
                min_bin_fraction: float = MIN_BIN_FRACTION,
                min_bin_count: int = MIN_BIN_COUNT) -> ReliabilityMetrics:
        """Calibration and overlap metrics.

        Parameters
        ----------
        reduction
            ``"macro"``: per image (and class), then the mean over images — the
            numbers the mL1-ACE paper reports. ``"micro"``: bins pooled over images first.
        include_background
            Whether class 0 enters the class means (``marginal_*``, ``mean_dice``);
            per-class values are reported for every class either way.
        ignore_empty_classes
            Classes absent from an image's reference get no marginal calibration
            error for that image (excluded from the means) instead of a one-sided one.
        min_bin_fraction, min_bin_count
            The minimum-bin-mass rule (:mod:`CalibSegLib.calibration.diagram`): MCE
            is taken over bins holding at least this share of the diagram's voxels
            and at least this many voxels; ``*mce_raw`` over every non-empty bin.
            ``0, 0`` gives the classic MCE.

        Returns
        -------
        ReliabilityMetrics
            Top-label, marginal and per-class errors, Dice, NLL, Brier (and the
            ``soft_*`` errors against a soft reference when present); its
            :meth:`~ReliabilityMetrics.to_dict` is the JSON layout.
        """
        reduction = Reduction.from_user(reduction, "reduction")
        stats = self if reduction is Reduction.MACRO else self.pooled()
        first = 0 if include_background else 1
        min_fraction, min_count = float(min_bin_fraction), int(min_bin_count)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            marginal = _errors_per_class(stats.count, stats.sum_p, stats.sum_y,
                                         min_fraction, min_count)
            if ignore_empty_classes:
                absent = stats.reference == 0
                marginal = {k: np.where(absent, np.nan, v) for k, v in marginal.items()}
            top = _errors_per_class(stats.top_count, stats.top_sum_p, stats.top_sum_y,
                                    min_fraction, min_count)
            dice = compute_dice(stats.intersection, stats.predicted, stats.reference)
            class_mean = {k: np.nanmean(v, axis=0) for k, v in marginal.items()}
            class_mean["dice"] = np.nanmean(dice, axis=0)
            soft_top: dict[str, float] = {}
            soft_marginal: dict[str, float] = {}
            soft_class: dict[str, np.ndarray] = {}
            if self.has_soft_reference:
                soft_class = {k: np.nanmean(v, axis=0) for k, v in _errors_per_class(
                    stats.count, stats.sum_p, stats.soft_y, min_fraction, min_count).items()}
                soft_top = {k: _f(np.nanmean(v)) for k, v in _errors_per_class(
                    stats.top_count, stats.top_sum_p, stats.top_soft_y, min_fraction,
                    min_count).items()}
                soft_marginal = {k: _f(np.nanmean(v[first:])) for k, v in soft_class.items()}
            per_class = {
                name: ClassMetrics(
                    **{k: _f(class_mean[k][c]) for k in ERROR_NAMES + ("dice",)},
                    **{f"soft_{k}": _f(v[c]) for k, v in soft_class.items()})
                for c, name in enumerate(self.names())
            }
            n = np.maximum(stats.n_voxels, 1)
            return ReliabilityMetrics(
                reduction=reduction,
                include_background=bool(include_background),
                ignore_empty_classes=bool(ignore_empty_classes),
                n_bins=self.n_bins, min_bin_fraction=min_fraction, min_bin_count=min_count,
                n_images=self.num_images, n_voxels=int(self.n_voxels.sum()),
                **{k: _f(np.nanmean(v)) for k, v in top.items()},
                **{f"marginal_{k}": _f(np.nanmean(class_mean[k][first:])) for k in ERROR_NAMES},
                per_class=per_class,
                mean_dice=_f(np.nanmean(class_mean["dice"][first:])),
                nll=_f(np.nanmean(stats.nll_sum / n)),
                brier=_f(np.nanmean(stats.brier_sum / n)),
                **{f"soft_{k}": v for k, v in soft_top.items()},
                **{f"soft_marginal_{k}": v for k, v in soft_marginal.items()},
            )

    def per_image_metrics(self, include_background: bool = False,
                          ignore_empty_classes: bool = True) -> dict[str, ReliabilityMetrics]:
        """:meth:`metrics` of each image on its own, by image id (in image order)."""
        return {image_id: self.select([image_id]).metrics(Reduction.MACRO, include_background,
                                                           ignore_empty_classes)
                for image_id in self.image_ids}

    # ------------------------------------------------------------------ diagrams
    def diagram_bins(self, class_index: int | None = None,
                     min_bin_fraction: float = MIN_BIN_FRACTION,
                     min_bin_count: int = MIN_BIN_COUNT) -> DiagramBins:
        """Per-bin data of a reliability diagram pooled over images (the one to draw).

        ``class_index=None`` gives the top-label diagram, an index the marginal
        (one-vs-rest) diagram of that class. Per bin: mean confidence, observed
        frequency (``accuracy``; NaN in empty bins), voxel count and whether the
        bin is ``reliable`` under the minimum-bin-mass rule (draw the others greyed
        out with their count); ``mce`` over reliable bins, ``mce_raw`` over all.
        """
        pooled = self.pooled()
        if class_index is None:
            count, sum_p, sum_y = pooled.top_count[0], pooled.top_sum_p[0], pooled.top_sum_y[0]
            label = "top label"
        else:
            if not 0 <= int(class_index) < self.num_classes:
                raise CalibSegError(
                    f"class_index {class_index} is out of range for {self.num_classes} classes.")
            c = int(class_index)
            count, sum_p, sum_y = pooled.count[0, c], pooled.sum_p[0, c], pooled.sum_y[0, c]
            label = self.names()[c]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ece, ace, _ = compute_calibration_errors(count, sum_p, sum_y)
        return diagram_bins(count, sum_p, sum_y, bin_edges(self.n_bins), bin_centres(self.n_bins),
                            label, ece, ace, min_bin_fraction, min_bin_count)

    def reliability_diagram(self, class_index: int | None = None) -> dict:
        """:meth:`diagram_bins` as a plain dict (the older form).

        Keys: ``bin_edges``, ``bin_centres``, ``mean_confidence``,
        ``observed_frequency``, ``gap``, ``counts``, ``reliable``, ``ece``, ``ace``,
        ``mce``, ``mce_raw``, ``min_count``, ``class``. Empty bins have NaN means and
        gap (skipped when drawing, never shown as zero).
        """
        d = self.diagram_bins(class_index)
        return {
            "bin_edges": d.edges, "bin_centres": d.centres, "mean_confidence": d.confidence,
            "observed_frequency": d.accuracy, "gap": d.gap, "counts": d.count,
            "reliable": d.reliable, "ece": d.ece, "ace": d.ace, "mce": d.mce,
            "mce_raw": d.mce_raw, "min_count": d.min_count, "class": d.label,
        }

    def dataset_reliability_histogram(self, class_index: int | None = None) -> np.ndarray:
        """The dataset reliability histogram: a ``(B, B)`` column-normalised matrix.

        Entry ``[j, k]`` is the fraction of images whose observed frequency in
        confidence bin ``k`` falls in frequency bin ``j`` (images with an empty
        bin ``k`` do not count in column ``k``; a column with no image is NaN).
        """
        if class_index is None:
            count, sum_y = self.top_count, self.top_sum_y
        else:
            count, sum_y = self.count[:, int(class_index)], self.sum_y[:, int(class_index)]
        _, freq = bin_means(count, np.zeros_like(sum_y), sum_y)
        hist = np.zeros((self.n_bins, self.n_bins), dtype=np.float64)
        for k in range(self.n_bins):
            values = freq[:, k]
            values = values[~np.isnan(values)]
            if values.size:
                rows = np.minimum((values * self.n_bins).astype(np.int64), self.n_bins - 1)
                hist[:, k] = np.bincount(rows, minlength=self.n_bins) / values.size
            else:
                hist[:, k] = np.nan
        return hist

    # ------------------------------------------------------------------ serialisation
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (binary transport); size independent of the voxel count.

        The fields keep their shapes, e.g. ``count`` of shape (I, C, B) and ``nll_sum`` of
        shape (I,); ``n_bins`` is an array of shape (1,).
        """
        out = {name: np.asarray(getattr(self, name)) for name in ARRAY_FIELDS}
        out["image_ids"] = np.asarray(self.image_ids, dtype=str)
        out["n_bins"] = np.asarray([self.n_bins], dtype=np.int64)
        if self.class_names is not None:
            out["class_names"] = np.asarray(self.class_names, dtype=str)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict) -> ReliabilityStats:
        """Inverse of :meth:`to_arrays`, with shape and value checks."""
        try:
            ids = [str(x) for x in np.asarray(arrays["image_ids"]).ravel()]
            n_bins = int(np.asarray(arrays["n_bins"]).ravel()[0])
            fields = {}
            for name in ARRAY_FIELDS:
                dtype = np.int64 if name in _INT_FIELDS else np.float64
                fields[name] = np.array(arrays[name], dtype=dtype)
            # without a soft reference these are empty; JSON lists lose their shape
            if fields["soft_y"].size == 0:
                fields["soft_y"] = fields["soft_y"].reshape(len(ids), 0, n_bins)
            if fields["top_soft_y"].size == 0:
                fields["top_soft_y"] = fields["top_soft_y"].reshape(len(ids), 0)
        except KeyError as exc:
            raise CalibSegError(f"Reliability statistics lack the array {exc.args[0]!r}.") from None
        names = arrays.get("class_names")
        stats = cls(image_ids=ids, n_bins=n_bins,
                    class_names=None if names is None else tuple(str(x) for x in names), **fields)
        stats.validate()
        return stats

    def to_dict(self) -> dict:
        """JSON-safe dict (lists of numbers); round trips with :meth:`from_dict`."""
        out = {name: getattr(self, name).tolist() for name in ARRAY_FIELDS}
        out.update({"format": "calibseg.reliability-stats/1", "image_ids": list(self.image_ids),
                    "n_bins": self.n_bins,
                    "class_names": None if self.class_names is None else list(self.class_names)})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ReliabilityStats:
        """Inverse of :meth:`to_dict`."""
        arrays = {k: v for k, v in data.items() if k in ARRAY_FIELDS}
        arrays["image_ids"] = data.get("image_ids", [])
        arrays["n_bins"] = data.get("n_bins")
        if arrays["n_bins"] is None:
            raise CalibSegError("Reliability statistics lack 'n_bins'.")
        if data.get("class_names") is not None:
            arrays["class_names"] = data["class_names"]
        return cls.from_arrays(arrays)

    def validate(self) -> None:
        """Check shapes, finiteness and count consistency; raise CalibSegError if broken."""
        i, b = len(self.image_ids), self.n_bins
        if i == 0:
            raise CalibSegError("Reliability statistics hold no image.")
        if len(set(self.image_ids)) != i:
            raise CalibSegError("Reliability statistics have duplicate image ids.")
        c = self.count.shape[1] if self.count.ndim == 3 else -1
        soft_c = self.soft_y.shape[1] if self.soft_y.ndim == 3 else -1
        soft_b = self.top_soft_y.shape[1] if self.top_soft_y.ndim == 2 else -1
        expected = {
            "count": (i, c, b), "sum_p": (i, c, b), "sum_y": (i, c, b),
            "soft_y": (i, soft_c, b), "top_count": (i, b), "top_sum_p": (i, b),
            "top_sum_y": (i, b), "top_soft_y": (i, soft_b), "intersection": (i, c),
            "predicted": (i, c), "reference": (i, c), "nll_sum": (i,), "brier_sum": (i,),
            "n_voxels": (i,),
        }
        if c < 1 or soft_c not in (0, c) or soft_b not in (0, b) or (soft_c == 0) != (soft_b == 0):
            raise CalibSegError("Reliability statistics have inconsistent class dimensions.")
        for name, shape in expected.items():
            array = getattr(self, name)
            if array.shape != shape:
                raise CalibSegError(
                    f"Reliability statistics array {name!r} has shape {array.shape}, "
                    f"expected {shape}.")
            if not np.all(np.isfinite(array)):
                raise CalibSegError(f"Reliability statistics array {name!r} holds NaN/Inf.")
            if np.any(array < 0):
                raise CalibSegError(f"Reliability statistics array {name!r} holds negative values.")
        tol = 1e-6 * np.maximum(self.count, 1)
        if np.any(self.sum_p > self.count + tol) or np.any(self.sum_y > self.count + tol):
            raise CalibSegError("Reliability statistics have bin sums larger than their counts.")
        if np.any(self.count.sum(axis=2) != self.n_voxels[:, None]):
            raise CalibSegError("Reliability statistics counts do not add up to the voxel count.")


# ---------------------------------------------------------------------------- helpers

def _f(value) -> float:
    return float(value)


def _errors_per_class(count, sum_p, sum_y, min_fraction: float,
                      min_count: int) -> dict[str, np.ndarray]:
    """``{ece, ace, mce, mce_raw}`` over the last (bin) axis of binned sums ``(..., B)``."""
    ece, ace, _ = compute_calibration_errors(count, sum_p, sum_y)
    mce, mce_raw = maximum_calibration_error(count, sum_p, sum_y, min_fraction, min_count)
    return {"ece": ece, "ace": ace, "mce": mce, "mce_raw": mce_raw}


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _spatial_shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _shape_and_device(probs):
    if probs is None or not hasattr(probs, "shape") or len(probs.shape) < 2:
        raise CalibSegError(
            "Probabilities must be an array (C, Z, Y, X) (or (C, N)) with one channel per class.")
    num_classes = int(probs.shape[0])
    if num_classes < 1:
        raise CalibSegError("Probabilities have no class channel.")
    device = str(probs.device.type) if _is_torch(probs) else None
    return num_classes, tuple(int(s) for s in probs.shape[1:]), device


def _is_probability_dtype(x) -> bool:
    if _is_torch(x):
        return x.is_floating_point() or x.dtype == torch.uint16
    dtype = np.asarray(x).dtype
    return dtype.kind == "f" or dtype == np.uint16


def _float_block(x, start: int, stop: int) -> np.ndarray:
    """float32 C-contiguous ``x[:, start:stop]``; uint16 read as fixed point."""
    return np.ascontiguousarray(from_fixed_point(x[:, start:stop]))


def _as_numpy(x):
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _flat_labels(target) -> np.ndarray:
    labels = _as_numpy(target).reshape(-1)
    if labels.dtype.kind == "b":
        labels = labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise CalibSegError("The reference holds non-integer values; pass a label map.")
        labels = rounded.astype(np.int64)
    if labels.dtype not in (np.uint8, np.uint16, np.int32, np.int64):
        labels = labels.astype(np.int64)
    return np.ascontiguousarray(labels)


def _run_numba(kernel, acc, probs, target, reference, mask, edges, chunk, progress,
               cancel) -> None:
    p = _as_numpy(probs)
    num_classes = p.shape[0]
    p = p.reshape(num_classes, -1)
    n = p.shape[1]
    direct = p.dtype == np.float32 and p.flags.c_contiguous
    labels = _flat_labels(target)
    ref = None
    ref_direct = True
    if reference is not None:
        ref = _as_numpy(reference).reshape(num_classes, -1)
        ref_direct = ref.dtype == np.float32 and ref.flags.c_contiguous
    m = None if mask is None else np.ascontiguousarray(_as_numpy(mask).reshape(-1), dtype=bool)
    chunk = max(int(chunk), 1)
    for start in range(0, max(n, 1), chunk):
        check_cancel(cancel, "calibration statistics computation")
        stop = min(n, start + chunk)
        if direct:
            block, p0 = p, start
        else:
            block, p0 = _float_block(p, start, stop), 0
        if ref is None:
            rblock, r0 = None, 0
        elif ref_direct:
            rblock, r0 = ref, start
        else:
            rblock, r0 = _float_block(ref, start, stop), 0
        kernel(acc, block, p0, labels, start, stop - start, edges, rblock, r0, m)
        report(progress, stop / max(n, 1), "calibration statistics")


def _run_torch(acc, probs, target, reference, mask, edges, chunk, progress, cancel) -> None:
    p = probs if _is_torch(probs) else torch.from_numpy(np.ascontiguousarray(probs))
    device = p.device
    num_classes = p.shape[0]
    p = p.reshape(num_classes, -1)
    n = p.shape[1]

    def on_device(x, dtype=None):
        if x is None:
            return None
        t = x if _is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))
        t = t.to(device)
        return t if dtype is None else t.to(dtype)

    labels = on_device(target).reshape(-1)
    ref = None if reference is None else on_device(reference).reshape(num_classes, -1)
    m = None if mask is None else on_device(mask, torch.bool).reshape(-1)
    chunk = max(int(chunk), 1)

    def block(x, start, stop):
        if x is None:
            return None
        x = x[:, start:stop]
        return from_fixed_point(x) if x.dtype == torch.uint16 else x

    for start in range(0, max(n, 1), chunk):
        check_cancel(cancel, "calibration statistics computation")
        stop = min(n, start + chunk)
        accumulate_torch(acc, block(p, start, stop), labels[start:stop], edges,
                         block(ref, start, stop), None if m is None else m[start:stop])
        report(progress, stop / max(n, 1), "calibration statistics")


def raise_on_bad_input(scalars: np.ndarray) -> None:
    """One CalibSegError when the accumulator ``scalars`` (array of shape (S,), the slots of
    :class:`~CalibSegLib.calibration.accumulators.Scalar`) counted NaN probabilities,
    unknown reference labels or probabilities that do not sum to 1 (any back end)."""
    bad_label, bad_nan, bad_sum = (int(scalars[slot]) for slot in (
        Scalar.BAD_LABELS, Scalar.NAN_VALUES, Scalar.BAD_SUMS))
    if bad_nan:
        raise CalibSegError(
            f"The probabilities hold NaN at {bad_nan} values; check the model output "
            "(or the file) before evaluating.")
    if bad_label:
        raise CalibSegError(
            f"The reference has {bad_label} voxels with labels the model does not know "
            "(negative or ≥ the number of classes); map them to the model's classes or mask "
            "them out.")
    if bad_sum:
        raise CalibSegError(
            f"At {bad_sum} voxels the class probabilities do not sum to 1; pass softmax "
            "probabilities (not logits), one channel per class.")
