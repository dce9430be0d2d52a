"""ReliabilityStats against independent references (plain numpy, MONAI, torchmetrics, netcal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from CalibSegLib.calibration import ReliabilityStats
from CalibSegLib.errors import CalibSegError

B = 20


# ----------------------------------------------------------------------------- references
def ref_edges(n_bins: int) -> np.ndarray:
    # same float32 boundaries as MONAI: linspace(0, 1 + eps32, n_bins + 1)
    return torch.linspace(0.0, 1.0 + torch.finfo(torch.float32).eps, n_bins + 1).numpy()


def ref_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin k with edges[k] < p <= edges[k+1], written as an explicit comparison count."""
    upper = ref_edges(n_bins)[1:]
    p32 = np.asarray(p, dtype=np.float32)
    k = (p32[..., None] > upper).sum(axis=-1)
    return np.minimum(k, n_bins - 1)


def ref_errors(p: np.ndarray, y: np.ndarray, n_bins: int):
    """ECE, ACE, MCE of one set of (probability, outcome) pairs by explicit loops over bins."""
    p = np.asarray(p, dtype=np.float32).astype(np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    k = ref_bins(p, n_bins)
    gaps, weights = [], []
    for b in range(n_bins):
        sel = k == b
        if sel.any():
            gaps.append(abs(p[sel].mean() - y[sel].mean()))
            weights.append(sel.sum())
    gaps, weights = np.array(gaps), np.array(weights)
    return float((gaps * weights).sum() / weights.sum()), float(gaps.mean()), float(gaps.max())


def random_case(rng, c=4, shape=(6, 7, 5), sharp=3.0, dtype=np.float32):
    z = rng.standard_normal((c,) + shape) * sharp
    p = np.exp(z - z.max(0))
    p = (p / p.sum(0)).astype(dtype)
    t = rng.integers(0, c, shape)
    return p, t


def monai_metric(p, t, reduction, include_background, n_bins=B):
    from monai.metrics import CalibrationErrorMetric

    c = p.shape[0]
    onehot = np.eye(c, dtype=np.float32)[t].transpose(3, 0, 1, 2) if t.ndim == 3 else None
    metric = CalibrationErrorMetric(num_bins=n_bins, include_background=include_background,
                                    calibration_reduction=reduction)
    metric(y_pred=torch.from_numpy(np.ascontiguousarray(p[None], dtype=np.float32)),
           y=torch.from_numpy(onehot[None]))
    return metric.aggregate("none")[0].numpy().astype(np.float64)  # per class


# ----------------------------------------------------------------------------- binning
def test_bin_convention_matches_monai_bucketize():
    from CalibSegLib.calibration import bin_index

    e = ref_edges(B)
    p = np.concatenate([e, np.nextafter(e, 2, dtype=np.float32),
                        np.nextafter(e, -1, dtype=np.float32), [0.0, 1.0, 0.05, 0.5, 0.95]])
    p = np.clip(p, 0, 1).astype(np.float32)
    expected = torch.bucketize(torch.from_numpy(p), torch.from_numpy(e[1:]), right=False)
    expected = expected.clamp(max=B - 1).numpy()
    assert np.array_equal(bin_index(p, B), expected)
    assert np.array_equal(ref_bins(p, B), expected)
    # through the fused kernel: counts per bin of a single class
    probs = np.stack([p, 1 - p]).astype(np.float32)
    probs[1] = 1.0 - probs[0]
    s = ReliabilityStats.from_probs(probs, np.zeros(p.size, np.int64), B)
    assert np.array_equal(s.count[0, 0], np.bincount(expected, minlength=B))


# ----------------------------------------------------------------------------- MONAI
ADVERSARIAL = ["random", "edges", "zeros_ones", "empty_class", "single_voxel", "flat"]


def adversarial_case(kind: str, rng):
    c = 3
    if kind == "random":
        return random_case(rng, c)
    if kind == "edges":
        e = ref_edges(B)
        p0 = rng.choice(np.clip(e, 0, 1), size=(4, 4, 4)).astype(np.float32)
        p = np.stack([p0, (1 - p0) / 2, (1 - p0) / 2]).astype(np.float32)
        return p, rng.integers(0, c, (4, 4, 4))
    if kind == "zeros_ones":
        t = rng.integers(0, c, (3, 4, 5))
        p = np.eye(c, dtype=np.float32)[rng.integers(0, c, t.shape)].transpose(3, 0, 1, 2)
        return np.ascontiguousarray(p), t
    if kind == "empty_class":
        p, t = random_case(rng, c)
        return p, np.where(t == 2, 0, t)
    if kind == "single_voxel":
        p, t = random_case(rng, c, shape=(1, 1, 1))
        return p, t
    p = np.full((c, 2, 3, 4), 1.0 / c, np.float32)
    return p, rng.integers(0, c, (2, 3, 4))


@pytest.mark.parametrize("kind", ADVERSARIAL)
@pytest.mark.parametrize("include_background", [True, False])
def test_marginal_errors_equal_monai(kind, include_background):
    rng = np.random.default_rng(ADVERSARIAL.index(kind))
    p, t = adversarial_case(kind, rng)
    s = ReliabilityStats.from_probs(p, t, B)
    m = s.metrics(include_background=include_background, ignore_empty_classes=False)
    first = 0 if include_background else 1
    # the classic MCE (every non-empty bin) is mce_raw; mce applies the minimum-bin-mass rule
    for ours, theirs in (("ece", "expected"), ("ace", "average"), ("mce_raw", "maximum")):
        expected = monai_metric(p, t, theirs, include_background)
        got = np.array([getattr(m.per_class[n], ours) for n in s.names()[first:]])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(getattr(m, f"marginal_{ours}"), np.nanmean(expected),
                                   rtol=1e-5, atol=1e-6)


def test_macro_over_images_equals_monai_mean():
    from monai.metrics import CalibrationErrorMetric

    rng = np.random.default_rng(5)
    cases = [random_case(rng, 3, (5, 5, 5)) for _ in range(4)]
    stats = ReliabilityStats.merge_all(
        ReliabilityStats.from_probs(p, t, B, image_id=f"i{n}") for n, (p, t) in enumerate(cases))
    m = stats.metrics("macro", include_background=False, ignore_empty_classes=False)
    metric = CalibrationErrorMetric(num_bins=B, include_background=False,
                                    calibration_reduction="average")
    for p, t in cases:
        metric(y_pred=torch.from_numpy(p[None]),
               y=torch.from_numpy(np.eye(3, dtype=np.float32)[t].transpose(3, 0, 1, 2)[None]))
    assert m.reduction == "macro"
    np.testing.assert_allclose(m.marginal_ace, float(metric.aggregate()), rtol=1e-5)


# ----------------------------------------------------------------------------- plain numpy
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_numpy_reference_marginal_top_label_dice_nll_brier(seed, backend):
    rng = np.random.default_rng(seed)
    p, t = random_case(rng, 4, (7, 6, 5))
    s = ReliabilityStats.from_probs(p, t, B, backend=backend)
    m = s.metrics(include_background=True, ignore_empty_classes=False)
    for c, name in enumerate(s.names()):
        ece, ace, mce = ref_errors(p[c], t == c, B)
        assert m.per_class[name].ece == pytest.approx(ece, rel=1e-9, abs=1e-12)
        assert m.per_class[name].ace == pytest.approx(ace, rel=1e-9, abs=1e-12)
        assert m.per_class[name].mce_raw == pytest.approx(mce, rel=1e-9, abs=1e-12)
        pred = p.argmax(0) == c
        dice = 2 * (pred & (t == c)).sum() / (pred.sum() + (t == c).sum())
        assert m.dice[name] == pytest.approx(dice, rel=1e-12)
    ece, ace, mce = ref_errors(p.max(0), p.argmax(0) == t, B)
    assert (m.ece, m.ace, m.mce_raw) == pytest.approx((ece, ace, mce), rel=1e-9)
    p64 = p.astype(np.float64)
    pt = np.take_along_axis(p64, t[None], 0)[0]
    assert m.nll == pytest.approx(-np.log(np.maximum(pt, 1e-12)).mean(), rel=1e-9)
    onehot = np.eye(4)[t].transpose(3, 0, 1, 2)
    assert m.brier == pytest.approx(((p64 - onehot) ** 2).sum(0).mean(), rel=1e-9)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_soft_reference_equals_numpy(backend):
    from CalibSegLib.data import sample_case

    case = sample_case("mni-t1", resolution_mm=8.0)
    ref = case.reference_probs.astype(np.float32)
    rng = np.random.default_rng(3)
    noisy = np.clip(ref + 0.1 * rng.random(ref.shape, dtype=np.float32), 0, None)
    probs = (noisy / noisy.sum(0)).astype(np.float32)
    s = ReliabilityStats.from_probs(probs, case.labels, B, reference_probs=ref, backend=backend)
    m = s.metrics(include_background=True, ignore_empty_classes=False)
    for c, name in enumerate(s.names()):
        ece, ace, mce = ref_errors(probs[c], ref[c], B)
        assert m.per_class[name].soft_ace == pytest.approx(ace, rel=1e-6, abs=1e-9)
        assert m.per_class[name].soft_ece == pytest.approx(ece, rel=1e-6, abs=1e-9)
    arg = probs.argmax(0)
    soft_y = np.take_along_axis(ref, arg[None], 0)[0]
    assert m.soft_ece == pytest.approx(ref_errors(probs.max(0), soft_y, B)[0], rel=1e-6)


# ----------------------------------------------------------------------------- other libraries
def test_top_label_ece_equals_torchmetrics():
    """torchmetrics bins with bucketize(right=True) on linspace(0, 1): (edges[k-1], edges[k]]
    ... then subtracts one, i.e. left-closed bins [k/B, (k+1)/B) with p = 1.0 alone in an extra
    slot merged into the last bin. Ours are right-closed. Away from the bin edges the two agree.
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(0)
    p, t = random_case(rng, 4, (20, 20, 10), sharp=1.5)
    edges = ref_edges(B)
    near_edge = np.abs(p.max(0)[..., None] - edges).min(-1) < 1e-6
    assert not near_edge.any()
    s = ReliabilityStats.from_probs(p, t, B)
    tm = multiclass_calibration_error(torch.from_numpy(p.reshape(4, -1).T),
                                      torch.from_numpy(t.reshape(-1)), num_classes=4, n_bins=B,
                                      norm="l1")
    assert s.metrics().ece == pytest.approx(float(tm), rel=1e-5)
    tm_max = multiclass_calibration_error(torch.from_numpy(p.reshape(4, -1).T),
                                          torch.from_numpy(t.reshape(-1)), num_classes=4,
                                          n_bins=B, norm="max")
    assert s.metrics().mce_raw == pytest.approx(float(tm_max), rel=1e-5)


def test_top_label_ece_equals_netcal():
    from netcal.metrics import ECE

    rng = np.random.default_rng(1)
    p, t = random_case(rng, 3, (10, 10, 10), sharp=1.0)
    s = ReliabilityStats.from_probs(p, t, B)
    value = ECE(bins=B).measure(p.reshape(3, -1).T.astype(np.float64), t.reshape(-1))
    assert s.metrics().ece == pytest.approx(float(value), rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- reductions
def test_micro_pools_bins_and_reports_reduction():
    rng = np.random.default_rng(7)
    (p1, t1), (p2, t2) = random_case(rng, 3, (4, 4, 4)), random_case(rng, 3, (3, 5, 4))
    s = ReliabilityStats.from_probs(p1, t1, B, image_id="a").merge(
        ReliabilityStats.from_probs(p2, t2, B, image_id="b"))
    micro = s.metrics("micro", include_background=True)
    p = np.concatenate([p1.reshape(3, -1), p2.reshape(3, -1)], 1)
    t = np.concatenate([t1.ravel(), t2.ravel()])
    assert micro.reduction == "micro"
    assert micro.ace == pytest.approx(ref_errors(p.max(0), p.argmax(0) == t, B)[1], rel=1e-9)
    macro = s.metrics("macro", include_background=True)
    per = [ref_errors(q.reshape(3, -1).max(0), q.reshape(3, -1).argmax(0) == r.ravel(), B)[1]
           for q, r in ((p1, t1), (p2, t2))]
    assert macro.ace == pytest.approx(np.mean(per), rel=1e-9)
    rows = s.per_image_metrics(include_background=True)
    assert list(rows) == ["a", "b"]
    assert rows["b"].ace == pytest.approx(per[1], rel=1e-9)


def test_ignore_empty_classes_and_background():
    rng = np.random.default_rng(8)
    p, t = random_case(rng, 3, (5, 5, 5))
    t = np.where(t == 2, 1, t)
    s = ReliabilityStats.from_probs(p, t, B)
    m = s.metrics(ignore_empty_classes=True)
    assert np.isnan(m.per_class["class 2"].ace)
    assert m.marginal_ace == pytest.approx(m.per_class["class 1"].ace)
    m2 = s.metrics(ignore_empty_classes=False)
    assert m2.per_class["class 2"].ace == pytest.approx(ref_errors(p[2], t == 2, B)[1])
    assert m2.include_background is False
    assert m2.n_bins == B


# ----------------------------------------------------------------------------- diagrams
def test_reliability_diagram_nan_for_empty_bins_and_histogram():
    rng = np.random.default_rng(9)
    p, t = random_case(rng, 3, (4, 4, 4), sharp=0.2)
    s = ReliabilityStats.from_probs(p, t, B)
    d = s.reliability_diagram(None)
    empty = d["counts"] == 0
    assert empty.any() and (~empty).any()
    assert np.isnan(d["observed_frequency"][empty]).all()
    assert np.isnan(d["mean_confidence"][empty]).all()
    assert np.isfinite(d["observed_frequency"][~empty]).all()
    assert d["bin_edges"].shape == (B + 1,) and d["bin_centres"].shape == (B,)
    stats = ReliabilityStats.merge_all(
        ReliabilityStats.from_probs(*random_case(rng, 3, (4, 4, 4)), B, image_id=str(i))
        for i in range(5))
    h = stats.dataset_reliability_histogram(1)
    assert h.shape == (B, B)
    filled = ~np.isnan(h).all(0)
    np.testing.assert_allclose(h[:, filled].sum(0), 1.0)
    # column k counts images by the frequency bin of their observed frequency in bin k
    freq = stats.sum_y[:, 1] / np.where(stats.count[:, 1] > 0, stats.count[:, 1], 1)
    k = int(np.argmax(filled))
    present = stats.count[:, 1, k] > 0
    rows = np.minimum((freq[present, k] * B).astype(int), B - 1)
    np.testing.assert_allclose(h[:, k], np.bincount(rows, minlength=B) / present.sum())


# ----------------------------------------------------------------------------- properties
@st.composite
def volumes(draw):
    c = draw(st.integers(2, 4))
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    sharp = draw(st.sampled_from([0.1, 1.0, 5.0]))
    rng = np.random.default_rng(seed)
    p, t = random_case(rng, c, (n,), sharp=sharp)
    return p, t, rng


def _assert_same(a: ReliabilityStats, b: ReliabilityStats):
    assert a.allclose(b, rtol=1e-9, atol=1e-9)
    for name in ("count", "top_count", "intersection", "predicted", "reference", "n_voxels"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@settings(max_examples=25, deadline=None)
@given(volumes(), st.data())
def test_merge_of_any_chunk_split_equals_whole(vol, data):
    p, t, rng = vol
    n = t.size
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    bounds = [0, *cuts, n]
    parts = [ReliabilityStats.from_probs(p[:, a:b], t[a:b], B, image_id="x")
             for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    order = data.draw(st.permutations(range(len(parts))))
    merged = ReliabilityStats.merge_all([parts[i] for i in order])
    _assert_same(merged, ReliabilityStats.from_probs(p, t, B, image_id="x"))
    perm = rng.permutation(n)
    _assert_same(ReliabilityStats.from_probs(p[:, perm], t[perm], B, image_id="x"),
                 ReliabilityStats.from_probs(p, t, B, image_id="x"))


@settings(max_examples=15, deadline=None)
@given(st.lists(volumes(), min_size=2, max_size=4), st.data())
def test_merge_of_image_sets_in_any_order(vols, data):
    c = vols[0][0].shape[0]
    stats = [ReliabilityStats.from_probs(p[:c] / p[:c].sum(0), t % c, B, image_id=f"im{i}")
             for i, (p, t, _) in enumerate(vols) if p.shape[0] >= c]
    order = data.draw(st.permutations(range(len(stats))))
    a = ReliabilityStats.merge_all(stats)
    b = ReliabilityStats.merge_all([stats[i] for i in order])
    _assert_same(a.select(a.image_ids), b.select(a.image_ids))
    for key in ("ece", "ace", "mce", "marginal_ace", "nll", "brier"):
        assert getattr(a.metrics(), key) == pytest.approx(getattr(b.metrics(), key), rel=1e-9,
                                                          nan_ok=True)


@settings(max_examples=15, deadline=None)
@given(volumes())
def test_round_trips(vol):
    import json

    p, t, _ = vol
    s = ReliabilityStats.from_probs(p, t, B, image_id="a", class_names=[f"c{i}" for i in
                                                                        range(p.shape[0])])
    back = ReliabilityStats.from_dict(json.loads(json.dumps(s.to_dict())))
    _assert_same(back, s)
    assert back.class_names == s.class_names and back.image_ids == s.image_ids
    _assert_same(ReliabilityStats.from_arrays(s.to_arrays()), s)


@settings(max_examples=15, deadline=None)
@given(volumes())
def test_numba_path_equals_torch_path(vol):
    p, t, _ = vol
    a = ReliabilityStats.from_probs(p, t, B, backend="numba")
    b = ReliabilityStats.from_probs(torch.from_numpy(p), torch.from_numpy(t), B,
                                    backend="torch")
    _assert_same(a, b)


@pytest.mark.parametrize("n_bins", [1, 7, 20, 64])
def test_large_masked_volume_with_edges_and_soft_reference_equals_torch_path(n_bins):
    """Several kernel blocks and flushes, a mask, NaN outside it, values on bin edges."""
    rng = np.random.default_rng(21 + n_bins)
    p, t = random_case(rng, 5, (31, 40, 27), sharp=4.0)
    flat = p.reshape(5, -1)
    edges = ref_edges(n_bins)
    # two-class voxels exactly on (and one float32 step either side of) every bin edge
    spots = rng.choice(flat.shape[1], size=(3, n_bins + 1), replace=False)
    for shift, column in zip((0, 1, -1), spots):
        v = np.clip(np.nextafter(edges, 2 * shift, dtype=np.float32) if shift else edges, 0, 1)
        flat[:, column] = 0.0
        flat[0, column] = v
        flat[1, column] = 1.0 - v
    soft = rng.dirichlet(np.ones(5), size=t.size).T.reshape(p.shape).astype(np.float32)
    mask = rng.random(t.shape) < 0.7
    p[:, ~mask] = np.nan  # outside the mask nothing is read into the statistics
    a = ReliabilityStats.from_probs(p, t, n_bins, mask=mask, reference_probs=soft)
    b = ReliabilityStats.from_probs(torch.from_numpy(p), torch.from_numpy(t), n_bins,
                                    mask=torch.from_numpy(mask),
                                    reference_probs=torch.from_numpy(soft), backend="torch")
    for name in ("count", "top_count", "intersection", "predicted", "reference", "n_voxels"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # fixed-point sums: each probability rounded to a multiple of 2**-34
    for name in ("sum_p", "sum_y", "top_sum_p", "top_sum_y", "soft_y", "top_soft_y"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9,
                                   atol=mask.sum() * 2.0 ** -35, err_msg=name)
    for name in ("nll_sum", "brier_sum"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, err_msg=name)
    assert a.n_voxels[0] == mask.sum()
    expected = np.bincount(ref_bins(flat[:, mask.reshape(-1)], n_bins).reshape(-1)
                           + np.repeat(np.arange(5), mask.sum()) * n_bins,
                           minlength=5 * n_bins).reshape(5, n_bins)
    assert np.array_equal(a.count[0], expected)


def test_saturated_volume_fills_one_bin_exactly():
    """Every voxel in the same bin (e.g. background far from the head): no field overflows."""
    n = 300_001
    p = np.zeros((3, n), np.float32)
    p[0] = 1.0
    t = np.zeros(n, np.uint8)
    t[::7] = 1
    s = ReliabilityStats.from_probs(p, t, B)
    assert s.count[0, 0, B - 1] == n and s.count[0, 1:, 0].tolist() == [n, n]
    assert s.sum_p[0, 0, B - 1] == n and s.sum_y[0, 1, 0] == t.sum()
    assert s.top_count[0, B - 1] == n and s.top_sum_p[0, B - 1] == n
    assert s.top_sum_y[0, B - 1] == n - t.sum() == s.intersection[0, 0]


def test_bounded_size_and_chunks_and_dtypes():
    rng = np.random.default_rng(11)
    p, t = random_case(rng, 3, (30, 20, 10))
    whole = ReliabilityStats.from_probs(p, t, B)
    chunked = ReliabilityStats.from_probs(p, t.astype(np.uint8), B, chunk_voxels=997)
    _assert_same(whole, chunked)
    half = ReliabilityStats.from_probs(p.astype(np.float16).astype(np.float32), t, B)
    assert np.array_equal(ReliabilityStats.from_probs(p.astype(np.float16), t, B).count,
                          half.count)
    small = ReliabilityStats.from_probs(p[:, :2], t[:2], B).to_arrays()
    assert {k: np.asarray(v).size for k, v in small.items()} == \
        {k: np.asarray(v).size for k, v in whole.to_arrays().items()}
    before = p.copy()
    ReliabilityStats.from_probs(p, t, B, mask=t > 0)
    assert np.array_equal(p, before)
    masked = ReliabilityStats.from_probs(p, t, B, mask=t > 0)
    assert masked.n_voxels[0] == (t > 0).sum()


def test_perfectly_calibrated_data_has_small_ace():
    rng = np.random.default_rng(12)
    n = 400_000
    conf = rng.uniform(0.0, 1.0, n).astype(np.float32)
    p = np.stack([conf, 1 - conf]).astype(np.float32)
    p[1] = 1.0 - p[0]
    t = np.where(rng.random(n) < p[0], 0, 1)
    m = ReliabilityStats.from_probs(p, t, B).metrics(include_background=True,
                                                     ignore_empty_classes=False)
    # per bin ~20000 samples: standard error of the frequency ≤ 0.0036
    assert m.marginal_ace < 0.01
    assert m.marginal_mce < 0.02


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", ["shape", "label_high", "label_negative", "nan", "sum", "bins",
                                 "soft_shape", "mask_shape"])
def test_user_errors_raise_calibseg_error(bad):
    rng = np.random.default_rng(13)
    p, t = random_case(rng, 3, (4, 4, 4))
    kwargs = {}
    if bad == "shape":
        t = t[:3]
    elif bad == "label_high":
        t = t.copy()
        t[0, 0, 0] = 3
    elif bad == "label_negative":
        t = t.copy()
        t[0, 0, 0] = -1
    elif bad == "nan":
        p = p.copy()
        p[1, 0, 0, 0] = np.nan
    elif bad == "sum":
        p = p * 2
    elif bad == "bins":
        kwargs["n_bins"] = 0
    elif bad == "soft_shape":
        kwargs["reference_probs"] = p[:2]
    elif bad == "mask_shape":
        kwargs["mask"] = np.ones((4, 4), bool)
    with pytest.raises(CalibSegError):
        ReliabilityStats.from_probs(p, t, **kwargs)


def test_merge_mismatch_raises():
    rng = np.random.default_rng(14)
    a = ReliabilityStats.from_probs(*random_case(rng, 3, (3, 3, 3)), 20)
    b = ReliabilityStats.from_probs(*random_case(rng, 3, (3, 3, 3)), 10)
    with pytest.raises(CalibSegError):
        a.merge(b)


def test_parallel_tasks_equal_one_thread_and_do_not_depend_on_scheduling(monkeypatch):
    """Many small tasks on three threads: counts exact, sums equal to rounding, and two
    runs bit-identical (fixed task bounds and merge order)."""
    from CalibSegLib.calibration import kernels

    rng = np.random.default_rng(5)
    p, t = random_case(rng, 4, (23, 31, 29), sharp=3.0)
    flat, labels = p.reshape(4, -1), t.reshape(-1)
    n = flat.shape[1]
    edges = ref_edges(B)

    def run(threads):
        acc = kernels.Accumulators(4, B, False)
        kernels.accumulate_numba(acc, flat, 0, labels, 0, n, edges, threads=threads)
        return acc

    one = run(1)
    monkeypatch.setattr(kernels, "_SMALLEST_TASK", 997)  # many uneven tasks
    monkeypatch.setattr(kernels, "_MIN_PER_THREAD", 1)
    first, second = run(3), run(3)
    for name in vars(one):
        a, b, c = getattr(one, name), getattr(first, name), getattr(second, name)
        assert np.array_equal(b, c), name
        if a.dtype.kind == "i":
            assert np.array_equal(a, b), name
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9, err_msg=name)
    assert one.count.sum() == 4 * n


def test_run_tasks_runs_every_task_once_and_raises_errors():
    import threading

    from CalibSegLib.threads import run_tasks

    seen = []
    lock = threading.Lock()

    def work(i):
        with lock:
            seen.append(i)

    run_tasks(work, 50, 3)
    assert sorted(seen) == list(range(50))
    run_tasks(work, 0, 3)
    assert len(seen) == 50

    def fails(i):
        if i == 7:
            raise ValueError("task 7")

    with pytest.raises(ValueError, match="task 7"):
        run_tasks(fails, 20, 2)


@pytest.mark.parametrize("n,threads,smallest", [(0, 2, 10), (1, 2, 10), (1000, 2, 10),
                                                (12345, 3, 100), (10, 4, 1000)])
def test_guided_bounds_cover_the_range_with_shrinking_tasks(n, threads, smallest):
    from CalibSegLib.threads import guided_bounds

    bounds = guided_bounds(n, threads, smallest)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == n and (sizes > 0).all()
    assert (np.diff(sizes[:-1]) <= 0).all()  # never growing, but for the remainder
    assert (sizes[:-1] >= min(smallest, n)).all()
    assert guided_bounds(n, threads, smallest) == bounds
