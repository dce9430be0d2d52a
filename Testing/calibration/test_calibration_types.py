"""The calibration core's types: the metrics result and its JSON layout, the named options,
the accumulator slots and kernel invariants, identity equality, the torch fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from CalibSegLib.calibration import (
    DiceCEL1ACELoss,
    HardL1ACELoss,
    ReliabilityMetric,
    ReliabilityStats,
    backend,
)
from CalibSegLib.calibration.accumulators import Accumulators, Scalar, check_kernel_inputs
from CalibSegLib.calibration.binning import bin_edges
from CalibSegLib.calibration.modes import Backend, Binning, LossReduction, Reduction
from CalibSegLib.calibration.reliability_metrics import ClassMetrics, ReliabilityMetrics
from CalibSegLib.errors import CalibSegError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B = 10
#: The JSON layout of ReliabilityStats.metrics() that files, reports and payloads rely on.
TOP_KEYS = ["reduction", "include_background", "ignore_empty_classes", "n_bins",
            "min_bin_fraction", "min_bin_count", "n_images", "n_voxels", "ece", "ace", "mce",
            "mce_raw", "marginal_ece", "marginal_ace", "marginal_mce", "marginal_mce_raw",
            "per_class", "dice", "mean_dice", "nll", "brier"]
SOFT_KEYS = ["soft_ece", "soft_ace", "soft_mce", "soft_mce_raw", "soft_marginal_ece",
             "soft_marginal_ace", "soft_marginal_mce", "soft_marginal_mce_raw"]
CLASS_KEYS = ["ece", "ace", "mce", "mce_raw", "dice"]


def case(seed: int, c: int = 3, shape=(7, 6, 5), soft: bool = False):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((c,) + shape) * 2.5
    p = np.exp(z - z.max(0))
    p = (p / p.sum(0)).astype(np.float32)
    t = rng.integers(0, c, shape)
    r = None
    if soft:
        r = rng.random((c,) + shape).astype(np.float32)
        r /= r.sum(0)
    return p, t, r


def cohort(soft: bool) -> ReliabilityStats:
    parts = []
    for i in range(3):
        p, t, r = case(i, soft=soft)
        parts.append(ReliabilityStats.from_probs(p, t, B, image_id=f"im{i}", reference_probs=r,
                                                 class_names=["bg", "a", "b"]))
    return ReliabilityStats.merge_all(parts)


def same_json(a: dict, b: dict) -> bool:
    """Equal as written to JSON (NaN equals NaN there)."""
    return json.dumps(a) == json.dumps(b)


# ----------------------------------------------------------------------------- metrics result
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["macro", "micro"])
def test_to_dict_keeps_the_json_layout(soft, reduction):
    m = cohort(soft).metrics(reduction)
    assert isinstance(m, ReliabilityMetrics) and m.has_soft_reference is soft
    d = m.to_dict()
    assert list(d) == TOP_KEYS + (SOFT_KEYS if soft else [])
    assert list(d["per_class"]) == ["bg", "a", "b"] and list(d["dice"]) == ["bg", "a", "b"]
    for name, entry in d["per_class"].items():
        assert list(entry) == CLASS_KEYS + ([f"soft_{k}" for k in CLASS_KEYS[:4]] if soft else [])
        assert entry["dice"] == d["dice"][name] == m.per_class[name].dice
    # plain JSON types only (the reduction is written as its string)
    assert type(d["reduction"]) is str and d["reduction"] == reduction
    text = json.dumps(d)
    assert f'"reduction": "{reduction}"' in text
    for key in TOP_KEYS:
        if key not in ("per_class", "dice", "reduction"):
            assert d[key] == getattr(m, key) or (np.isnan(d[key]) and np.isnan(getattr(m, key)))
    # the typed fields are the numbers the functional core gives
    assert 0.0 <= m.ece <= 1.0 and 0.0 <= m.marginal_ace <= 1.0 and m.nll >= 0.0
    assert 0.0 <= m.brier <= 2.0 and m.n_images == 3 and m.n_voxels == 3 * 7 * 6 * 5


def test_metrics_result_is_frozen_and_typed():
    m = cohort(False).metrics()
    with pytest.raises(AttributeError):
        m.ece = 0.0  # type: ignore[misc]
    assert isinstance(m.per_class["a"], ClassMetrics) and m.per_class["a"].soft_ece is None
    assert m.reduction is Reduction.MACRO and m.soft_marginal_ace is None
    assert m.mean_dice == pytest.approx(np.mean([m.per_class[n].dice for n in ("a", "b")]))


def test_per_image_metrics_and_metric_class_give_the_typed_result():
    stats = cohort(False)
    rows = stats.per_image_metrics()
    assert list(rows) == stats.image_ids
    assert same_json(rows["im1"].to_dict(), stats.select(["im1"]).metrics().to_dict())
    metric = ReliabilityMetric(n_bins=B, class_names=["bg", "a", "b"])
    for i in range(3):
        p, t, _ = case(i)
        metric(p, t, image_id=f"im{i}")
    assert same_json(metric.aggregate().to_dict(), stats.metrics().to_dict())


# ----------------------------------------------------------------------------- modes
def test_modes_are_their_strings():
    assert Reduction.MACRO == "macro" and str(Reduction.MICRO) == "micro"
    assert f"{Backend.TORCH}" == "torch" and json.dumps(Binning.SOFT) == '"soft"'
    assert Reduction.from_user("micro", "reduction") is Reduction.MICRO
    assert LossReduction.parse(LossReduction.SUM, "reduction") is LossReduction.SUM


def test_a_mode_a_user_typed_is_one_clear_error():
    stats = cohort(False)
    with pytest.raises(CalibSegError, match=r"reduction must be one of 'macro', 'micro'; "
                                            r"got 'average'"):
        stats.metrics("average")
    with pytest.raises(CalibSegError, match="reduction"):
        ReliabilityMetric(reduction="mean")


def test_a_mode_code_misspelt_is_a_programmer_error():
    p, t, _ = case(0)
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'numba', 'torch'"):
        ReliabilityStats.from_probs(p, t, B, backend="gpu")
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none'"):
        HardL1ACELoss(reduction="avg")
    with pytest.raises(ValueError, match="ace must be one of 'none', 'hard', 'soft'"):
        DiceCEL1ACELoss(ace="medium")


# ----------------------------------------------------------------------------- stats identity
def test_stats_compare_by_identity_and_allclose():
    a = cohort(False)
    b = a.select(a.image_ids)
    assert a == a and (a == b) is False and a != b  # no "truth value of an array" error
    assert a.allclose(b) and b.allclose(a)
    changed = a.select(a.image_ids)
    changed.sum_p[0, 1, 2] += 1e-3
    assert not a.allclose(changed)
    assert not a.allclose(a.select(a.image_ids[::-1]))


# ----------------------------------------------------------------------------- accumulators
def test_named_slots_hold_the_scalars():
    p, t, _ = case(4)
    t = t.copy()
    t[0, 0, :3] = 7  # three labels the model does not know
    acc = Accumulators(3, B, soft=False)
    n = t.size
    backend.numba_kernel()(acc, p.reshape(3, -1), 0, t.reshape(-1), 0, n, bin_edges(B))
    assert acc.scalar(Scalar.BAD_LABELS) == 3 and acc.scalar(Scalar.VOXELS) == n - 3
    assert acc.scalar(Scalar.NAN_VALUES) == 0 and acc.scalar(Scalar.BAD_SUMS) == 0
    flat_p, flat_t = p.reshape(3, -1).astype(np.float64), t.reshape(-1)
    ok = flat_t < 3
    pt = flat_p[flat_t[ok], np.flatnonzero(ok)]
    assert acc.scalar(Scalar.NLL) == pytest.approx(-np.log(pt).sum(), rel=1e-9)
    onehot = np.eye(3)[flat_t[ok]].T
    assert acc.scalar(Scalar.BRIER) == pytest.approx(((flat_p[:, ok] - onehot) ** 2).sum(),
                                                     rel=1e-9)


def test_kernel_inputs_are_checked_where_they_enter():
    p, t, _ = case(5)
    probs, labels, edges = p.reshape(3, -1), t.reshape(-1), bin_edges(B)
    acc = Accumulators(3, B, soft=False)
    n = labels.size
    check_kernel_inputs(acc, probs, 0, labels, 0, n, edges, None, 0, None)
    bad = [
        (probs.astype(np.float64), labels, edges, n),       # not float32
        (probs, labels, edges, n + 1),                        # reads past the end
        (probs, labels.astype(np.float32), edges, n),         # labels not integers
        (probs, labels, np.linspace(0, 1, B + 1).astype(np.float32) ** 2, n),  # not the edges
        (probs, labels, bin_edges(B + 1), n),                 # bins differ from acc
    ]
    for probs_, labels_, edges_, n_ in bad:
        with pytest.raises(AssertionError):
            check_kernel_inputs(acc, probs_, 0, labels_, 0, n_, edges_, None, 0, None)


# ----------------------------------------------------------------------------- fallback
_NO_NUMBA = r"""
import json, sys, warnings
sys.modules["numba"] = None  # importing numba now fails, as where it is not installed
import numpy as np
from CalibSegLib.calibration import ReliabilityStats
from CalibSegLib.calibration.backend import KernelFallbackWarning
data = np.load(sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = ReliabilityStats.from_probs(data["p"], data["t"], int(data["bins"]),
                                        reference_probs=data["r"], backend="numba")
    second = ReliabilityStats.from_probs(data["p"], data["t"], int(data["bins"]),
                                         reference_probs=data["r"])
assert "CalibSegLib.calibration.kernels" not in sys.modules
assert first.allclose(second, rtol=0, atol=0)
print(json.dumps({"stats": first.to_dict(),
                  "warnings": [str(w.message) for w in caught
                               if issubclass(w.category, KernelFallbackWarning)]}))
"""


def test_without_numba_the_torch_back_end_gives_the_same_statistics(tmp_path):
    p, t, r = case(6, c=4, shape=(9, 8, 7), soft=True)
    np.savez(tmp_path / "case.npz", p=p, t=t, r=r, bins=B)
    run = subprocess.run([sys.executable, "-c", _NO_NUMBA, str(tmp_path / "case.npz")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(out["warnings"]) == 1 and "numba" in out["warnings"][0]
    fallback = ReliabilityStats.from_dict(out["stats"])
    compiled = ReliabilityStats.from_probs(p, t, B, reference_probs=r, backend="numba")
    assert fallback.allclose(compiled, rtol=1e-9, atol=1e-9)
    a, b = fallback.metrics().to_dict(), compiled.metrics().to_dict()
    for key in ("ece", "ace", "marginal_ace", "soft_marginal_ace", "nll", "brier", "mean_dice"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key


def test_a_kernel_that_does_not_compile_falls_back_once(monkeypatch):
    from numba.core.errors import TypingError

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise TypingError("cannot type this kernel")

    monkeypatch.setattr(backend, "_accumulate_numba", broken)
    monkeypatch.setattr(backend, "_UNAVAILABLE", None)
    monkeypatch.setattr(backend, "_warned", False)
    p, t, _ = case(7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ReliabilityStats.from_probs(p, t, B)
        second = ReliabilityStats.from_probs(p, t, B, backend="numba")
    fallback = [w for w in caught if issubclass(w.category, backend.KernelFallbackWarning)]
    assert len(fallback) == 1 and "does not compile" in str(fallback[0].message)
    assert len(calls) == 1  # the kernel is not tried again in this process
    torch_path = ReliabilityStats.from_probs(torch.from_numpy(p), torch.from_numpy(t), B,
                                             backend="torch")
    assert first.allclose(torch_path, rtol=0, atol=0) and second.allclose(torch_path)
