"""Benchmark: ``predict`` against plain MONAI sliding-window inference of the same network.

Rows (ratios of minimum wall times over interleaved repeats, one process):

* ``predict / sliding_window`` — ``predict(maps=False)``: normalisation, sliding
  window, softmax, labels, confidence and entropy, numpy conversion; the input
  is already on the model grid, so no resampling. Target <= 1.15.
* ``predict+maps / sliding_window`` — prototype maps too (similarity,
  nearest prototype, top similarity, winning-class contribution). Target <= 1.3.
* ``1 + added steps / sliding_window`` — the same two comparisons with the steps
  ``predict`` adds (normalisation, post-processing) timed on their own: a
  noise-robust estimate of the same ratios.
* ``predict oblique / sliding_window`` — an oblique, anisotropic copy of the
  input, so resampling there and back is included (reported only).

Baseline: ``monai.inferers.sliding_window_inference`` of the network's logits
on the normalised input at the model's spacing, same window, overlap 0.25,
Gaussian blending, window batch 4. The model is the demo-size prototype
network (channels 8/16/32, 16 features, 3 prototypes per class, 64³ windows),
untrained (speed does not depend on training).

Usage: ``.venv/bin/python bench/bench_predict.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _oblique(case) -> tuple[np.ndarray, np.ndarray]:
    """The case resampled onto a rotated grid with 1.5 × 2 × 2.5 mm voxels."""
    from CalibSegLib.inference import resample

    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    spacing = np.array([1.5, 2.0, 2.5])
    extent = np.array(case.image.shape[::-1]) * 2.0
    size = np.ceil(extent / spacing).astype(int)
    centre = case.affine[:3, :3] @ ((np.array(case.image.shape[::-1]) - 1) / 2) + case.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ ((size - 1) / 2)
    shape = (int(size[2]), int(size[1]), int(size[0]))
    data = torch.from_numpy(case.image.astype(np.float32))[None, None]
    image = resample(data, case.affine, shape, affine)[0, 0].numpy()
    return image, affine


def run(quick: bool = False) -> list[dict]:
    """Measure and return rows ``{name, value, target, unit}``."""
    from monai.inferers import sliding_window_inference

    from CalibSegLib.data import sample_case
    from CalibSegLib.inference import predict
    from CalibSegLib.models import load_model, new_card, normalize_intensity
    from CalibSegLib.models.networks import build_network
    from CalibSegLib.models.store import save_model

    case = sample_case("mni-t1", resolution_mm=2.0)
    torch.manual_seed(0)
    card = new_card("bench", list(case.class_names), head="prototype")
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(save_model(os.path.join(tmp, "m"), card, build_network(card)))
    network = model.network
    roi = tuple(reversed(card.patch_size))
    image, affine = case.image, case.affine
    oblique_image, oblique_affine = _oblique(case)

    def baseline() -> None:
        x = torch.from_numpy(normalize_intensity(image, card.normalization))[None, None]
        with torch.no_grad():
            sliding_window_inference(x, roi, 4, network, overlap=0.25, mode="gaussian",
                                     padding_mode="replicate")

    jobs = {
        "sliding_window": baseline,
        "predict": lambda: predict(image, affine, model, device="cpu", maps=False),
        "predict+maps": lambda: predict(image, affine, model, device="cpu", maps=True),
        "predict oblique": lambda: predict(oblique_image, oblique_affine, model, device="cpu",
                                           maps=True),
    }
    repeats = 2 if quick else 5
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for job in jobs.values():  # warm-up
        job()
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    # The steps predict adds, timed alone (less exposed to machine noise than the ratios).
    from CalibSegLib.inference.predict import _finish

    stitched = {"predict": torch.randn(1, card.num_classes, *image.shape),
                "predict+maps": torch.rand(1, card.num_prototypes, *image.shape) * 5}
    extra: dict[str, float] = {}
    for name, out in stitched.items():
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            normalize_intensity(image, card.normalization)
            with torch.no_grad():
                _finish(out, network, name == "predict+maps", 1.0, card.num_classes)
            runs.append(time.perf_counter() - start)
        extra[name] = min(runs)
    base = best["sliding_window"]
    shape = "x".join(str(s) for s in image.shape)
    return [
        {"name": f"predict: sliding_window seconds ({shape}, 64³ windows)",
         "value": round(base, 3), "target": None, "unit": "s"},
        {"name": "predict / sliding_window (confidence+entropy)",
         "value": round(best["predict"] / base, 3), "target": 1.15, "unit": "×"},
        {"name": "predict+maps / sliding_window (prototype maps)",
         "value": round(best["predict+maps"] / base, 3), "target": 1.3, "unit": "×"},
        {"name": "1 + added steps / sliding_window (confidence+entropy)",
         "value": round(1 + extra["predict"] / base, 3), "target": 1.15, "unit": "×"},
        {"name": "1 + added steps / sliding_window (prototype maps)",
         "value": round(1 + extra["predict+maps"] / base, 3), "target": 1.3, "unit": "×"},
        {"name": "predict oblique+maps / sliding_window (resampling both ways)",
         "value": round(best["predict oblique"] / base, 3), "target": None, "unit": "×"},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = run(args.quick)
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>8}  {'target':>7}")
    for r in rows:
        target = "" if r["target"] is None else f"<= {r['target']}"
        print(f"{r['name']:<{width}}  {r['value']:>7}{r['unit']}  {target:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
