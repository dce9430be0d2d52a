"""Without numba the inference package runs on torch and gives the compiled kernels' numbers.

The subprocess makes ``import numba`` fail (as where it is not installed), then
compacts logits, computes the top-k maps and statistics and the softmax maps of
a full-precision prediction; this process computes the same with the compiled
kernels. One :class:`KernelFallbackWarning` says why the slower path runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from CalibSegLib.inference import compact_logits, probability_maps, stats_from_topk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPERATURE = 1.7

_NO_NUMBA = r"""
import json, sys, warnings
sys.modules["numba"] = None  # importing numba now fails, as where it is not installed
import numpy as np
import torch
from CalibSegLib.calibration.backend import KernelFallbackWarning
from CalibSegLib.inference import compact_logits, probability_maps, stats_from_topk
data = np.load(sys.argv[1])
t = float(data["t"])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    compact = compact_logits(data["logits"])
    confidence, entropy = compact.maps(t)
    stats = stats_from_topk(compact, data["target"], temperature=t)
    probs, conf_full, ent_full = probability_maps(torch.from_numpy(data["logits"]), t)
for name in ("CalibSegLib.inference.topk_kernel", "CalibSegLib.inference.softmax_kernel",
             "CalibSegLib.calibration.kernels"):
    assert name not in sys.modules, name
np.savez(sys.argv[2], indices=compact.indices, gaps=compact.gaps, tail=compact.tail,
         confidence=confidence, entropy=entropy, probs=probs.numpy(),
         conf_full=conf_full.numpy(), ent_full=ent_full.numpy())
print(json.dumps({"stats": stats.to_dict(),
                  "warnings": [str(w.message) for w in caught
                               if issubclass(w.category, KernelFallbackWarning)]}))
"""


def _case(num_classes: int = 9, shape=(6, 10, 12), seed: int = 3):
    """Logits ``(C, Z, Y, X)`` float32 with ties and a tail, and a noisy reference."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (num_classes,) + shape).astype(np.float32)
    logits[:, 0, 0, :4] = 1.25  # ties: lower class first
    target = (logits + rng.normal(0, 2, logits.shape)).argmax(0).astype(np.uint8)
    return logits, target


def test_without_numba_the_torch_paths_give_the_kernels_maps_and_statistics(tmp_path):
    from CalibSegLib.calibration import ReliabilityStats

    logits, target = _case()
    np.savez(tmp_path / "case.npz", logits=logits, target=target, t=TEMPERATURE)
    run = subprocess.run([sys.executable, "-c", _NO_NUMBA, str(tmp_path / "case.npz"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(out["warnings"]) == 1 and "numba" in out["warnings"][0], out["warnings"]
    fallback = np.load(tmp_path / "out.npz")

    compact = compact_logits(logits)  # the compiled kernels (numba present here)
    np.testing.assert_array_equal(fallback["indices"], compact.indices)
    np.testing.assert_array_equal(fallback["gaps"], compact.gaps)
    # tail rows: float64 sums in another order, at most one float16 step apart
    step = np.abs(np.spacing(compact.tail.astype(np.float16))).astype(np.float64)
    assert np.all(np.abs(fallback["tail"].astype(np.float64)
                         - compact.tail.astype(np.float64)) <= step)
    confidence, entropy = compact.maps(TEMPERATURE)
    np.testing.assert_allclose(fallback["confidence"], confidence, atol=2e-6)
    np.testing.assert_allclose(fallback["entropy"], entropy, atol=2e-5)
    assert confidence.min() < 0.5 < confidence.max()  # a case with real uncertainty

    compiled_stats = stats_from_topk(compact, target, temperature=TEMPERATURE).to_arrays()
    torch_stats = ReliabilityStats.from_dict(out["stats"]).to_arrays()
    for key, value in compiled_stats.items():
        if key in ("count", "top_count", "intersection", "predicted", "reference"):
            assert np.abs(value - torch_stats[key]).sum() <= 2, key  # a bin-edge voxel
        elif value.dtype.kind == "f":
            np.testing.assert_allclose(torch_stats[key], value, atol=1e-5, err_msg=key)

    probs, conf_full, ent_full = probability_maps(torch.from_numpy(logits), TEMPERATURE)
    np.testing.assert_allclose(fallback["probs"], probs.numpy(), atol=1e-6)
    np.testing.assert_allclose(fallback["conf_full"], conf_full.numpy(), atol=1e-6)
    np.testing.assert_allclose(fallback["ent_full"], ent_full.numpy(), atol=1e-5)
    reference = torch.softmax(torch.from_numpy(logits) / TEMPERATURE, 0).numpy()
    np.testing.assert_allclose(fallback["probs"], reference, atol=1e-6)
