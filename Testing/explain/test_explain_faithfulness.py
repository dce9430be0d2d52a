"""Faithfulness metrics on a toy segmenter whose true evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from CalibSegLib.explain.faithfulness import (
    activation_precision,
    baseline_image,
    deletion_insertion,
    evaluate_faithfulness,
    faithfulness_correlation,
    random_blocks,
    random_map,
    voxel_ranks,
)
from CalibSegLib.explain.segmenter import Segmenter

SHAPE = (24, 24, 24)
BLOCK = (slice(4, 10), slice(4, 10), slice(4, 10))


class BlockMeanNet(nn.Module):
    """Class-1 logit everywhere = 4 * (mean intensity inside BLOCK - 0.5); class 0 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[(slice(None), slice(None), *BLOCK)].mean(dim=(1, 2, 3, 4))
        one = (4.0 * (m - 0.5))[:, None, None, None, None].expand(-1, 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(one), one], dim=1)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 0.1, SHAPE).astype(np.float32)
    image[BLOCK] += 1.0
    true_map = np.zeros(SHAPE, np.float32)
    true_map[BLOCK] = 1.0
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    wrong_map = np.sqrt((zz - 7) ** 2 + (yy - 7) ** 2 + (xx - 7) ** 2).astype(np.float32)
    region = np.ones(SHAPE, bool)
    return Segmenter(BlockMeanNet()), image, true_map, wrong_map, region


def _scores(toy, attribution, **kw):
    seg, image, _, _, region = toy
    kw.setdefault("baseline", "mean")
    return evaluate_faithfulness(seg, image, attribution, 1, region, steps=10, n_blocks=48,
                                 block_fraction=0.25, batch_size=8, **kw)


def test_true_map_beats_random_and_wrong_map_loses(toy):
    _, _, true_map, wrong_map, _ = toy
    good = _scores(toy, true_map)
    bad = _scores(toy, wrong_map)
    rand = good["random"]["permuted"]
    # True evidence removed first: probability collapses at once.
    assert good["explanation"]["deletion_auc"] < 0.2 < rand["deletion_auc"]
    assert good["explanation"]["insertion_auc"] > 0.8 > rand["insertion_auc"]
    assert good["beats_random"] is True and good["vs_random"]["gap"] > 0.3
    # Evidence placed last: worse than random on both curves.
    assert bad["explanation"]["deletion_auc"] > 0.8
    assert bad["explanation"]["gap"] < min(r["gap"] for r in bad["random"].values())
    assert bad["beats_random"] is False
    # Correlation: high for the true map, about zero for its random permutation.
    assert good["explanation"]["correlation"] > 0.9
    assert abs(rand["correlation"]) < 0.35
    assert bad["explanation"]["correlation"] < 0.0


def test_scores_are_deterministic_by_seed(toy):
    _, _, true_map, _, _ = toy
    a = _scores(toy, true_map, seed=3)
    b = _scores(toy, true_map, seed=3)
    c = _scores(toy, true_map, seed=4)
    assert a == b
    assert a["random"]["permuted"]["deletion"] != c["random"]["permuted"]["deletion"]


def test_curves_have_fixed_endpoints_and_baseline_is_stated(toy):
    seg, image, true_map, _, region = toy
    out = _scores(toy, true_map, baseline="blur")
    assert out["baseline"]["kind"] == "blur" and out["baseline"]["sigma_voxels"] > 0
    cur = out["explanation"]
    assert len(cur["deletion"]) == len(cur["fractions"]) == 11
    assert cur["deletion"][0] == pytest.approx(cur["insertion"][-1])
    assert cur["deletion"][-1] == pytest.approx(cur["insertion"][0])
    assert cur["fractions"][0] == 0.0 and cur["fractions"][-1] == 1.0


def test_random_map_keeps_histogram(toy):
    _, _, true_map, wrong_map, _ = toy
    for m in (true_map, wrong_map):
        for sigma in (None, 2.0):
            r = random_map(m, seed=5, smooth_sigma=sigma)
            assert r.shape == m.shape
            np.testing.assert_array_equal(np.sort(r.ravel()), np.sort(m.ravel()))
            assert not np.array_equal(r, m)
    # The smoothed variant has spatial structure: neighbours are alike.
    smooth = random_map(wrong_map, seed=5, smooth_sigma=3.0)
    perm = random_map(wrong_map, seed=5)

    def neighbour_corr(a):
        return np.corrcoef(a[1:].ravel(), a[:-1].ravel())[0, 1]

    assert neighbour_corr(smooth) > 0.8 > 0.2 > abs(neighbour_corr(perm))


def test_voxel_ranks_order_and_ties():
    a = np.array([[[0.5, 2.0, 0.5, -1.0]]])
    r = voxel_ranks(a, seed=0)
    assert r[0, 0, 1] == 0 and r[0, 0, 3] == 3
    assert sorted([r[0, 0, 0], r[0, 0, 2]]) == [1, 2]


def test_activation_precision_hand_computed():
    attr = np.zeros((1, 2, 10), np.float32)
    attr[0, 0, :4] = [4.0, 3.0, 2.0, 1.0]  # top 20 % = the 4 largest of 20 voxels
    attr[0, 1, :] = -1.0  # negatives count as zero
    ref = np.zeros_like(attr, dtype=np.uint8)
    ref[0, 0, [0, 3]] = 1  # 4 + 1 of the top mass 10 is inside
    assert activation_precision(attr, ref, top_percent=20) == pytest.approx(0.5)
    assert activation_precision(attr, ref, top_percent=5) == pytest.approx(1.0)
    assert np.isnan(activation_precision(np.zeros_like(attr), ref))


def test_plausibility_reported_apart(toy):
    _, _, true_map, _, _ = toy
    reference = np.zeros(SHAPE, np.uint8)
    reference[BLOCK] = 1
    out = _scores(toy, true_map, reference=reference, random_variants=())
    assert out["plausibility"]["activation_precision"] == pytest.approx(1.0)
    assert "beats_random" not in out and "plausibility" not in out["explanation"]


def test_building_blocks(toy):
    seg, image, true_map, _, region = toy
    base, info = baseline_image(image, "mean")
    assert info == {"kind": "mean"} and np.allclose(base, image.mean())
    blocks = random_blocks(SHAPE, 40, 0.25, seed=1)
    assert all(b.stop - b.start == 6 for blk in blocks for b in blk)
    assert blocks == random_blocks(SHAPE, 40, 0.25, seed=1)
    drops = np.array([float((true_map[b] > 0).sum()) for b in blocks])
    assert faithfulness_correlation(true_map, blocks, drops) == pytest.approx(1.0)
    assert np.isnan(faithfulness_correlation(true_map, blocks, np.zeros(40)))
    before = image.copy()
    from CalibSegLib.explain.faithfulness import RegionProbability

    score = RegionProbability(seg, region, 1, batch_size=3)
    out = deletion_insertion(score, image, true_map, base, steps=4)
    assert np.array_equal(image, before)  # inputs untouched
    assert score.forwards == 3  # 2 + 2 * 3 images in batches of 3
    assert out["deletion_auc"] < out["insertion_auc"]


def test_errors_follow_the_policy(toy):
    """User-chosen options and maps get a CalibSegError; a caller's mistakes a built-in."""
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.explain.adapt import as_segmenter
    from CalibSegLib.explain.prototype import rank_prototypes
    from CalibSegLib.explain.region import RegionScore
    from CalibSegLib.explain.types import Explanation

    seg, image, true_map, _, region = toy
    with pytest.raises(CalibSegError, match="Unknown baseline 'zeros'; use blur or mean"):
        _scores(toy, true_map, baseline="zeros")
    with pytest.raises(CalibSegError, match="Unknown random map 'shuffled'"):
        _scores(toy, true_map, random_variants=("shuffled",))
    with pytest.raises(CalibSegError, match="map made on this image's grid"):
        _scores(toy, true_map[:-1])

    class Untouchable(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the network ran before the options were checked")

    from CalibSegLib.explain import explain

    with pytest.raises(CalibSegError, match="Unknown baseline 'zeros'"):
        explain(image, np.eye(4), Untouchable(), "gradcam", faithfulness=True,
                faithfulness_options={"baseline": "zeros"})
    for call, error in [
        (lambda: RegionScore(seg, region, reduction="max"), ValueError),
        (lambda: Explanation(map=true_map, affine=np.eye(4), method="lime", target_class=1),
         ValueError),
        (lambda: as_segmenter("network.pt"), TypeError),
        (lambda: rank_prototypes(np.ones((2, *SHAPE)), np.ones((2, 2)), 1,
                                 np.zeros(SHAPE, bool), np.array([0, 1])), ValueError),
    ]:
        with pytest.raises(error) as raised:
            call()
        assert not isinstance(raised.value, CalibSegError)
