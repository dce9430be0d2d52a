"""Sliding-window inference into the top-k form: equal to compacting MONAI's blended output,
with a bounded buffer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from doubles import OutOfGpuMemoryAbove
from monai.inferers import sliding_window_inference

from CalibSegLib.errors import CalibSegError, Cancelled
from CalibSegLib.inference.streaming import sliding_window_topk
from CalibSegLib.inference.topk import compact_logits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _network(num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv3d(8, num_classes, 3, padding=1))
    with torch.no_grad():
        net[2].weight.mul_(6.0)  # spread the logits: a realistic tail
    return net.eval()


@pytest.mark.parametrize(("num_classes", "shape", "roi", "overlap", "batch"), [
    (9, (21, 26, 19), (8, 12, 10), 0.25, 3),
    (3, (11, 9, 30), (8, 12, 12), 0.5, 1),     # smaller than a window along y: padded
    (30, (6, 16, 16), (8, 8, 8), 0.0, 4),      # smaller along z, no overlap
])
def test_equals_compaction_of_monai_blended_output(num_classes, shape, roi, overlap, batch):
    net = _network(num_classes)
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = sliding_window_inference(x, roi, batch, net, overlap=overlap,
                                             mode="gaussian", padding_mode="replicate")
        streamed, info = sliding_window_topk(x, net, roi, num_classes, sw_batch_size=batch,
                                             overlap=overlap, chunk_voxels=100)
    expected = compact_logits(reference[0])
    assert streamed.shape == shape and info["windows"] >= 1
    for name in ("indices", "gaps", "tail"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(expected, name),
                                      err_msg=name)
    assert info["slab_bytes"] <= 4 * (num_classes + 1) * roi[0] * max(shape[1], roi[1]) * max(
        shape[2], roi[2])


def test_progress_cancel_and_class_check():
    net = _network(4)
    x = torch.randn(1, 1, 12, 12, 12)
    seen = []
    with torch.no_grad():
        sliding_window_topk(x, net, (8, 8, 8), 4, progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(Cancelled), torch.no_grad():
        sliding_window_topk(x, net, (8, 8, 8), 4, cancel=lambda: True)
    with pytest.raises(CalibSegError, match="5 classes"), torch.no_grad():
        sliding_window_topk(x, net, (8, 8, 8), 5)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    from CalibSegLib.inference.streaming import sliding_window_topk
    torch.set_num_threads(1)
    classes, shape, roi = 48, (120, 160, 160), (8, 32, 32)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, classes, 1).eval()
    x = torch.randn((1, 1) + shape)
    with torch.no_grad():
        net(x[..., :8, :8, :8])  # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        prediction, info = sliding_window_topk(x, net, roi, classes, sw_batch_size=2)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump({"peak_kib": after - before, "full_kib": classes * x.numel() * 4 // 1024,
               "stored_kib": prediction.nbytes // 1024, "slab_kib": info["slab_bytes"] // 1024},
              sys.stdout)
""")


def test_peak_memory_is_bounded_by_the_slab_not_the_classes():
    """In a fresh process: the peak resident memory of streaming inference stays far below
    the C × N float32 logits a blended full-volume output would hold."""
    run = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True,
                         cwd=ROOT, timeout=600, check=True)
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["full_kib"] > 570_000  # 48 classes × 3 M voxels × 4 bytes
    # about three slabs, one compaction chunk (64 MiB) and the top-k arrays
    bound = 3 * figures["slab_kib"] + 65_536 + figures["stored_kib"] + 32_768
    assert figures["peak_kib"] < bound < 0.5 * figures["full_kib"], figures


class _Voxelwise(torch.nn.Module):
    """Logits ``-4 (x - c)^2 + c / C`` per voxel: no reduction across voxels or windows, so
    a window's output does not depend on how many windows share its batch (a convolution's
    may, in the last bits, on the CPU)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.centres = torch.linspace(-2.0, 2.0, num_classes).reshape(1, -1, 1, 1, 1)
        self.bias = torch.arange(num_classes, dtype=torch.float32).reshape(1, -1, 1, 1, 1)
        self.bias /= num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - self.centres
        return -4.0 * (d * d) + self.bias


def test_cuda_out_of_memory_halves_the_window_batch(caplog):
    num_classes, shape, roi = 7, (20, 14, 13), (8, 8, 8)
    net = _Voxelwise(num_classes)
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole, whole_info = sliding_window_topk(x, net, roi, num_classes, sw_batch_size=4)
        small = OutOfGpuMemoryAbove(net, limit=1)
        seen: list[float] = []
        with caplog.at_level("WARNING", logger="CalibSegLib.inference.streaming"):
            retried, info = sliding_window_topk(x, small, roi, num_classes, sw_batch_size=4,
                                                progress=lambda f, m="": seen.append(f))
    assert whole_info["retries"] == 0 and whole_info["sw_batch_size"] == 4
    assert info["retries"] == 2 and info["sw_batch_size"] == 1
    assert sum("out of memory" in r.message for r in caplog.records) == 2
    # 4 and 2 windows refused once each, then every window exactly once, one at a time
    assert small.batches[:2] == [4, 2] and small.batches[2:] == [1] * info["windows"]
    assert seen == sorted(seen) and seen[-1] == 1.0
    for name in ("indices", "gaps", "tail"):
        np.testing.assert_array_equal(getattr(retried, name), getattr(whole, name),
                                      err_msg=name)

    # an error part-way through the stream: the windows already blended are not redone
    class _FailsLater(OutOfGpuMemoryAbove):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.batches.append(int(x.shape[0]))
            if len(self.batches) > 2 and x.shape[0] > self.limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            return self.network(x)

    later = _FailsLater(net, limit=2)
    with torch.no_grad():
        resumed, info = sliding_window_topk(x, later, roi, num_classes, sw_batch_size=4)
    assert info["retries"] == 1 and info["sw_batch_size"] == 2
    assert sum(later.batches) - 4 == info["windows"]  # only the refused batch of 4 was redone
    for name in ("indices", "gaps", "tail"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name),
                                      err_msg=name)


def test_cuda_out_of_memory_with_one_window_is_one_clear_error():
    net = OutOfGpuMemoryAbove(_network(3), limit=0)
    x = torch.randn(1, 1, 12, 12, 12)
    with torch.no_grad(), pytest.raises(CalibSegError, match="--device cpu") as raised:
        sliding_window_topk(x, net, (8, 8, 8), 3, sw_batch_size=2)
    assert "\n" not in str(raised.value) and "smaller window" in str(raised.value)
    assert net.batches == [2, 1]
    # other errors of the network are not retried
    calls: list[int] = []

    def broken(batch: torch.Tensor) -> torch.Tensor:
        calls.append(int(batch.shape[0]))
        raise RuntimeError("shape mismatch")

    with torch.no_grad(), pytest.raises(RuntimeError, match="shape mismatch"):
        sliding_window_topk(x, broken, (8, 8, 8), 3, sw_batch_size=2)
    assert calls == [2]
