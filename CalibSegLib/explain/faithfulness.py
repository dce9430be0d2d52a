"""Is an explanation faithful to what the model computed? Measured per explanation.

All scores use one fixed *region* (the predicted segment of the target class in
the unperturbed image, or a user ROI) and one score: the mean probability of the
target class over that region. Removed voxels are replaced by a *baseline*
image (a Gaussian-blurred copy of the image, or its mean), stated in the output.

- **Deletion / insertion** (3D): voxels ordered by attribution (ties broken by
  a seeded shuffle) are replaced by the baseline (deletion) or restored onto it
  (insertion) in ``steps`` equal steps; the area under the score curve over the
  removed fraction is reported. Faithful maps have a low deletion and a high
  insertion area.
- **Faithfulness correlation**: ``n_blocks`` random blocks (about 1/8 of each
  dimension) are replaced by the baseline one at a time; the Pearson correlation
  between the score drop and the attribution mass inside each block.
- **Random baseline**: the same metrics for a seeded permutation of the map's
  values (same histogram, no spatial structure) and for a smoothed permutation
  rank-matched back onto the same values (same histogram, blob-like structure).
  A map that does not beat the better of them is flagged ``beats_random: false``.
- **Activation precision** (plausibility, not faithfulness): the share of the
  top-k % attribution mass that lies inside the reference region of the class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain.region import RegionScore
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report, scaled

BASELINES = ("blur", "mean")
RANDOM_VARIANTS = ("permuted", "smoothed")


def check_options(baseline: str = "blur", random_variants: Sequence[str] = RANDOM_VARIANTS,
                  **_: object) -> None:
    """Refuse an unknown ``baseline`` or random map before any work (a user's options).

    Takes the keyword arguments of :func:`evaluate_faithfulness` (others are ignored).

    Raises
    ------
    CalibSegError
        Naming the unknown value and the accepted ones.
    """
    if baseline not in BASELINES:
        raise CalibSegError(f"Unknown baseline {baseline!r}; use {' or '.join(BASELINES)}.")
    for variant in random_variants:
        if variant not in RANDOM_VARIANTS:
            raise CalibSegError(
                f"Unknown random map {variant!r}; use {' or '.join(RANDOM_VARIANTS)}.")


# ---------------------------------------------------------------------------- building blocks
def baseline_image(image: np.ndarray, kind: str = "blur", sigma: float | None = None
                   ) -> tuple[np.ndarray, dict]:
    """The image that removed voxels are replaced with, and its description.

    Parameters
    ----------
    image : numpy.ndarray
        ``(Z, Y, X)`` image.
    kind : {"blur", "mean"}
        ``"blur"``: Gaussian blur with ``sigma`` voxels (default: 1/16 of the
        smallest dimension, at least 2); ``"mean"``: the image mean everywhere.

    Returns
    -------
    baseline : numpy.ndarray
        ``(Z, Y, X)`` float32.
    description : dict
        ``{"kind": ..., "sigma_voxels": ...}``.
    """
    image = np.asarray(image, dtype=np.float32)
    if kind == "mean":
        return np.full_like(image, float(image.mean())), {"kind": "mean"}
    check_options(baseline=kind)
    if sigma is None:
        sigma = max(2.0, min(image.shape) / 16.0)
    blurred = ndimage.gaussian_filter(image, sigma=float(sigma), mode="nearest")
    return blurred.astype(np.float32), {"kind": "blur", "sigma_voxels": float(sigma)}


def voxel_ranks(attribution: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rank of every voxel by decreasing attribution (0 = most important), ties shuffled.

    ``attribution`` is an array of shape (Z, Y, X); the ranks are an int64 array of the
    same shape (Z, Y, X).
    """
    flat = np.asarray(attribution, dtype=np.float64).ravel()
    perm = np.random.default_rng(seed).permutation(flat.size)
    order = perm[np.argsort(-flat[perm], kind="stable")]
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(np.shape(attribution))


def random_map(attribution: np.ndarray, seed: int = 0, smooth_sigma: float | None = None
               ) -> np.ndarray:
    """A map with exactly the histogram of ``attribution`` but random placement.

    ``attribution`` is an array of shape (Z, Y, X); the result is a float32 array of
    shape (Z, Y, X).

    Without ``smooth_sigma`` the values are permuted (seeded). With it, a
    permuted copy is Gaussian-smoothed and the original values are reassigned in
    the order of the smoothed field, so the result has spatial structure at that
    scale and still the same multiset of values.
    """
    values = np.asarray(attribution, dtype=np.float32)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(values.ravel()).reshape(values.shape)
    if not smooth_sigma:
        return shuffled
    field = ndimage.gaussian_filter(rng.standard_normal(values.shape), sigma=float(smooth_sigma),
                                    mode="wrap")
    out = np.empty(values.size, dtype=np.float32)
    out[np.argsort(field.ravel(), kind="stable")] = np.sort(values.ravel())
    return out.reshape(values.shape)


def random_blocks(shape: Sequence[int], n_blocks: int = 32, block_fraction: float = 0.125,
                  seed: int = 0) -> list[tuple[slice, ...]]:
    """``n_blocks`` seeded random boxes, each about ``block_fraction`` of every dimension."""
    rng = np.random.default_rng(seed)
    size = [max(1, int(round(s * block_fraction))) for s in shape]
    blocks = []
    for _ in range(int(n_blocks)):
        start = [int(rng.integers(0, s - b + 1)) for s, b in zip(shape, size)]
        blocks.append(tuple(slice(a, a + b) for a, b in zip(start, size)))
    return blocks


def activation_precision(attribution: np.ndarray, reference: np.ndarray,
                         top_percent: float = 10.0) -> float:
    """Share of the top ``top_percent`` % attribution mass inside ``reference``.

    ``attribution`` and ``reference`` (non-zero = inside) are arrays of shape (Z, Y, X).

    Negative attributions count as zero. Returns NaN when the top voxels carry
    no positive mass.
    """
    attr = np.clip(np.asarray(attribution, dtype=np.float64).ravel(), 0.0, None)
    ref = np.asarray(reference).ravel() != 0
    k = max(1, int(round(attr.size * top_percent / 100.0)))
    top = np.argpartition(-attr, k - 1)[:k]
    total = attr[top].sum()
    return float(attr[top][ref[top]].sum() / total) if total > 0 else float("nan")


def _area(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule area under ``y(x)``."""
    y = np.asarray(y, dtype=np.float64)
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(np.asarray(x, dtype=np.float64))))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays of shape (N,); NaN when either side is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------- scoring
class RegionProbability:
    """Mean target-class probability over a fixed region, for batches of perturbed images."""

    def __init__(self, segmenter: torch.nn.Module, region: np.ndarray, target_class: int,
                 batch_size: int = 4, device: str | torch.device = "cpu") -> None:
        self.score = RegionScore(segmenter, region, reduction="mean", activation="softmax")
        self.score.to(device).eval()
        self.target_class = int(target_class)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        self.forwards = 0
        self.images = 0

    def __call__(self, n: int, make: Callable[[int], torch.Tensor],
                 progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                 what: str = "perturbations") -> np.ndarray:
        """Scores of the ``n`` images ``make(0)``, …, ``make(n - 1)`` (each ``(Z, Y, X)``)."""
        out = np.empty(n, dtype=np.float64)
        with torch.no_grad():
            for start in range(0, n, self.batch_size):
                check_cancel(cancel, "faithfulness measurement")
                idx = range(start, min(n, start + self.batch_size))
                batch = torch.stack([make(i) for i in idx])[:, None].to(self.device)
                out[start:start + len(idx)] = (
                    self.score(batch)[:, self.target_class].double().cpu().numpy()
                )
                self.forwards += 1
                self.images += len(idx)
                report(progress, (start + len(idx)) / n, f"{what} {start + len(idx)}/{n}")
        return out


def deletion_insertion(score: RegionProbability, image: np.ndarray, attribution: np.ndarray,
                       baseline: np.ndarray, steps: int = 20, seed: int = 0,
                       progress: ProgressCallback | None = None,
                       cancel: CancelCallback | None = None) -> dict:
    """Deletion and insertion curves of one map and their areas.

    ``image``, ``attribution`` and ``baseline`` (what deleted voxels become) are arrays
    of shape (Z, Y, X).

    Returns
    -------
    dict
        ``fractions``, ``deletion``, ``insertion`` (curves, ``steps + 1`` points),
        ``deletion_auc``, ``insertion_auc`` and ``gap`` (insertion minus deletion).
    """
    steps = max(1, int(steps))
    ranks = torch.as_tensor(voxel_ranks(attribution, seed))
    n = ranks.numel()
    counts = [int(round(k * n / steps)) for k in range(steps + 1)]
    fractions = np.array(counts, dtype=np.float64) / n
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))
    base = torch.as_tensor(np.asarray(baseline, dtype=np.float32))
    # Unique images: the original, the full baseline, and the inner steps of both curves.
    inner = list(range(1, steps))
    specs = [("orig", 0), ("base", 0)] + [("del", k) for k in inner] + [("ins", k) for k in inner]

    def make(i: int) -> torch.Tensor:
        kind, k = specs[i]
        if kind == "orig":
            return img
        if kind == "base":
            return base
        removed = ranks < counts[k]
        return torch.where(removed, base, img) if kind == "del" else torch.where(removed, img, base)

    values = score(len(specs), make, progress, cancel, "deletion/insertion step")
    orig, full = values[0], values[1]
    deletion = np.concatenate([[orig], values[2:2 + len(inner)], [full]])
    insertion = np.concatenate([[full], values[2 + len(inner):], [orig]])
    d_auc = _area(deletion, fractions)
    i_auc = _area(insertion, fractions)
    return {
        "fractions": fractions.tolist(), "deletion": deletion.tolist(),
        "insertion": insertion.tolist(), "deletion_auc": d_auc, "insertion_auc": i_auc,
        "gap": i_auc - d_auc,
    }


def block_drops(score: RegionProbability, image: np.ndarray, baseline: np.ndarray,
                blocks: Sequence[tuple[slice, ...]], progress: ProgressCallback | None = None,
                cancel: CancelCallback | None = None) -> np.ndarray:
    """Score drop when each block alone is replaced by the baseline.

    ``image`` and ``baseline`` are arrays of shape (Z, Y, X); the drops an array of
    shape (n_blocks,).
    """
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))
    base = torch.as_tensor(np.asarray(baseline, dtype=np.float32))

    def make(i: int) -> torch.Tensor:
        if i == 0:
            return img
        x = img.clone()
        x[blocks[i - 1]] = base[blocks[i - 1]]
        return x

    values = score(len(blocks) + 1, make, progress, cancel, "random block")
    return values[0] - values[1:]


def faithfulness_correlation(attribution: np.ndarray, blocks: Sequence[tuple[slice, ...]],
                             drops: np.ndarray) -> float:
    """Pearson correlation between score drops and attribution mass of the blocks.

    ``attribution`` is an array of shape (Z, Y, X), ``drops`` of shape (n_blocks,).
    """
    attr = np.asarray(attribution, dtype=np.float64)
    mass = np.array([attr[b].sum() for b in blocks])
    return pearson(mass, drops)


# ---------------------------------------------------------------------------- one call
def evaluate_faithfulness(
    segmenter: torch.nn.Module,
    image: np.ndarray,
    attribution: np.ndarray,
    target_class: int,
    region: np.ndarray,
    *,
    steps: int = 20,
    baseline: str = "blur",
    baseline_sigma: float | None = None,
    n_blocks: int = 32,
    block_fraction: float = 0.125,
    seed: int = 0,
    random_variants: Sequence[str] = RANDOM_VARIANTS,
    smooth_sigma: float | None = None,
    reference: np.ndarray | None = None,
    top_percent: float = 10.0,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> dict:
    """Faithfulness scores of one attribution map, against random maps of equal histogram.

    Parameters
    ----------
    segmenter : torch.nn.Module
        ``(B, 1, Z, Y, X)`` -> ``(B, C, Z, Y, X)`` logits on the image grid
        (see :class:`~CalibSegLib.explain.segmenter.Segmenter`).
    image : numpy.ndarray
        ``(Z, Y, X)`` unperturbed image.
    attribution : numpy.ndarray
        ``(Z, Y, X)`` map to score.
    target_class : int
        Class whose mean probability over ``region`` is tracked.
    region : numpy.ndarray
        ``(Z, Y, X)`` bool region, fixed from the unperturbed prediction.
    steps : int
        Deletion/insertion steps.
    baseline : {"blur", "mean"}
        Replacement for removed voxels (see :func:`baseline_image`).
    n_blocks, block_fraction : int, float
        Random blocks of the faithfulness correlation and their size per dimension.
    seed : int
        Seeds tie-breaking, blocks and random maps: scores are deterministic.
    random_variants : sequence of {"permuted", "smoothed"}
        Random maps to compare with (empty: no comparison).
    smooth_sigma : float, optional
        Smoothing of the ``"smoothed"`` random map, voxels (default: 1/24 of the
        smallest dimension, at least 1).
    reference : numpy.ndarray, optional
        ``(Z, Y, X)`` reference labels; adds ``plausibility`` (activation precision).
    batch_size : int
        Perturbed images per forward pass.

    Returns
    -------
    dict
        ``explanation`` (deletion_auc, insertion_auc, gap, correlation, curves),
        ``random`` (per variant), ``vs_random`` (margin over the best random
        variant; positive is better), ``beats_random``, the settings used, and
        optionally ``plausibility``.
    """
    check_options(baseline, random_variants)
    image = np.asarray(image, dtype=np.float32)
    attribution = np.asarray(attribution, dtype=np.float32)
    if attribution.shape != image.shape:
        raise CalibSegError(
            f"The explanation map has shape {attribution.shape} but the image has {image.shape}; "
            "use a map made on this image's grid.")
    base, base_info = baseline_image(image, baseline, baseline_sigma)
    score = RegionProbability(segmenter, region, target_class, batch_size, device)
    blocks = random_blocks(image.shape, n_blocks, block_fraction, seed)
    if smooth_sigma is None:
        smooth_sigma = max(1.0, min(image.shape) / 24.0)
    maps = {"explanation": attribution}
    for variant in random_variants:
        if variant == "permuted":
            maps[variant] = random_map(attribution, seed + 1)
        else:  # smoothed
            maps[variant] = random_map(attribution, seed + 2, smooth_sigma=smooth_sigma)
    share = 1.0 / (len(maps) + 1)
    drops = block_drops(score, image, base, blocks, scaled(progress, 0.0, share), cancel)
    results = {}
    for i, (name, m) in enumerate(maps.items()):
        sub = scaled(progress, share * (i + 1), share * (i + 2))
        curves = deletion_insertion(score, image, m, base, steps, seed, sub, cancel)
        curves["correlation"] = faithfulness_correlation(m, blocks, drops)
        results[name] = curves
    main = results.pop("explanation")
    out = {
        "target_class": int(target_class),
        "region_voxels": int(np.count_nonzero(region)),
        "score": "mean probability of the target class over the region",
        "baseline": base_info,
        "steps": int(steps),
        "n_blocks": int(n_blocks),
        "block_size": [b.stop - b.start for b in blocks[0]] if blocks else [],
        "seed": int(seed),
        "forward_batches": score.forwards,
        "perturbed_images": score.images,
        "explanation": main,
        "random": {
            name: {k: v for k, v in r.items() if k not in ("fractions",)}
            | ({"smooth_sigma_voxels": float(smooth_sigma)} if name == "smoothed" else {})
            for name, r in results.items()
        },
    }
    if results:
        best_del = min(r["deletion_auc"] for r in results.values())
        best_ins = max(r["insertion_auc"] for r in results.values())
        best_gap = max(r["gap"] for r in results.values())
        best_corr = max(np.nan_to_num(r["correlation"], nan=0.0) for r in results.values())
        vs = {
            "deletion_auc": best_del - main["deletion_auc"],
            "insertion_auc": main["insertion_auc"] - best_ins,
            "gap": main["gap"] - best_gap,
            "correlation": float(np.nan_to_num(main["correlation"], nan=0.0) - best_corr),
        }
        out["vs_random"] = vs
        out["beats_random"] = bool(vs["gap"] > 0 and vs["correlation"] > 0)
    if reference is not None:
        ref = np.asarray(reference) == target_class
        out["plausibility"] = {
            "activation_precision": activation_precision(attribution, ref, top_percent),
            "top_percent": float(top_percent),
            "reference": f"reference segment of class {int(target_class)}",
        }
    report(progress, 1.0, "faithfulness done")
    return out
