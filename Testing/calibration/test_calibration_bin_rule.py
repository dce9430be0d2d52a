"""The minimum-bin-mass rule: hand-made statistics, metrics, diagram bins and the drawn figure."""

from __future__ import annotations

import numpy as np
import pytest

from CalibSegLib.calibration import (
    MIN_BIN_COUNT,
    MIN_BIN_FRACTION,
    DiagramBins,
    ReliabilityStats,
    plot_reliability_diagram,
    reliable_bins,
)

B = 10


def hand_made(bins: dict[int, tuple[int, float, float]]) -> ReliabilityStats:
    """One image, two classes; top label and class 1 share ``bins`` {bin: (count, p, y)}."""
    count = np.zeros(B, np.int64)
    sum_p = np.zeros(B)
    sum_y = np.zeros(B)
    for k, (n, p, y) in bins.items():
        count[k], sum_p[k], sum_y[k] = n, n * p, n * y
    total = int(count.sum())
    per_class = np.stack([count[::-1], count])[None]
    return ReliabilityStats(
        image_ids=["hand"], n_bins=B,
        count=per_class, sum_p=np.stack([count[::-1] - sum_p[::-1], sum_p])[None],
        sum_y=np.stack([count[::-1] - sum_y[::-1], sum_y])[None],
        soft_y=np.zeros((1, 0, B)), top_count=count[None], top_sum_p=sum_p[None],
        top_sum_y=sum_y[None], top_soft_y=np.zeros((1, 0)),
        intersection=np.array([[total // 2, total // 2]]),
        predicted=np.array([[total // 2, total - total // 2]]),
        reference=np.array([[total // 2, total - total // 2]]),
        nll_sum=np.array([0.1 * total]), brier_sum=np.array([0.05 * total]),
        n_voxels=np.array([total]), class_names=("background", "tissue"))


# bin 9: 10 000 voxels, conf 0.95, acc 0.94; bin 7: 500 voxels, conf 0.75, acc 0.65;
# bin 5: one voxel, conf 0.55, wrong (gap 0.55)
CASE = {9: (10_000, 0.95, 0.94), 7: (500, 0.75, 0.65), 5: (1, 0.55, 0.0)}


def test_rule_constants_and_thresholds():
    assert (MIN_BIN_FRACTION, MIN_BIN_COUNT) == (1e-3, 100)
    # small diagram: the absolute count decides; large one: the fraction decides
    np.testing.assert_array_equal(reliable_bins(np.array([0, 99, 100, 5000])),
                                  [False, False, True, True])
    big = np.array([999, 1000, 998_001])  # total 1 000 000 -> threshold 1000
    np.testing.assert_array_equal(reliable_bins(big), [False, True, True])


def test_mce_leaves_out_sparse_bins_and_keeps_the_raw_value():
    m = hand_made(CASE).metrics(include_background=True)
    assert m.mce == pytest.approx(0.10, abs=1e-12)      # bin 7, not the single voxel
    assert m.mce_raw == pytest.approx(0.55, abs=1e-12)  # the classic definition
    assert m.per_class["tissue"].mce == pytest.approx(0.10, abs=1e-12)
    assert m.per_class["tissue"].mce_raw == pytest.approx(0.55, abs=1e-12)
    assert (m.min_bin_fraction, m.min_bin_count) == (MIN_BIN_FRACTION, MIN_BIN_COUNT)
    # ECE is count-weighted and ACE keeps the paper's definition: both see every bin
    total = 10_501
    assert m.ece == pytest.approx((10_000 * 0.01 + 500 * 0.10 + 0.55) / total, abs=1e-12)
    assert m.ace == pytest.approx((0.01 + 0.10 + 0.55) / 3, abs=1e-12)
    # switching the rule off gives the classic MCE
    off = hand_made(CASE).metrics(min_bin_fraction=0, min_bin_count=0)
    assert off.mce == pytest.approx(0.55, abs=1e-12)


def test_mce_is_nan_when_no_bin_is_reliable():
    m = hand_made({3: (5, 0.35, 0.0), 9: (40, 0.95, 1.0)}).metrics()
    assert np.isnan(m.mce)
    assert m.mce_raw == pytest.approx(0.35)


def test_diagram_bins_is_typed_and_flags_every_bin():
    d = hand_made(CASE).diagram_bins()
    assert isinstance(d, DiagramBins)
    assert d.label == "top label" and d.n_bins == B and d.total == 10_501
    assert d.min_count == 100
    np.testing.assert_array_equal(np.flatnonzero(d.reliable), [7, 9])
    np.testing.assert_array_equal(np.flatnonzero(d.sparse), [5])
    assert d.count[5] == 1 and np.isnan(d.accuracy[0]) and d.count[0] == 0
    np.testing.assert_allclose(d.confidence[[5, 7, 9]], [0.55, 0.75, 0.95])
    np.testing.assert_allclose(d.accuracy[[5, 7, 9]], [0.0, 0.65, 0.94])
    assert (d.mce, d.mce_raw) == pytest.approx((0.10, 0.55))
    assert d.fraction.sum() == pytest.approx(1.0)
    assert hand_made(CASE).diagram_bins(1).label == "tissue"
    legacy = hand_made(CASE).reliability_diagram()
    np.testing.assert_array_equal(legacy["reliable"], d.reliable)
    assert legacy["mce"] == d.mce and legacy["mce_raw"] == d.mce_raw


def test_metrics_and_diagram_agree_on_pooled_statistics():
    stats = hand_made(CASE)
    assert stats.metrics("micro").mce == stats.diagram_bins().mce


def test_figure_greys_out_sparse_bins_with_their_count():
    fig = plot_reliability_diagram({"m": hand_made(CASE)})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "n=1" in texts
    assert any("minimum bin mass 100 voxels" in t for t in texts)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("MCE 0.100 (raw 0.550)" in t for t in legend)
    assert any("greyed out" in t for t in legend)
