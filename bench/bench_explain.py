#!/usr/bin/env python
"""Time to explain one sample case per method, with and without faithfulness scores.

Usage: ``bench/bench_explain.py [--quick]``. ``run(quick)`` returns rows
``{"name", "value", "target", "unit"}`` for ``bench/run``. The model is the
tiny untrained prototype U-Net of :mod:`CalibSegLib.models.testing` at the
case's spacing, so the numbers measure the explanation machinery (and its
forward passes), not a trained network's quality; ``--model DIR`` times a given
model folder instead (e.g. the demo model ``Resources/Models/dicece``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from timing import sample_times  # noqa: E402

METHODS = ("prototype", "gradcam", "gradcampp", "occlusion")
#: Seconds allowed per explanation of the 2 mm case on a 2-core CPU.
TARGETS = {"prototype": 5.0, "gradcam": 10.0, "gradcampp": 10.0, "occlusion": 90.0}
FAITHFULNESS_TARGET = 300.0


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Fastest of ``repeats`` calls in seconds, and the last call's result."""
    times, result = sample_times(fn, repeats)
    return min(times), result


def run(quick: bool = False, model_folder: str | None = None) -> list[dict]:
    """Rows: seconds per method without faithfulness, then the faithfulness scores' cost.

    The cost of the faithfulness scores does not depend on the method (always
    ``n_blocks + 1 + 3 * 2 * steps`` segmenter passes), so the full run measures
    it on two maps (prototype and Grad-CAM); ``quick`` measures it for every method
    on the 4 mm case with fewer steps.
    """
    import torch

    from CalibSegLib.data import sample_case
    from CalibSegLib.explain.adapt import as_segmenter
    from CalibSegLib.explain.api import explain
    from CalibSegLib.explain.faithfulness import evaluate_faithfulness
    from CalibSegLib.explain.region import region_mask
    from CalibSegLib.models import load_model
    from CalibSegLib.models.testing import tiny_model

    torch.manual_seed(0)
    resolution = 4.0 if quick else 2.0
    case = sample_case("mni-t1", resolution_mm=resolution)
    label = f"{resolution:g} mm case {'x'.join(str(s) for s in case.image.shape)}"
    options = {"steps": 10, "n_blocks": 16} if quick else {"steps": 20, "n_blocks": 32}
    scale = 0.25 if quick else 1.0
    repeats = 1 if quick else 2
    faithful_methods = METHODS if quick else ("prototype", "gradcam")
    _log(f"{label}, faithfulness {options}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder or tiny_model(os.path.join(tmp, "proto"), head="prototype",
                                            class_names=list(case.class_names),
                                            spacing_mm=(resolution,) * 3,
                                            patch_size=(64, 64, 64))
        model = load_model(folder)
        if model_folder:
            label += f", model {model.name}"
        maps = {}
        for method in METHODS:
            seconds, e = _timed(lambda m=method: explain(
                case.image, case.affine, model, m, "grey matter"),
                1 if method == "occlusion" else repeats)
            maps[method] = e
            rows.append({"name": f"explain {method}, {label}", "value": seconds,
                         "target": TARGETS[method] * scale, "unit": "s"})
            _log(rows[-1])
        segmenter = as_segmenter(model, affine=case.affine).eval()
        for method in faithful_methods:
            e = maps[method]
            region, _ = region_mask(_labels(segmenter, case.image), e.target_class)
            seconds, f = _timed(lambda e=e, r=region: evaluate_faithfulness(
                segmenter, case.image, e.map, e.target_class, r, reference=case.labels,
                **options), 1)
            rows.append({"name": f"faithfulness of {method} map ({f['perturbed_images']} "
                                 "passes)", "value": seconds,
                         "target": FAITHFULNESS_TARGET * scale, "unit": "s"})
            _log(rows[-1])
            for key in ("deletion_auc", "insertion_auc", "correlation"):
                net = "trained" if model_folder else "untrained"
                rows.append({"name": f"  {method} {key} ({net} net; random "
                                     f"{f['random']['permuted'][key]:.3f})",
                             "value": f["explanation"][key], "target": None, "unit": ""})
                _log(rows[-1])
    return rows


def _labels(segmenter, image):
    from CalibSegLib.explain.segmenter import predict_logits

    return predict_logits(segmenter, image).argmax(0).numpy()


def _log(message) -> None:
    print(f"[bench_explain] {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 mm case, fewer steps")
    parser.add_argument("--model", default=None, help="model folder to time (default: tiny)")
    args = parser.parse_args()
    rows = run(quick=args.quick, model_folder=args.model)
    print(f"{'benchmark':<64} {'value':>9} {'unit':<4} {'target':>7}")
    for r in rows:
        target = "" if r["target"] is None else f"{r['target']:g}"
        print(f"{r['name']:<64} {r['value']:>9.3f} {r['unit']:<4} {target:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
