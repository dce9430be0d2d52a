"""Benchmark: the top-k prediction on a CT-sized volume, 25 classes and 3 classes side by side.

Usage: ``.venv/bin/python bench/bench_compact.py [--quick]`` (also ``bench/run --only compact``).

The volume is the chest CT sample case resampled (trilinear) to 512 × 512 in-plane and
``Z`` slices; the model is a small convolutional network with fixed random weights
(``Conv3d(1, 8, 3) → tanh → Conv3d(8, C, 1)``), windows of 32 × 128 × 128, overlap 0.25.
Rows, per class count:

* stored bytes per voxel of the top-k form;
* peak resident memory (a fresh process each, Linux ``clear_refs``/``VmHWM``) of the
  library's ``predict(form="compact")`` (sliding window streamed into the top-k form,
  then the confidence and entropy maps) at two slice counts, and of
  ``predict(form="full")`` (MONAI's blended ``(C, N)`` logits, softmax probabilities and
  maps); both extrapolated to 300 slices (512 × 512 × 300 = 78.6 M voxels);
* time from a temperature change to the maps (confidence, entropy) of the three slices
  the views show (axial, coronal, sagittal through the centre) and to the full volume,
  on a 512 × 512 × 300 top-k form (the bench volume's form repeated along z);
* reliability statistics from the top-k form vs one ``probs.sum()`` pass over the
  float32 probabilities of the same voxels.

Extrapolation to 300 slices: streaming = the peak at the larger bench size plus, per missing
slice, the larger of the prediction's bytes of a slice (top-k arrays, confidence and entropy)
and the measured growth per slice (the slab does not grow with the slice count); full
precision = linear in the voxel count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Literal

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from timing import best_time  # noqa: E402

FULL_SLICES = 300
PLANE = (512, 512)
ROI = (32, 128, 128)


def ct_volume(slices: int, plane=PLANE) -> np.ndarray:
    """The chest CT sample resampled to ``(slices, *plane)`` float32, z-scored."""
    from CalibSegLib.data import sample_case

    image = torch.from_numpy(sample_case("ct-chest").image)[None, None]
    out = torch.nn.functional.interpolate(image, size=(slices, *plane), mode="trilinear",
                                          align_corners=False)[0, 0]
    out = (out - out.mean()) / out.std()
    return out.numpy().astype(np.float32)


def network(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    head = torch.nn.Conv3d(8, num_classes, 1)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.Tanh(), head)
    with torch.no_grad():
        head.weight.mul_(8.0)
    return net.eval()


# ---------------------------------------------------------------------------- child processes

def bench_model(num_classes: int):
    """:func:`network` as a :class:`~CalibSegLib.models.Model` on the bench grid (1 mm RAS,
    no resampling, no normalisation: the volume is z-scored), windows :data:`ROI`."""
    from CalibSegLib.models import Model, new_card

    names = ["background"] + [f"organ {i}" for i in range(1, num_classes)]
    card = new_card("bench", names, head="linear", spacing_mm=(1.0, 1.0, 1.0),
                    patch_size=(ROI[2], ROI[1], ROI[0]), normalization={"type": "none"})
    return Model(card=card, network=network(num_classes))


def _child(kind: str, num_classes: int, slices: int, plane) -> None:
    """Peak resident memory of one ``predict`` form, printed as JSON (run in a fresh process)."""
    from CalibSegLib.inference import predict

    volume = ct_volume(slices, plane)
    model = bench_model(num_classes)
    with torch.no_grad():
        model.network(torch.from_numpy(volume[:8, :8, :8])[None, None])
    before = _peak_reset()
    start = time.perf_counter()
    form: Literal["compact", "full"] = "compact" if kind == "stream" else "full"
    prediction = predict(volume, np.eye(4), model, device="cpu", sw_batch_size=2, form=form)
    seconds = time.perf_counter() - start
    assert prediction.info["form"] == form and not prediction.info["resampled"]
    if prediction.scores is not None:
        stored = prediction.scores.nbytes
    else:
        assert prediction.logits is not None and prediction.probs is not None
        stored = prediction.logits.nbytes + prediction.probs.nbytes
    after = _status_kib("VmHWM") * 1024
    print(json.dumps({"peak_bytes": after - before, "stored_bytes": int(stored),
                      "prediction_bytes": int(prediction.nbytes), "seconds": seconds}))


def _measure(kind: str, num_classes: int, slices: int, plane) -> dict:
    run = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", kind, str(num_classes),
         str(slices), str(plane[0]), str(plane[1])],
        capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- rows

def _tiled(prediction, slices: int):
    """The top-k form repeated along z to ``slices`` slices (timing of a full-size form)."""
    from CalibSegLib.inference.topk import TopKPrediction

    reps = int(np.ceil(slices / prediction.shape[0]))

    def tile(a):
        return np.ascontiguousarray(np.concatenate([a] * reps, axis=1)[:, :slices])

    return TopKPrediction(indices=tile(prediction.indices), gaps=tile(prediction.gaps),
                          tail=tile(prediction.tail), num_classes=prediction.num_classes,
                          temperature=prediction.temperature)


def _views(prediction, temperature: float) -> None:
    z, y, x = (s // 2 for s in prediction.shape)
    for region in (z, (slice(None), y), (slice(None), slice(None), x)):
        prediction.maps(temperature, region=region)


def _peak_reset() -> int:
    """Reset the process's peak resident size (Linux ``clear_refs``); return the current size."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kib("VmRSS") * 1024


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def _rows_for(num_classes: int, plane, sizes, full_slices: int) -> list[dict]:
    from CalibSegLib.inference.streaming import sliding_window_topk
    from CalibSegLib.inference.topk_stats import stats_from_topk

    tag = f"C={num_classes}"
    label = f"{plane[0]}x{plane[1]}x{full_slices}"
    full_voxels = full_slices * plane[0] * plane[1]
    rows: list[dict] = []
    # memory: streaming vs full precision, fresh processes
    stream = {s: _measure("stream", num_classes, s, plane) for s in sizes}
    full = _measure("full", num_classes, sizes[0], plane)
    rows.append({"name": f"{tag} stored bytes per voxel",
                 "value": stream[sizes[0]]["stored_bytes"] / (sizes[0] * plane[0] * plane[1]),
                 "target": 16, "unit": "B"})
    for s in sizes:
        rows.append({"name": f"{tag} streaming predict peak, {s} slices",
                     "value": stream[s]["peak_bytes"] / 2**30, "target": None, "unit": "GiB"})
    rows.append({"name": f"{tag} full-precision predict peak, {sizes[0]} slices",
                 "value": full["peak_bytes"] / 2**30, "target": None, "unit": "GiB"})
    voxels = sizes[0] * plane[0] * plane[1]
    for form, measured in (("compact", stream[sizes[0]]), ("full", full)):
        rows.append({"name": f"{tag} Prediction bytes per voxel, {form}",
                     "value": measured["prediction_bytes"] / voxels, "target": None,
                     "unit": "B"})
    for s in sizes:
        rows.append({"name": f"{tag} predict seconds, compact, {s} slices",
                     "value": stream[s]["seconds"], "target": None, "unit": "s"})
    rows.append({"name": f"{tag} predict seconds, full, {sizes[0]} slices",
                 "value": full["seconds"], "target": None, "unit": "s"})
    # beyond the slab, only the prediction (top-k arrays and the confidence and entropy maps)
    # grows with the slice count: add its bytes for the missing slices (or the measured
    # growth per slice, if larger)
    a, b = sizes[0], sizes[-1]
    stored_per_slice = stream[b]["prediction_bytes"] / b
    per_slice = max((stream[b]["peak_bytes"] - stream[a]["peak_bytes"]) / (b - a),
                    stored_per_slice)
    peak = stream[b]["peak_bytes"] + per_slice * (full_slices - b)
    rows.append({"name": f"{tag} streaming predict peak, {label} (extrapolated)",
                 "value": peak / 2**30, "target": 6, "unit": "GiB"})
    rows.append({"name": f"{tag} full-precision predict peak, {label} (extrapolated)",
                 "value": full["peak_bytes"] * full_slices / a / 2**30, "target": None,
                 "unit": "GiB"})
    rows.append({"name": f"{tag} C x N float32 logits alone, {label}",
                 "value": num_classes * full_voxels * 4 / 2**30, "target": None, "unit": "GiB"})
    # maps and statistics on a bench-size form (and the same repeated to full size)
    x = torch.from_numpy(ct_volume(sizes[0], plane))[None, None]
    net = network(num_classes)
    with torch.no_grad():
        small, _ = sliding_window_topk(x, net, ROI, num_classes, sw_batch_size=2)
        logits = net(x)[0]  # a per-voxel network: the same logits without windows
    big = _tiled(small, full_slices)
    _views(big, 1.0)  # warm up (compilation)
    rows.append({"name": f"{tag} temperature -> 3 view slices, {label}",
                 "value": best_time(lambda: _views(big, 1.7), 3), "target": 0.2, "unit": "s"})
    rows.append({"name": f"{tag} temperature -> full-volume maps, {label}",
                 "value": best_time(lambda: big.maps(1.7), 1), "target": None, "unit": "s"})
    target = np.asarray(small.labels()).astype(np.uint8)
    probs = torch.softmax(logits / 1.7, 0)
    t_sum = best_time(lambda: probs.sum(), 3)
    stats_from_topk(small, target, temperature=1.0)  # warm up
    t_stats = best_time(lambda: stats_from_topk(small, target, temperature=1.7), 2)
    rows.append({"name": f"{tag} stats from top-k / probs.sum(), {sizes[0]} slices",
                 "value": t_stats / t_sum, "target": None, "unit": "x"})
    rows.append({"name": f"{tag} stats from top-k, {sizes[0]} slices", "value": t_stats,
                 "target": None, "unit": "s"})
    rows.append({"name": f"{tag} probs.sum(), {sizes[0]} slices", "value": t_sum,
                 "target": None, "unit": "s"})
    big_target = np.ascontiguousarray(np.asarray(big.labels()))
    rows.append({"name": f"{tag} stats from top-k, {label}",
                 "value": best_time(lambda: stats_from_topk(
                     big, big_target, temperature=1.7), 1), "target": None, "unit": "s"})
    return rows


def run(quick: bool = False) -> list[dict]:
    plane = (128, 128) if quick else PLANE
    sizes = (16, 32)
    full_slices = 32 if quick else FULL_SLICES
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [{"name": "load average (1 min) at start", "value": load, "target": None,
             "unit": ""}]
    for num_classes in (25, 3):
        rows.extend(_rows_for(num_classes, plane, sizes, full_slices))
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
               (int(sys.argv[5]), int(sys.argv[6])))
        sys.exit(0)
    quick = "--quick" in sys.argv
    for row in run(quick):
        value = row["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{row['name']:<62} {shown:>10} {row['unit']:<4} target {row['target']}")
