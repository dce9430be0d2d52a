"""uint16 fixed-point probabilities (``CalibSegLib.calibration.fixed_point``): the codec,
the softmax kernel writing it, and the statistics reading it as ``q / 65535``. (Compact
predictions are the top-k form now; its bounds are tested in test_topk.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from CalibSegLib.calibration import ReliabilityStats
from CalibSegLib.calibration.fixed_point import (
    FIXED_POINT_SCALE,
    from_fixed_point,
    to_fixed_point,
)
from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference.softmax_kernel import probability_maps_cpu


def _probs(shape=(3, 11, 17, 23), seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape) * 4).astype(np.float32)
    return logits, torch.softmax(torch.from_numpy(logits), 0).numpy()


def test_fixed_point_round_trip_error_is_half_a_step():
    _, p = _probs()
    q = to_fixed_point(p)
    assert q.dtype == np.uint16 and q.nbytes == p.nbytes // 2
    assert np.abs(from_fixed_point(q) - p).max() <= 0.5 / FIXED_POINT_SCALE + 1e-7
    assert to_fixed_point(np.array([0.0, 1.0, 1.5, -0.1])).tolist() == [0, 65535, 65535, 0]
    assert from_fixed_point(p) is p  # float32 passes through


def test_kernel_writes_fixed_point_and_converts_other_dtypes_in_chunks():
    logits, p = _probs(seed=1)
    q, conf, ent = probability_maps_cpu(logits, 1.7, fixed_point=True)
    p17 = torch.softmax(torch.from_numpy(logits) / 1.7, 0).numpy()
    assert q.dtype == np.uint16
    assert np.abs(q.astype(np.int64) - np.rint(p17 * FIXED_POINT_SCALE)).max() <= 1
    half = logits.astype(np.float16)
    # float16 logits: converted chunk by chunk (chunk smaller than the volume)
    p16, c16, e16 = probability_maps_cpu(half, 1.7, chunk=3000)
    p32, c32, e32 = probability_maps_cpu(half.astype(np.float32), 1.7)
    np.testing.assert_array_equal(p16, p32)
    np.testing.assert_array_equal(c16, c32)
    np.testing.assert_array_equal(e16, e32)


def test_statistics_read_fixed_point_as_q_over_65535():
    _, p = _probs(seed=2)
    target = p.argmax(0)
    q = to_fixed_point(p)
    a = ReliabilityStats.from_probs(q, target).to_arrays()
    b = ReliabilityStats.from_probs(from_fixed_point(q), target).to_arrays()
    c = ReliabilityStats.from_probs(torch.from_numpy(q), torch.from_numpy(target),
                                    backend="torch").to_arrays()
    for key in ("count", "sum_p", "sum_y"):
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_allclose(a[key], c[key], rtol=1e-9, atol=1e-6)
    with pytest.raises(CalibSegError, match="uint16 fixed point"):
        ReliabilityStats.from_probs(p.astype(np.int32), target)


def test_kernel_edge_shapes():
    for logits in (np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float16)):
        probs, confidence, entropy = probability_maps_cpu(logits, 1.0)
        assert probs.shape == (3, 0) and confidence.shape == entropy.shape == (0,)
    probs, confidence, entropy = probability_maps_cpu(np.ones((1, 5), np.float32), 2.0)
    assert np.all(probs == 1) and np.all(confidence == 1) and np.all(entropy == 0)
    view = np.random.default_rng(3).standard_normal((4, 7, 9)).astype(np.float32).transpose(0, 2, 1)
    probs, _, _ = probability_maps_cpu(view, 1.0)  # non-contiguous input
    reference = torch.softmax(torch.from_numpy(np.ascontiguousarray(view)), 0).numpy()
    np.testing.assert_allclose(probs, reference, atol=1e-6)
