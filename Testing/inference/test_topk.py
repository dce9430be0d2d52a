"""Top-k prediction: size, error bounds, maps and statistics against full precision."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from CalibSegLib.calibration import ReliabilityStats
from CalibSegLib.calibration.binning import bin_edges
from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference.topk import (
    FLOAT16_ROUNDOFF,
    MAX_BYTES_PER_VOXEL,
    TopKPrediction,
    bytes_per_voxel,
    compact_logits,
    layout,
)
from CalibSegLib.inference.topk_stats import stats_from_topk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPERATURES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
METRICS = ("ece", "ace", "mce", "marginal_ece", "marginal_ace", "marginal_mce", "mean_dice",
           "nll", "brier")


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Full-precision reference probabilities (float64 softmax, as float32)."""
    return torch.softmax(torch.from_numpy(logits).double() / temperature, 0).float().numpy()


def synthetic_case(num_classes: int = 25, shape=(24, 48, 48), seed: int = 0):
    """A multi-organ-like case: ``num_classes`` regions (nearest of random seed points).

    The model's logits fall with the distance to each region's seed (about 9
    logits per region width), plus unit Gaussian noise; the reference is the argmax
    of the noise-free logits plus independent unit noise, so the model errs where
    regions meet, as a trained model does.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij"))
    seeds = rng.uniform(0, 1, (num_classes, 3))
    dist = np.stack([np.sqrt(((grid - s[:, None, None, None]) ** 2).sum(0)) for s in seeds])
    clean = -36.0 * dist / dist.std()
    logits = (clean + rng.normal(0, 1.0, dist.shape)).astype(np.float32)
    target = np.argmax(clean + rng.normal(0, 1.0, dist.shape), 0).astype(np.uint8)
    return logits, target


def assert_metrics_close(full: dict, compact: dict, tolerance: float = 1e-3) -> None:
    for key in METRICS:
        assert abs(full[key] - compact[key]) <= tolerance, (key, full[key], compact[key])


# ---------------------------------------------------------------------------- size

@pytest.mark.parametrize("num_classes", [1, 2, 3, 4, 5, 25, 117, 256, 257, 1000, 65536])
def test_bytes_per_voxel_never_exceed_16(num_classes):
    assert bytes_per_voxel(num_classes) <= MAX_BYTES_PER_VOXEL
    k, dtype, gaps, tail = layout(num_classes)
    assert k == min(num_classes, 4 if num_classes <= 256 else 3) and gaps == k - 1
    assert tail == (3 if num_classes > k else 0)


def test_stored_size_independent_of_class_count():
    rng = np.random.default_rng(1)
    sizes = {c: compact_logits(rng.normal(0, 3, (c, 4, 5, 6)).astype(np.float32)).nbytes
             for c in (5, 25, 300)}
    assert sizes[5] == sizes[25] == 16 * 120
    assert sizes[300] == 16 * 120
    assert compact_logits(np.zeros((3, 4, 5, 6), np.float32)).bytes_per_voxel == 7


# ---------------------------------------------------------------------------- sample cases

@pytest.fixture(scope="module")
def demo_logits(mni_case):
    """Full-precision logits of the three shipped demo models on the MNI sample case."""
    from CalibSegLib.inference import predict
    from CalibSegLib.models import load_model

    out = {}
    for name in ("dicece", "dicece-hardace", "dicece-softace"):
        model = load_model(os.path.join(ROOT, "Resources", "Models", name))
        prediction = predict(mni_case.image, mni_case.affine, model, device="cpu",
                             temperature=1.0, maps=False)
        out[name] = np.array(prediction.logits)
    return out


def test_demo_models_metrics_within_1e_3_at_every_temperature(mni_case, demo_logits):
    target = mni_case.labels
    for name, logits in demo_logits.items():
        compact = compact_logits(logits)
        assert compact.bytes_per_voxel == 7
        np.testing.assert_array_equal(compact.labels(), logits.argmax(0))
        for t in TEMPERATURES:
            probs = softmax(logits, t)
            full = ReliabilityStats.from_probs(probs, target).metrics().to_dict()
            fast = stats_from_topk(compact, target, temperature=t).metrics().to_dict()
            assert_metrics_close(full, fast)
            confidence, entropy = compact.maps(t)
            assert np.abs(confidence - probs.max(0)).max() < 2e-4, (name, t)


# ---------------------------------------------------------------------------- 25 classes

@pytest.fixture(scope="module")
def synthetic():
    logits, target = synthetic_case()
    return logits, target, compact_logits(logits)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_synthetic_25_classes_metrics_within_1e_3(synthetic, temperature):
    logits, target, compact = synthetic
    assert compact.bytes_per_voxel == 16
    probs = softmax(logits, temperature)
    full = ReliabilityStats.from_probs(probs, target)
    fast = stats_from_topk(compact, target, temperature=temperature)
    assert_metrics_close(full.metrics().to_dict(), fast.metrics().to_dict())
    np.testing.assert_array_equal(fast.count.sum(axis=2), full.count.sum(axis=2))
    np.testing.assert_array_equal(fast.intersection, full.intersection)  # Dice counts exact
    # per-voxel maps: confidence and entropy of the full probabilities
    confidence, entropy = compact.maps(temperature)
    error = np.abs(confidence - probs.max(0))
    assert np.all(error <= _probability_bound(compact, temperature)) and error.mean() < 1e-4
    h = -(probs * np.log(np.maximum(probs, 1e-30))).sum(0) / math.log(25)
    assert np.abs(entropy - h).mean() < 1e-3


def test_synthetic_tail_bounds_contain_the_true_tail_mass(synthetic):
    logits, _, compact = synthetic
    for t in TEMPERATURES:
        probs = softmax(logits, t).astype(np.float64)
        tail = -np.sort(-probs, axis=0)[compact.k:].sum(0)
        estimate, low, high = compact.tail_bounds(t)
        assert np.all(low <= tail + 1e-6) and np.all(tail <= high + 1e-6)
        assert np.all((low <= estimate + 1e-7) & (estimate <= high + 1e-7))


def test_class_probability_maps_and_region(synthetic):
    logits, _, compact = synthetic
    probs = softmax(logits, 1.5)
    _, low, high = compact.tail_bounds(1.5)
    for c in (0, 7, 24):
        mapped = compact.class_probability(c, 1.5)
        assert mapped.shape == probs.shape[1:]
        # a named class: within the stated bound; a tail class: within the tail mass
        assert np.all(np.abs(mapped - probs[c]) <= _probability_bound(compact, 1.5) + high)
    z = 11
    confidence, _ = compact.maps(1.5)
    slice_confidence, _ = compact.maps(1.5, region=z)
    np.testing.assert_array_equal(slice_confidence, confidence[z])
    np.testing.assert_array_equal(compact.labels(z), logits[:, z].argmax(0))
    stacked = compact.probabilities(1.5, region=(z, slice(0, 5)))
    np.testing.assert_allclose(stacked.sum(0), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------- properties

@st.composite
def logit_volumes(draw):
    num_classes = draw(st.integers(2, 40))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    spread = draw(st.sampled_from([0.5, 2.0, 6.0]))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, spread, (num_classes,) + shape).astype(np.float32)
    logits[rng.integers(0, num_classes)] += draw(st.sampled_from([0.0, 8.0]))
    return logits


def _probability_bound(compact: TopKPrediction, t: float) -> np.ndarray:
    """Stated per-voxel bound on the error of a top-K probability."""
    rounding = FLOAT16_ROUNDOFF * (1.0 / math.e + math.log(compact.k)) * 2.0
    _, low, high = compact.tail_bounds(t)
    return rounding + (high - low) + 1e-6


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=logit_volumes(), temperature=st.floats(0.5, 3.0))
def test_properties_across_classes_temperatures_and_shapes(logits, temperature):
    compact = compact_logits(logits, chunk_voxels=7)
    num_classes = logits.shape[0]
    assert compact.bytes_per_voxel <= MAX_BYTES_PER_VOXEL
    assert compact.shape == logits.shape[1:]
    np.testing.assert_array_equal(compact.labels(), logits.argmax(0))
    probs = softmax(logits, temperature).astype(np.float64)
    ranked = -np.sort(-probs, axis=0)
    # the tail bounds hold and the top probabilities are within the stated bound
    _, low, high = compact.tail_bounds(temperature)
    tail = ranked[compact.k:].sum(0)
    assert np.all(low <= tail + 1e-6) and np.all(tail <= high + 1e-6)
    confidence, entropy = compact.maps(temperature)
    bound = _probability_bound(compact, temperature)
    assert np.all(np.abs(confidence - ranked[0]) <= bound)
    assert np.all((entropy >= 0) & (entropy <= 1))
    expanded = compact.probabilities(temperature)
    np.testing.assert_allclose(expanded.sum(0), 1.0, atol=1e-5)
    # top-label ECE moves by at most the mean |Δp| plus 2/N per voxel that may change bin
    target = np.random.default_rng(num_classes).integers(0, num_classes, logits.shape[1:])
    full = ReliabilityStats.from_probs(probs.astype(np.float32), target, 10).metrics().to_dict()
    fast = stats_from_topk(compact, target, 10,
                                      temperature=temperature).metrics().to_dict()
    edges = bin_edges(10)[1:-1].astype(np.float64)
    near = np.abs(ranked[0][..., None] - edges).min(-1) <= bound
    # (plus float32 rounding of the reference probabilities and of the maps)
    delta = np.abs(confidence - ranked[0]).mean() + 2.0 * near.mean() + 2e-7
    assert abs(full["ece"] - fast["ece"]) <= delta
    assert fast["mean_dice"] == pytest.approx(full["mean_dice"], abs=1e-12, nan_ok=True)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=logit_volumes(), cut=st.floats(0.0, 1.0), temperature=st.floats(0.5, 3.0))
def test_statistics_merge_exactly(logits, cut, temperature):
    compact = compact_logits(logits)
    target = np.random.default_rng(3).integers(0, logits.shape[0], logits.shape[1:])
    split = int(round(cut * logits.shape[1]))
    whole = stats_from_topk(compact, target, temperature=temperature, image_id="x",
                                       chunk_voxels=5)
    parts = [stats_from_topk(compact.subvolume(np.s_[a:b]), target[a:b],
                                        temperature=temperature, image_id="x")
             for a, b in ((0, split), (split, logits.shape[1])) if b > a]
    merged = ReliabilityStats.merge_all(parts)
    for key, value in whole.to_arrays().items():
        np.testing.assert_array_equal(merged.to_arrays()[key], value, err_msg=key)


# ---------------------------------------------------------------------------- behaviour

def test_temperature_change_shares_arrays_and_checks_input():
    logits, _ = synthetic_case(6, (3, 4, 5))
    compact = compact_logits(logits, temperature=1.2, class_names=tuple("abcdef"))
    warmer = compact.with_temperature(2.0)
    assert warmer.indices is compact.indices and warmer.temperature == 2.0
    c1, _ = warmer.maps()
    c2, _ = compact.maps(2.0)
    np.testing.assert_array_equal(c1, c2)
    assert not compact.indices.flags.writeable
    for bad in (0, -1, float("nan"), "warm"):
        with pytest.raises(CalibSegError, match="Temperature"):
            compact.with_temperature(bad)
    with pytest.raises(CalibSegError, match="NaN"):
        compact_logits(np.full((3, 2, 2), np.nan, np.float32))
    with pytest.raises(CalibSegError, match="out of range"):
        compact.class_probability(6)
    with pytest.raises(CalibSegError, match="shape"):
        stats_from_topk(compact, np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(CalibSegError, match="labels the model does not know"):
        stats_from_topk(compact, np.full((3, 4, 5), 9, np.uint8))


def test_statistics_with_mask_and_torch_tensors():
    logits, target = synthetic_case(7, (4, 6, 6), seed=2)
    compact = compact_logits(torch.from_numpy(logits))
    mask = np.zeros(target.shape, bool)
    mask[1:3] = True
    masked = stats_from_topk(compact, torch.from_numpy(target.astype(np.int64)),
                                        mask=mask)
    sub = stats_from_topk(compact.subvolume(np.s_[1:3]), target[1:3])
    for key, value in sub.to_arrays().items():
        np.testing.assert_array_equal(masked.to_arrays()[key], value, err_msg=key)


def test_many_classes_use_uint16_indices():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (300, 2, 3, 4)).astype(np.float32)
    logits[299] += 6.0
    compact = compact_logits(logits)
    assert compact.indices.dtype == np.uint16 and compact.k == 3
    np.testing.assert_array_equal(compact.labels(), logits.argmax(0))
    assert compact.bytes_per_voxel == 16


@pytest.mark.parametrize("num_classes", [2, 4, 5, 25, 300])
def test_cpu_kernel_equals_torch_compaction(num_classes):
    """The compiled CPU kernel and the torch path (other devices) store the same bytes."""
    from CalibSegLib.inference.topk import compact_block
    from CalibSegLib.inference.topk_kernel import compact_block_cpu

    rng = np.random.default_rng(num_classes)
    z = rng.normal(0, 4, (num_classes, 3000)).astype(np.float32)
    z[:, :40] = 1.5  # ties: lower class first
    z[:, 40:80] = np.round(z[:, 40:80])
    k, dtype, _, _ = layout(num_classes)
    by_torch = compact_block(torch.from_numpy(z), k, dtype)
    by_kernel = compact_block_cpu(z, k, dtype)
    for a, b in zip(by_torch[:2], by_kernel[:2]):
        np.testing.assert_array_equal(a.numpy().astype(b.dtype), b)
    # tail rows: float64 sums in another order; at most one float16 step, rarely
    a, b = by_torch[2].numpy(), by_kernel[2]
    step = np.abs(np.spacing(a.astype(np.float16)))
    assert np.all(np.abs(a.astype(np.float64) - b.astype(np.float64)) <= step)
    assert (a != b).sum() <= max(1, a.size // 1000)
    np.testing.assert_array_equal(by_kernel[0][0], z.argmax(0))


def test_compiled_cpu_paths_equal_the_torch_paths(synthetic):
    """Maps and statistics: the compiled CPU kernels and the torch operations (the path
    on CUDA) give the same numbers."""
    from CalibSegLib.inference.topk import confidence_entropy

    logits, target, compact = synthetic
    for t in (0.6, 1.0, 2.4):
        confidence, entropy = compact.maps(t)
        by_torch = [confidence_entropy(v, t, compact.num_classes)
                    for _, _, v, _ in compact.blocks(t, dtype=torch.float64)]
        np.testing.assert_allclose(confidence.ravel(),
                                   torch.cat([c for c, _ in by_torch]).numpy(), atol=2e-7)
        np.testing.assert_allclose(entropy.ravel(),
                                   torch.cat([h for _, h in by_torch]).numpy(), atol=2e-6)
        kernel = stats_from_topk(compact, target, temperature=t).to_arrays()
        torch_path = stats_from_topk(compact, target, temperature=t,
                                     device="cpu").to_arrays()
        for key, value in kernel.items():
            if key in ("count", "top_count", "intersection", "predicted", "reference"):
                assert np.abs(value - torch_path[key]).sum() <= 2, key  # a bin-edge voxel
            elif value.dtype.kind == "f":
                np.testing.assert_allclose(value, torch_path[key], atol=1e-6, err_msg=key)
