"""Top-k prediction: a compact form of ``(C, Z, Y, X)`` logits of at most 16 bytes per voxel.

Softmax is unchanged by adding a constant to all logits of a voxel, so only the
differences ``d_c = z_c - max_j z_j <= 0`` matter, at every temperature ``T``
(``p_c = exp(d_c / T) / Σ_j exp(d_j / T)``). Per voxel the form keeps

- ``indices``: the classes of the ``K`` largest logits, best first (``uint8``;
  ``uint16`` beyond 256 classes), so ``indices[0]`` is the label (argmax, ties to
  the lower class index);
- ``gaps``: ``d`` of ranks 2..K as float16 (rank 1 is 0 by definition);
- ``tail``: for the other ``C - K`` classes, the float16 tail log-partition
  ``f(a) = log Σ_tail exp(a d_j)`` at the three inverse temperatures
  ``a ∈ {1/3, 1, 2}`` (T = 3, 1, 0.5), absent when ``C <= K``.

Sizes: ``K = min(C, 4)`` up to 256 classes (4 + 6 + 6 = 16 bytes), ``K = 3``
beyond (6 + 4 + 6 = 16 bytes); 3 classes take 7 bytes (no tail), 2 classes 4.
CPU work runs in compiled kernels (:mod:`CalibSegLib.inference.topk_kernel`); the
torch operations here serve other devices (CUDA), and the CPU when numba cannot run
(:mod:`CalibSegLib.inference.compiled`); they are tested equal.

Temperature. ``f`` is convex and decreasing in ``a`` (its derivative is the mean
tail logit under ``exp(a d)`` weights). Between the stored points ``f(a)`` is read
off the quadratic through them, clamped into the interval convexity allows: below
the chord of the neighbouring points and above the extensions of the adjacent
chords (and below ``log(C - K) + a d_K``, since no tail logit exceeds rank K's).
At ``a = 1/3, 1, 2`` the tail mass is exact up to float16 rounding; between them
the estimate is within the stated interval, which :meth:`TopKPrediction.tail_bounds`
returns per voxel. The tail's entropy uses the quadratic's slope
(``Σ_tail p_j log p_j = p_tail (a f'(a) - log Z)``), its sum of squares ``f(2a)``.
Per-class probabilities of tail classes are the tail mass shared equally.

Error bounds (``u = 2**-11``, float16 rounding):

- labels and Dice: exact;
- a probability of a top-K class: ``|Δp| <= 2u (1/e + ln K) + τ`` where ``τ`` is the
  width of the voxel's tail-mass interval (0 without a tail, and at T = 0.5, 1, 3
  up to rounding ``u |f|`` of ``f``); with the tail share rule, a tail class's
  probability is off by at most the tail mass;
- statistics: ECE-type sums move by at most the mean ``|Δp|`` plus ``2/N`` per
  voxel whose probability crosses a bin edge (``N`` voxels of the diagram); NLL
  by ``mean |Δ log p_target|``, unbounded only at voxels whose reference class is
  not among the top K (their share is :meth:`TopKPrediction.tail_label_fraction`).

On the sample cases (3 classes: no tail) and a 25-class synthetic case all of
ECE, ACE, MCE (top-label and marginal), Dice, NLL and Brier stay within 1e-3 of
the full-precision values at T in [0.5, 3] (``Testing/inference/test_topk.py``); readings,
and a stress case where they do not, in ``docs/bench/compact.md``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import compiled
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

#: Inverse temperatures ``a = 1/T`` at which the tail log-partition is stored (ascending).
TAIL_INVERSE_TEMPERATURES = (1.0 / 3.0, 1.0, 2.0)
#: Most bytes one voxel takes, for any class count.
MAX_BYTES_PER_VOXEL = 16
#: Largest class count (uint16 indices).
MAX_CLASSES = 1 << 16
#: float16 unit roundoff (relative error of a stored gap or tail value).
FLOAT16_ROUNDOFF = 2.0 ** -11
#: float16 clamp of stored negative values (exp of it is 0 in any precision used).
_MOST_NEGATIVE = -60000.0
#: Voxels per chunk of the map computations.
DEFAULT_CHUNK_VOXELS = 1 << 18
#: Temporary memory of one compaction chunk (about 40 bytes per class and voxel).
COMPACTION_BYTES = 1 << 26


def layout(num_classes: int) -> tuple[int, np.dtype, int, int]:
    """``(K, index dtype, gap rows, tail rows)`` of the top-k form for ``num_classes``.

    Up to 4 classes every logit gap is kept (no tail rows). Beyond, the K best
    classes and their gaps are kept and ranks K+1..C are summarised by 3 tail rows.
    """
    c = int(num_classes)
    if c < 1 or c > MAX_CLASSES:
        raise CalibSegError(f"A top-k prediction holds 1 to {MAX_CLASSES} classes, got {c}.")
    if c <= 4:
        return c, np.dtype(np.uint8), c - 1, 0
    k, dtype = (4, np.dtype(np.uint8)) if c <= 256 else (3, np.dtype(np.uint16))
    return k, dtype, k - 1, len(TAIL_INVERSE_TEMPERATURES)


def bytes_per_voxel(num_classes: int) -> int:
    """Stored bytes per voxel for ``num_classes`` classes (at most 16)."""
    k, dtype, gaps, tail = layout(num_classes)
    return k * dtype.itemsize + 2 * gaps + 2 * tail


# ---------------------------------------------------------------------------- tail model

def _line(nodes: tuple[float, ...], i: int, j: int, a: float) -> list[float]:
    """Coefficients (over the node values) of the line through nodes i and j, at ``a``."""
    w = [0.0] * len(nodes)
    t = (a - nodes[i]) / (nodes[j] - nodes[i])
    w[i], w[j] = 1.0 - t, t
    return w


def _convex_bounds(a: float) -> tuple[list[float] | None, list[list[float]]]:
    """Linear forms bounding a convex, decreasing ``f`` at ``a`` from its node values.

    Returns ``(upper, lowers)``: ``f(a) <= upper`` (a chord, or the next node's value
    beyond the last node) and ``f(a) >= each of lowers`` (extensions of the adjacent
    chords, and the value at the next node since ``f`` decreases).
    """
    nodes = _NODES
    last = len(nodes) - 1
    if a >= nodes[last]:
        return [0.0] * last + [1.0], [_line(nodes, last - 1, last, a)]
    i = max(j for j in range(last) if nodes[j] <= a)
    lowers = [[1.0 if m == i + 1 else 0.0 for m in range(len(nodes))]]
    if i >= 1:
        lowers.append(_line(nodes, i - 1, i, a))
    if i + 2 <= last:
        lowers.append(_line(nodes, i + 1, i + 2, a))
    return _line(nodes, i, i + 1, a), lowers


#: Node inverse temperatures: 0 (the tail's class count, known) and the stored ones.
_NODES = (0.0,) + TAIL_INVERSE_TEMPERATURES


def _combine(values: torch.Tensor, weights) -> torch.Tensor:
    out = values[0] * weights[0]
    for m in range(1, len(weights)):
        if weights[m] != 0.0:
            out = out + values[m] * weights[m]
    return out


def _slack(values: torch.Tensor, weights) -> torch.Tensor:
    """Bound on the change of a linear form from float16 rounding of the stored values."""
    out = torch.zeros_like(values[0])
    for m in range(1, len(weights)):  # node 0 (log of the class count) is exact
        if weights[m] != 0.0:
            out = out + values[m].abs() * (abs(weights[m]) * FLOAT16_ROUNDOFF)
    return out


def _quadratic(a: float) -> tuple[list[float], list[float]]:
    """Weights of the quadratic through the stored nodes, and of its derivative, at ``a``."""
    nodes = TAIL_INVERSE_TEMPERATURES
    value, slope = [], []
    for i, ai in enumerate(nodes):
        others = [aj for j, aj in enumerate(nodes) if j != i]
        denom = (ai - others[0]) * (ai - others[1])
        value.append((a - others[0]) * (a - others[1]) / denom)
        slope.append(((a - others[0]) + (a - others[1])) / denom)
    return value, slope


def tail_log_partition(tail: torch.Tensor, d_last: torch.Tensor, n_tail: int, a: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(estimate, lower, upper, slope)`` of ``f(a) = log Σ_tail exp(a d_j)`` per voxel.

    ``tail`` is ``(3, n)`` (the stored values, as floats), ``d_last`` the ``(n,)``
    gap of rank K (no tail logit is larger). ``lower``/``upper`` hold for any tail
    logits consistent with the stored values (float16 rounding included): ``f`` is
    convex and decreasing in ``a``. The estimate is the quadratic through the
    stored values clamped into them; ``slope`` its derivative, clamped below the
    largest tail gap (the tail's mean gap under ``exp(a d)`` weights; for the entropy).
    """
    a = float(a)
    log_n = math.log(n_tail)
    values = torch.cat([torch.full_like(tail[:1], log_n), tail])
    ceiling = log_n + a * d_last * (1.0 - FLOAT16_ROUNDOFF)
    upper_form, lower_forms = _convex_bounds(a)
    upper = torch.minimum(ceiling, _combine(values, upper_form) + _slack(values, upper_form))
    bounds = [_combine(values, form) - _slack(values, form) for form in lower_forms]
    lower = bounds[0]
    for bound in bounds[1:]:
        lower = torch.maximum(lower, bound)
    lower = torch.minimum(lower, upper)
    est_w, slope_w = _quadratic(a)
    estimate = torch.minimum(torch.maximum(_combine(tail, est_w), lower), upper)
    slope = torch.minimum(_combine(tail, slope_w), d_last * (1.0 - FLOAT16_ROUNDOFF))
    return estimate, lower, upper, slope


# ---------------------------------------------------------------------------- decoding

def tail_forms(a: float) -> tuple[np.ndarray, int]:
    """``(forms, lowers)``: the linear forms of :func:`tail_log_partition` at ``a``.

    Over ``(log n, f(1/3), f(1), f(2))``, as rows ``[upper, lower..., estimate, slope]``
    (``(6, 4)`` float64, unused lower rows zero) and the number of lower forms."""
    upper, lowers = _convex_bounds(float(a))
    est, slope = _quadratic(float(a))
    forms = np.zeros((6, 4), np.float64)
    forms[0] = upper
    for i, form in enumerate(lowers):
        forms[1 + i] = form
    forms[4, 1:] = est
    forms[5, 1:] = slope
    return forms, len(lowers)


def tail_arguments(num_classes: int, k: int, temperature: float
                   ) -> tuple[float, np.ndarray, int, np.ndarray, int, float]:
    """``(a, forms, lowers, forms2, lowers2, log n)`` of the compiled decoding at
    ``temperature``: :func:`tail_forms` at ``a = 1/T`` and ``2a`` (for ``Σ p²``; forms of
    shape (6, 4)) and the log of the tail class count ``n = C - K``."""
    a = 1.0 / float(temperature)
    forms, lowers = tail_forms(a)
    forms2, lowers2 = tail_forms(2.0 * a)
    log_n = math.log(num_classes - k) if num_classes > k else 0.0
    return a, forms, lowers, forms2, lowers2, log_n



@dataclass
class DecodedVoxels:
    """Probabilities of a block of ``n`` voxels at one temperature (torch, one dtype).

    ``indices`` ``(K, n)`` classes, best first; ``top`` ``(K, n)`` their
    probabilities; ``rest`` ``(n,)`` the total probability of the ``n_rest`` other
    classes, each given an equal share; ``summary``, ``summary_low``,
    ``summary_high`` ``(n,)`` the mass of the classes the tail rows summarise (the
    same ``n_rest`` classes) and its bounds; ``log_z`` the log-partition relative to
    the best logit; ``gaps`` ``(K, n)`` stored gaps (rank 1 included as 0);
    ``summary_slope`` the tail's mean gap under ``exp(a d)`` weights; ``square``
    ``(n,)`` ``Σ_c p_c²`` over all classes.
    """

    indices: torch.Tensor
    top: torch.Tensor
    rest: torch.Tensor
    summary: torch.Tensor
    summary_low: torch.Tensor
    summary_high: torch.Tensor
    log_z: torch.Tensor
    gaps: torch.Tensor
    summary_slope: torch.Tensor
    square: torch.Tensor
    n_rest: int

    @property
    def tail(self) -> torch.Tensor:
        """Mass of the classes not named in ``indices``, a tensor of shape (n,)."""
        return self.rest


def decode(indices: torch.Tensor, gaps: torch.Tensor, tail: torch.Tensor, num_classes: int,
           temperature: float, dtype: torch.dtype = torch.float32) -> DecodedVoxels:
    """Probabilities of ``(K, n)`` indices, ``(K-1, n)`` gaps and ``(3 or 0, n)`` tail rows."""
    a = 1.0 / float(temperature)
    k = int(indices.shape[0])
    n = int(indices.shape[1])
    dev = gaps.device
    d = torch.cat([torch.zeros((1, n), dtype=dtype, device=dev), gaps.to(dtype)])
    weights = torch.exp(d * a)
    z_top = weights.sum(0)
    zeros = torch.zeros(n, dtype=dtype, device=dev)
    summarised = int(tail.shape[0]) > 0
    if summarised:
        count = int(num_classes) - k   # the tail: ranks K+1..C
        t = tail.to(dtype)
        f, f_low, f_high, slope = tail_log_partition(t, d[-1], count, a)
        f2 = tail_log_partition(t, d[-1], count, 2.0 * a)[0]
        s, s_low, s_high = torch.exp(f), torch.exp(f_low), torch.exp(f_high)
    else:
        f2 = slope = s = s_low = s_high = zeros
    z = z_top + s
    top = weights / z
    summary = s / z
    if summarised:
        rest = summary
        square = (top * top).sum(0) + torch.exp(f2) / (z * z)
    else:
        rest = zeros
        square = (top * top).sum(0)
    # the summary's mass s / (z_top + s) increases with s and decreases with z_top;
    # the stored gaps are within a relative float16 rounding of the true ones
    z_small = torch.exp(d * (a * (1.0 + FLOAT16_ROUNDOFF))).sum(0)
    z_large = torch.exp(d * (a * (1.0 - FLOAT16_ROUNDOFF))).sum(0)
    return DecodedVoxels(indices=indices, top=top, rest=rest, summary=summary,
                         summary_low=s_low / (z_large + s_low),
                         summary_high=s_high / (z_small + s_high), log_z=torch.log(z), gaps=d,
                         summary_slope=slope, square=square,
                         n_rest=int(num_classes) - k)


def confidence_entropy(v: DecodedVoxels, temperature: float, num_classes: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(confidence, entropy / log C)`` of decoded voxels, tensors of shape (n,)."""
    a = 1.0 / float(temperature)
    # H = log Z - a (Σ_stored p_r d_r + p_summary f'(a))
    stored = v.gaps.shape[0]
    mean_gap = (v.top[:stored] * v.gaps).sum(0) + v.summary * v.summary_slope
    entropy = v.log_z - a * mean_gap
    if num_classes > 1:
        entropy = (entropy / math.log(num_classes)).clamp_(0.0, 1.0)
    else:
        entropy = torch.zeros_like(entropy)
    return v.top[0], entropy


def class_probability(v: DecodedVoxels, class_index: int) -> torch.Tensor:
    """``(n,)`` probability of one class (a tail class gets its share of the tail mass)."""
    hit = v.indices == int(class_index)
    in_top = hit.any(0)
    share = v.rest / max(v.n_rest, 1)
    return torch.where(in_top, (v.top * hit).sum(0), share)


# ---------------------------------------------------------------------------- the type

def _tensor(array: np.ndarray, device: torch.device | str | None) -> torch.Tensor:
    """A torch view of (a contiguous copy of) ``array`` (read-only memory maps included)."""
    array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays: never written
        t = torch.from_numpy(array)
    return t if device is None else t.to(device)


@dataclass(frozen=True, eq=False)
class TopKPrediction:
    """A model's logits over a volume, kept as top-k classes, gaps and a tail summary.

    Attributes
    ----------
    indices : numpy.ndarray
        ``(K, Z, Y, X)`` uint8 (uint16 beyond 256 classes) classes of the K largest
        logits, best first.
    gaps : numpy.ndarray
        ``(K-1, Z, Y, X)`` float16 ``z_(r) - z_(1) <= 0`` for ranks r = 2..K.
    tail : numpy.ndarray
        ``(3, Z, Y, X)`` float16 ``log Σ_tail exp(a d_j)`` at
        ``a = 1/3, 1, 2`` (``(0, Z, Y, X)`` when ``C <= K``).
    num_classes : int
    temperature : float
        The temperature maps are shown at (the card's, or the user's).
    affine : numpy.ndarray or None
        4×4 IJK-to-RAS of the grid.
    class_names : tuple of str
    """

    indices: np.ndarray
    gaps: np.ndarray
    tail: np.ndarray
    num_classes: int
    temperature: float = 1.0
    affine: np.ndarray | None = None
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        k, dtype, gap_rows, rows = layout(self.num_classes)
        spatial = tuple(self.indices.shape[1:])
        expected: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            "indices": ((k,) + spatial, np.dtype(dtype)),
            "gaps": ((gap_rows,) + spatial, np.dtype(np.float16)),
            "tail": ((rows,) + spatial, np.dtype(np.float16))}
        for name, (shape, kind) in expected.items():
            value = getattr(self, name)
            if tuple(value.shape) != shape or value.dtype != kind:
                raise CalibSegError(
                    f"Top-k prediction array {name!r} is {value.dtype} {tuple(value.shape)}, "
                    f"expected {kind} {shape}; the file is damaged or from another "
                    "version.")
            if value.flags.writeable:
                value.flags.writeable = False
        check_temperature(self.temperature)
        if self.class_names and len(self.class_names) != self.num_classes:
            raise CalibSegError(
                f"{len(self.class_names)} class names for {self.num_classes} classes.")

    # -------------------------------------------------------------- shape and size
    @property
    def k(self) -> int:
        """Number of classes stored per voxel (``K``)."""
        return int(self.indices.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.indices.shape[1:])

    @property
    def num_voxels(self) -> int:
        """Number of voxels ``Z · Y · X``."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-voxel arrays."""
        return int(self.indices.nbytes + self.gaps.nbytes + self.tail.nbytes)

    @property
    def bytes_per_voxel(self) -> float:
        """Bytes of the per-voxel arrays per voxel (at most 16)."""
        return self.nbytes / max(self.num_voxels, 1)

    def subvolume(self, region) -> TopKPrediction:
        """The prediction over ``region`` (slices of the spatial axes; views, no copy).

        ``affine`` is kept as is (it no longer maps the subvolume's origin).
        """
        key = (slice(None),) + _as_tuple(region)
        if any(not isinstance(k, slice) for k in key):
            raise TypeError("A subvolume is given by slices of the spatial axes.")
        return dataclasses.replace(self, indices=self.indices[key], gaps=self.gaps[key],
                                   tail=self.tail[key])

    def with_temperature(self, temperature: float) -> TopKPrediction:
        """The same prediction shown at another temperature (arrays shared, nothing computed)."""
        return dataclasses.replace(self, temperature=check_temperature(temperature))

    # -------------------------------------------------------------- blocks
    def _region(self, region) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
        """Arrays of ``region`` (an index of the spatial axes) flattened to ``(rows, n)``."""
        if region is None:
            region = ()
        if not isinstance(region, tuple):
            region = (region,)
        key = (slice(None),) + region
        idx, gaps, tail = (np.asarray(a[key]) for a in (self.indices, self.gaps, self.tail))
        spatial = tuple(int(s) for s in idx.shape[1:])
        n = int(np.prod(spatial, dtype=np.int64))
        return (idx.reshape(idx.shape[0], n), gaps.reshape(gaps.shape[0], n),
                tail.reshape(tail.shape[0], n), spatial)

    def blocks(self, temperature: float | None = None, region=None,
               chunk_voxels: int = DEFAULT_CHUNK_VOXELS, device=None,
               dtype: torch.dtype = torch.float32
               ) -> Iterator[tuple[int, int, DecodedVoxels, tuple[int, ...]]]:
        """Decoded blocks ``(start, stop, voxels, spatial shape)`` of ``region`` in flat order."""
        t = self.temperature if temperature is None else check_temperature(temperature)
        idx, gaps, tail, spatial = self._region(region)
        n = idx.shape[1]
        step = max(int(chunk_voxels), 1)
        for start in range(0, n, step):
            stop = min(n, start + step)
            decoded = decode(_tensor(idx[:, start:stop], device).long(),
                             _tensor(gaps[:, start:stop], device),
                             _tensor(tail[:, start:stop], device), self.num_classes, t, dtype)
            yield start, stop, decoded, spatial

    # -------------------------------------------------------------- maps
    def labels(self, region=None) -> np.ndarray:
        """Label map (argmax) of ``region`` (a view of ``indices[0]``), shape (Z, Y, X) for the
        whole volume."""
        return self.indices[0] if region is None else self.indices[(0,) + _as_tuple(region)]

    def maps(self, temperature: float | None = None, region=None, device=None,
             chunk_voxels: int = DEFAULT_CHUNK_VOXELS, cancel: CancelCallback | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """``(confidence, normalised entropy)`` float32 maps of ``region`` at ``temperature``
        (each of shape (Z, Y, X) for the whole volume).

        ``region`` indexes the spatial axes (``None``: the whole volume; ``5``: slice
        z = 5; ``(slice(None), 7)``: row y = 7 of every slice). ``cancel`` is checked
        per chunk (a newer temperature arrived).
        """
        t = self.temperature if temperature is None else check_temperature(temperature)
        if device is None or torch.device(device).type == "cpu":
            if compiled.available():
                return self._maps_cpu(t, region, chunk_voxels, cancel)
            device = "cpu"
        spatial = self._region(region)[3]
        n = int(np.prod(spatial, dtype=np.int64))
        out_c, out_h = np.empty(n, np.float32), np.empty(n, np.float32)
        for start, stop, v, _ in self.blocks(t, region, chunk_voxels, device):
            check_cancel(cancel, "map computation")
            c, h = confidence_entropy(v, t, self.num_classes)
            out_c[start:stop] = c.cpu().numpy()
            out_h[start:stop] = h.cpu().numpy()
        return out_c.reshape(spatial), out_h.reshape(spatial)

    def _maps_cpu(self, t: float, region, chunk_voxels: int, cancel: CancelCallback | None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`maps` by the compiled kernel (``topk_kernel.maps_cpu``)."""
        _, gaps, tail, spatial = self._region(region)
        n = gaps.shape[1] if gaps.shape[0] else tail.shape[1]
        arguments = tail_arguments(self.num_classes, self.k, t)
        confidence, entropy = np.empty(n, np.float32), np.empty(n, np.float32)
        step = max(int(chunk_voxels), 1) * 8
        for start in range(0, n, step):
            check_cancel(cancel, "map computation")
            stop = min(n, start + step)
            c, h = compiled.topk_kernel.maps_cpu(gaps[:, start:stop], tail[:, start:stop],
                                                 self.num_classes, arguments, FLOAT16_ROUNDOFF)
            confidence[start:stop], entropy[start:stop] = c, h
        return confidence.reshape(spatial), entropy.reshape(spatial)

    def class_probability(self, class_index: int, temperature: float | None = None,
                          region=None, device=None) -> np.ndarray:
        """float32 probability map of one class over ``region`` (computed on demand), shape
        (Z, Y, X) for the whole volume."""
        c = int(class_index)
        if not 0 <= c < self.num_classes:
            raise CalibSegError(
                f"Class index {class_index} out of range; the model has {self.num_classes}.")
        pieces: list[np.ndarray] = []
        shape: tuple[int, ...] = ()
        for _, _, v, spatial in self.blocks(temperature, region, device=device):
            pieces.append(class_probability(v, c).cpu().numpy())
            shape = spatial
        flat = np.concatenate(pieces) if pieces else np.empty(0, np.float32)
        return flat.reshape(shape)

    def probabilities(self, temperature: float | None = None, region=None) -> np.ndarray:
        """``(C, ...)`` float32 probabilities of ``region`` (C maps: for small regions)."""
        maps = [self.class_probability(c, temperature, region) for c in range(self.num_classes)]
        return np.stack(maps)

    def tail_bounds(self, temperature: float | None = None, region=None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(estimate, lower, upper)`` float32 mass of the tail classes (ranks K+1..C).

        The bounds hold for any logits consistent with the stored values; zeros
        without a tail.
        """
        est: list[np.ndarray] = []
        low: list[np.ndarray] = []
        high: list[np.ndarray] = []
        shape: tuple[int, ...] = ()
        for _, _, v, spatial in self.blocks(temperature, region, dtype=torch.float64):
            est.append(v.summary.float().numpy())
            low.append(v.summary_low.float().numpy())
            high.append(v.summary_high.float().numpy())
            shape = spatial
        return (np.concatenate(est).reshape(shape), np.concatenate(low).reshape(shape),
                np.concatenate(high).reshape(shape))

    def tail_label_fraction(self, target) -> float:
        """Share of voxels whose reference class is not among the top K (NLL is estimated there)."""
        labels = np.asarray(target).reshape(1, -1)
        idx = self.indices.reshape(self.k, -1)
        if labels.shape[1] != idx.shape[1]:
            raise CalibSegError("The reference does not have the prediction's shape.")
        return float(1.0 - (idx == labels).any(axis=0).mean()) if idx.shape[1] else 0.0


def _as_tuple(region) -> tuple:
    return region if isinstance(region, tuple) else (region,)


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a positive finite float, else one CalibSegError."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = float("nan")
    if not math.isfinite(t) or t <= 0:
        raise CalibSegError(f"Temperature must be a positive number, got {temperature!r}.")
    return t


# ---------------------------------------------------------------------------- conversion

def compact_block(logits: torch.Tensor, k: int, index_dtype: np.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(indices, gaps, tail)`` of ``(C, n)`` logits on their device.

    Ranks by a stable descending sort (ties: lower class first, as ``argmax``);
    the tail rows are ``log Σ exp(a d_j)`` over ranks K+1..C (float64, then clamped
    to the float16 range). Temporary memory: about 40 bytes per class and voxel.
    """
    z = logits.float()
    if not torch.isfinite(z).all():
        raise CalibSegError(
            "The logits hold NaN or infinite values; check the model output before storing it.")
    num_classes, n = z.shape
    order = torch.sort(z, dim=0, descending=True, stable=True)
    values, ranks = order.values, order.indices
    top = values[0:1]
    summarised = num_classes > k
    last = k   # ranks 1..K have a stored gap
    gaps = (values[1:last] - top).clamp_(min=_MOST_NEGATIVE).half()
    idx_dtype = torch.uint8 if index_dtype == np.uint8 else torch.int32
    indices = ranks[:k].to(idx_dtype)
    if summarised:
        d = (values[last:] - top).double()  # float64: the rounding to float16 is
        # then the same for any chunking (float32 exp/log differ by vector lane)
        rows = [torch.logsumexp(d * a, dim=0) for a in TAIL_INVERSE_TEMPERATURES]
        tail = torch.stack(rows).clamp_(min=_MOST_NEGATIVE).float().half()
    else:
        tail = torch.zeros((0, n), dtype=torch.float16, device=z.device)
    return indices, gaps, tail


def compaction_chunk(num_classes: int, budget: int = COMPACTION_BYTES) -> int:
    """Voxels per compaction chunk that keep its temporaries within ``budget`` bytes."""
    return max(1024, int(budget) // (40 * max(int(num_classes), 1)))


def compact_logits(logits, *, temperature: float = 1.0, affine: np.ndarray | None = None,
                   class_names: tuple[str, ...] = (), chunk_voxels: int | None = None,
                   device=None, progress: ProgressCallback | None = None,
                   cancel: CancelCallback | None = None) -> TopKPrediction:
    """:class:`TopKPrediction` of ``(C, Z, Y, X)`` logits (numpy or torch), chunk by chunk.

    Extra memory is a few ``C × chunk_voxels`` blocks (on ``device``, default the
    logits' own device for tensors, the CPU for arrays), never ``C × N``; by default
    the chunk keeps them within :data:`COMPACTION_BYTES`.
    """
    if not hasattr(logits, "shape") or len(logits.shape) < 2:
        raise CalibSegError("Logits must be an array (C, Z, Y, X) with one channel per class.")
    num_classes = int(logits.shape[0])
    spatial = tuple(int(s) for s in logits.shape[1:])
    writer = TopKWriter(num_classes, spatial)
    flat = logits.reshape(num_classes, -1)
    n = int(flat.shape[1])
    step = max(int(chunk_voxels or compaction_chunk(num_classes)), 1)
    for start in range(0, n, step):
        check_cancel(cancel, "compaction")
        stop = min(n, start + step)
        block = flat[:, start:stop]
        block = block if isinstance(block, torch.Tensor) else _tensor(block, None)
        if device is not None:
            block = block.to(device)
        writer.write_flat(start, block)
        report(progress, stop / max(n, 1), "compacting")
    return writer.finish(temperature=temperature, affine=affine, class_names=class_names)


class TopKWriter:
    """Fills a :class:`TopKPrediction` block by block (the arrays are allocated once)."""

    def __init__(self, num_classes: int, spatial: tuple[int, ...]) -> None:
        self.num_classes = int(num_classes)
        self.k, self.index_dtype, gap_rows, rows = layout(num_classes)
        self.spatial = tuple(int(s) for s in spatial)
        self.indices = np.empty((self.k,) + self.spatial, self.index_dtype)
        self.gaps = np.empty((gap_rows,) + self.spatial, np.float16)
        self.tail = np.empty((rows,) + self.spatial, np.float16)

    def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = int(np.prod(self.spatial, dtype=np.int64))
        return (self.indices.reshape(self.k, n), self.gaps.reshape(self.gaps.shape[0], n),
                self.tail.reshape(self.tail.shape[0], n))

    def write_flat(self, start: int, logits: torch.Tensor) -> None:
        """Store ``(C, n)`` logits of flat voxels ``start:start + n``.

        CPU tensors go through the compiled kernel
        (:mod:`CalibSegLib.inference.topk_kernel`) when numba runs
        (:mod:`CalibSegLib.inference.compiled`), others through :func:`compact_block`
        on their device.
        """
        if int(logits.shape[0]) != self.num_classes:
            raise CalibSegError(
                f"The network gives {logits.shape[0]} output channels but {self.num_classes} "
                "classes were expected; fix the card's classes.")
        stop = start + int(logits.shape[1])
        fi, fg, ft = self._flat()
        if logits.device.type == "cpu":
            z = np.ascontiguousarray(logits.detach().float().numpy())
            if not np.isfinite(z).all():
                raise CalibSegError("The logits hold NaN or infinite values; check the model "
                                    "output before storing it.")
            if compiled.available():
                idx, gaps, tail = compiled.topk_kernel.compact_block_cpu(
                    z, self.k, self.index_dtype)
                fi[:, start:stop], fg[:, start:stop], ft[:, start:stop] = idx, gaps, tail
                return
            logits = torch.from_numpy(z)  # without numba: the torch path below, on the CPU
        t_idx, t_gaps, t_tail = compact_block(logits, self.k, self.index_dtype)
        fi[:, start:stop] = t_idx.cpu().numpy()
        fg[:, start:stop] = t_gaps.cpu().numpy()
        ft[:, start:stop] = t_tail.cpu().numpy()

    def write_planes(self, first: int, logits: torch.Tensor) -> None:
        """Store ``(C, planes, Y, X)`` logits of planes ``first:first + planes`` (axis 0)."""
        plane = int(np.prod(self.spatial[1:], dtype=np.int64))
        self.write_flat(first * plane, logits.reshape(self.num_classes, -1))

    def finish(self, **fields) -> TopKPrediction:
        """The :class:`TopKPrediction` of what was stored (``fields``: its other fields)."""
        return TopKPrediction(indices=self.indices, gaps=self.gaps, tail=self.tail,
                              num_classes=self.num_classes, **fields)
