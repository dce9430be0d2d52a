"""Benchmark: ReliabilityStats against a plain pass and against other implementations.

All timings are taken in one process on the same tensor, so they are reported
as ratios to one ``probs.sum()`` pass (memory-bound reference). Run directly
(``python bench/bench_stats.py [--quick]``) or through ``bench/run``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _data(n_voxels: int, n_classes: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_classes, n_voxels, generator=g) * 3
    probs = torch.softmax(logits, dim=0).contiguous()
    labels = torch.randint(0, n_classes, (n_voxels,), generator=g, dtype=torch.uint8)
    return probs, labels


def _onehot_stats(probs, labels, n_bins):
    """Reference one-hot implementation: an (N × B) indicator matrix per class."""
    import torch

    edges = torch.linspace(0, 1 + torch.finfo(torch.float32).eps, n_bins + 1)
    out = []
    for c in range(probs.shape[0]):
        p = probs[c]
        k = torch.bucketize(p, edges[1:]).clamp(max=n_bins - 1)
        onehot = torch.nn.functional.one_hot(k, n_bins).to(torch.float32)  # (N, B)
        y = (labels == c).to(torch.float32)
        out.append((onehot.sum(0), p @ onehot, y @ onehot))
    return out


def run(quick: bool = False) -> list[dict]:
    import torch
    from monai.metrics.calibration import calibration_binning

    from CalibSegLib.calibration import HardL1ACELoss, ReliabilityStats, SoftL1ACELoss

    n_voxels = 2_000_000 if quick else 16_777_216
    n_classes, n_bins = 4, 20
    repeat = 3 if quick else 5
    probs, labels = _data(n_voxels, n_classes)
    probs_np, labels_np = probs.numpy(), labels.numpy()
    ReliabilityStats.from_probs(probs_np[:, :1000], labels_np[:1000])  # compile / load cache
    rows = []
    t_sum = _best(lambda: probs.sum(), repeat)
    t_stats = _best(lambda: ReliabilityStats.from_probs(probs_np, labels_np, n_bins), repeat)
    label = f"{n_voxels / 1e6:.1f} M voxels × {n_classes} classes"
    rows.append({"name": f"ReliabilityStats / probs.sum() ({label})", "value": t_stats / t_sum,
                 "target": "<= 8", "unit": "ratio"})
    rows.append({"name": "ReliabilityStats absolute time", "value": t_stats * 1000,
                 "target": None, "unit": "ms"})
    t_torch = _best(lambda: ReliabilityStats.from_probs(probs, labels, n_bins, backend="torch"),
                    1)
    rows.append({"name": "torch back end (CUDA path, run on CPU) / probs.sum()",
                 "value": t_torch / t_sum, "target": None, "unit": "ratio"})
    onehot_n = min(n_voxels, 2_000_000)
    t_onehot = _best(lambda: _onehot_stats(probs[:, :onehot_n], labels[:onehot_n], n_bins), 1)
    t_stats_sub = _best(lambda: ReliabilityStats.from_probs(
        probs_np[:, :onehot_n], labels_np[:onehot_n], n_bins), repeat)
    rows.append({"name": f"one-hot (N×B) implementation / ReliabilityStats "
                         f"({onehot_n / 1e6:.0f} M voxels)",
                 "value": t_onehot / t_stats_sub, "target": ">= 10", "unit": "speed-up"})
    onehot_y = torch.nn.functional.one_hot(labels.long(), n_classes).T.reshape(
        1, n_classes, -1).float()
    t_monai = _best(lambda: calibration_binning(probs[None], onehot_y, num_bins=n_bins), 1)
    rows.append({"name": "MONAI calibration_binning / ReliabilityStats (same data)",
                 "value": t_monai / t_stats, "target": ">= 3", "unit": "speed-up"})
    onehot_y = None  # free it before the memory measurement
    try:
        from torchmetrics.functional.classification import multiclass_calibration_error

        tm_n = min(n_voxels, 4_000_000)
        t_tm = _best(lambda: multiclass_calibration_error(
            probs[:, :tm_n].T, labels[:tm_n].long(), n_classes, n_bins=n_bins, norm="l1"), 1)
        rows.append({"name": f"torchmetrics top-label ECE / ReliabilityStats "
                             f"({tm_n / 1e6:.0f} M voxels)",
                     "value": t_tm / (t_stats * tm_n / n_voxels), "target": None,
                     "unit": "speed-up"})
    except ImportError:
        pass
    try:
        from netcal.metrics import ECE

        nc_n = 500_000
        conf = probs[:, :nc_n].T.numpy()
        truth = labels[:nc_n].numpy()
        t_nc = _best(lambda: ECE(bins=n_bins).measure(conf, truth), 1)
        rows.append({"name": f"netcal top-label ECE / ReliabilityStats ({nc_n / 1e6:.1f} M voxels)",
                     "value": t_nc / (t_stats * nc_n / n_voxels), "target": None,
                     "unit": "speed-up"})
    except ImportError:
        pass
    # peak extra memory, float16 probabilities at 512×512×300×12 (or a quick subset)
    big = (12, 512 * 512 * (30 if quick else 300))
    probs16 = torch.rand(big, dtype=torch.float32).to(torch.float16)
    probs16 /= probs16.sum(0, keepdim=True)
    probs16 = probs16.numpy()
    big_labels = np.zeros(big[1], np.uint8)
    # float16 rounding breaks sum-to-1 at 1e-3 for some voxels; renormalise in float32 chunks
    base = _rss_mb()
    _reset_peak_rss()
    try:
        ReliabilityStats.from_probs(probs16, big_labels, n_bins)
        extra = _peak_rss_mb() - base
    except Exception:  # sums of float16 may miss 1 by > 1e-3: report as not measured
        extra = float("nan")
    rows.append({"name": f"peak extra memory, float16 probs 512×512×{big[1] // (512 * 512)}×12",
                 "value": extra, "target": "<= 64", "unit": "MB"})
    del probs16
    # losses: forward + backward against MONAI DiceCELoss
    from monai.losses import DiceCELoss

    shape = (2, 4, 48, 48, 48) if quick else (2, 4, 64, 64, 64)
    logits = torch.randn(shape, requires_grad=True)
    target = torch.randint(0, 4, (shape[0], 1) + shape[2:])
    def step(loss):
        def go():
            logits.grad = None
            loss(logits, target).backward()
        return go
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    t_dc = _best(step(dice_ce), repeat)
    for name, cls in (("hard", HardL1ACELoss), ("soft", SoftL1ACELoss)):
        t = _best(step(cls(to_onehot_y=True, softmax=True)), repeat)
        rows.append({"name": f"{name} mL1-ACE fwd+bwd / DiceCELoss fwd+bwd {shape}",
                     "value": t / t_dc, "target": None, "unit": "ratio"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import numba
    import torch

    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
          f"numba threads {numba.get_num_threads()}")
    for row in run(args.quick):
        value = row["value"]
        print(f"{row['name']:<75} {value:10.3g} {row['unit']:<9} {row['target'] or ''}")


if __name__ == "__main__":
    main()
