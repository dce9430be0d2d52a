"""Reliability statistics on the wire: encoding, the bounded schema, checks, merging.

A site sends ``ReliabilityStats.to_arrays()`` — per case, class and confidence
bin: count, confidence sum, correct sum; per case and class: Dice counts; per
case: NLL / Brier sums. Only numeric arrays travel; case ids do not (the server
names cases ``<site>/<index>``), so no file name or patient identifier leaves a
site. The schema (names, shapes, integer-ness) is derived from the installed
:class:`~CalibSegLib.calibration.ReliabilityStats` itself, so the server checks
exactly what the library would produce: every array's size is
``n_cases x (per-case size)`` with the per-case size depending only on the number
of classes and bins — never on the number of voxels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from CalibSegLib.calibration import ReliabilityStats
from CalibSegLib.federated.protocol import PayloadRejected, check_array


def _stats_class():
    return ReliabilityStats


def case_id(site: str, index: int) -> str:
    """The id of a site's case in pooled statistics."""
    return f"{site}/{index:03d}"


def _reference(n_classes: int, n_bins: int, n_cases: int):
    cls = _stats_class()
    rng = np.random.default_rng(0)
    merged = None
    for i in range(n_cases):
        p = rng.random((n_classes, 2, 2, 2)).astype(np.float32) + 0.1
        p /= p.sum(axis=0, keepdims=True)
        t = (np.arange(8) % n_classes).reshape(2, 2, 2).astype(np.int64)
        s = cls.from_probs(p, t, n_bins=n_bins, image_id=f"ref/{i}")
        merged = s if merged is None else merged.merge(s)
    return merged



@functools.lru_cache(maxsize=32)
def wire_schema(n_classes: int, n_bins: int) -> dict[str, tuple[tuple[int, ...], int, bool]]:
    """Array name -> (shape for ONE case, axis that grows with cases or -1, integer?).

    Only numeric arrays are listed; a non-numeric entry of ``to_arrays`` (case ids)
    is not sent.
    """
    one = _reference(n_classes, n_bins, 1).to_arrays()
    two = _reference(n_classes, n_bins, 2).to_arrays()
    schema = {}
    for key, a in one.items():
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            continue
        b = np.asarray(two[key])
        axes = [i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n]
        axis = axes[0] if axes else -1
        schema[key] = (tuple(a.shape), axis, a.dtype.kind in "biu")
    return schema


def payload_bound(n_classes: int, n_bins: int, n_cases: int) -> int:
    """The largest number of values a statistics payload of ``n_cases`` cases may hold."""
    total = 0
    for shape, axis, _ in wire_schema(n_classes, n_bins).values():
        size = int(np.prod(shape)) if shape else 1
        total += size * (n_cases if axis >= 0 else 1)
    return total


def encode_stats(stats) -> dict[str, np.ndarray]:
    """The numeric arrays of ``stats.to_arrays()`` (what a site sends).

    Each array has the shape :func:`wire_schema` lists, e.g. counts of shape
    (n_cases, C, n_bins) for the per-case bins.
    """
    out = {}
    for key, value in stats.to_arrays().items():
        a = np.asarray(value)
        if a.dtype.kind in "biuf":
            out[key] = np.ascontiguousarray(a)
    return out


def decode_stats(arrays: dict[str, np.ndarray], *, site: str, n_cases: int, n_classes: int,
                 n_bins: int):
    """Check a received statistics payload and rebuild the statistics.

    ``arrays`` maps names to arrays of the shapes :func:`wire_schema` lists, the case
    axis grown to ``n_cases`` (e.g. counts of shape (n_cases, C, n_bins)).

    Raises :class:`PayloadRejected` on unknown or missing arrays, a wrong shape,
    NaN/inf, negative values, non-integer counts, or sums that exceed counts.
    """
    schema = wire_schema(n_classes, n_bins)
    if set(arrays) != set(schema):
        missing, extra = sorted(set(schema) - set(arrays)), sorted(set(arrays) - set(schema))
        raise PayloadRejected(f"stats arrays differ from the schema (missing {missing}, "
                              f"unexpected {extra})")
    checked = {}
    for key, (shape, axis, integer) in schema.items():
        want = list(shape)
        if axis >= 0:
            want[axis] = shape[axis] * n_cases
        checked[key] = check_array(f"stats.{key}", arrays[key], tuple(want), integer=integer)
    _check_sums_within_counts(checked)
    full = dict(checked)
    reference = _reference(n_classes, n_bins, 1).to_arrays()
    for key, value in reference.items():
        if np.asarray(value).dtype.kind not in "biuf":
            full[key] = np.array([case_id(site, i) for i in range(n_cases)])
    try:
        return _stats_class().from_arrays(full)
    except Exception as exc:  # the library's own consistency checks
        raise PayloadRejected(f"the statistics are inconsistent ({exc})") from exc


def _check_sums_within_counts(arrays: dict[str, np.ndarray]) -> None:
    counts = [k for k in arrays if "count" in k and arrays[k].ndim >= 2]
    for key, a in arrays.items():
        if "sum" not in key or key in counts:
            continue
        for ck in counts:
            c = arrays[ck]
            related = c.shape == a.shape and ("conf" in key or "correct" in key)
            if related and np.any(a.astype(np.float64) > c.astype(np.float64) * (1 + 1e-6) + 1e-6):
                raise PayloadRejected(f"stats.{key} exceeds stats.{ck}")


def merge_all(stats: Sequence):
    """Merge a list of statistics (exact: counts add, sums add, new cases append)."""
    merged = None
    for s in stats:
        merged = s if merged is None else merged.merge(s)
    return merged


def per_case(stats) -> list:
    """Split statistics into one object per case."""
    arrays = stats.to_arrays()
    ids = [k for k, v in arrays.items() if np.asarray(v).dtype.kind not in "biuf"]
    n = len(np.asarray(arrays[ids[0]])) if ids else 1
    if n <= 1:
        return [stats]
    out = []
    for i in range(n):
        part = {}
        for key, value in arrays.items():
            a = np.asarray(value)
            if a.ndim and a.shape[0] == n:
                part[key] = a[i:i + 1]
            else:
                part[key] = a
        out.append(type(stats).from_arrays(part))
    return out


def summary_metrics(stats, reduction: str = "micro") -> dict:
    """The scalar metrics of ``stats`` (JSON-ready floats).

    ``"micro"`` (default): computed from the merged statistics — bins summed over every
    case, the numbers a pooled reliability diagram shows. ``"macro"``: per case, then
    the mean over cases (the mL1-ACE paper's dataset numbers).
    """
    out = {}
    for key, value in stats.metrics(reduction).to_dict().items():
        if isinstance(value, int | float | np.integer | np.floating):
            out[key] = float(value)
    return out


def ace_of_cases(cases: Sequence) -> float:
    """ACE of the merged statistics of ``cases``."""
    return float(summary_metrics(merge_all(cases))["ace"])
