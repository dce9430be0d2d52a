"""``calibseg compare``: two models on one image, metrics and overlaid diagrams."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from CalibSegLib.calibration import plots
from CalibSegLib.commands.compare import is_saved
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import atomic_path
from CalibSegLib.inference import load_prediction, predict
from CalibSegLib.io import read_image, write_image
from CalibSegLib.models import load_model
from CalibSegLib.workflows.console import warn_if_label_image

NAME = "compare"


def run(args: argparse.Namespace) -> int:
    """``calibseg compare`` after its checks: predict (or load), measure, write, print."""
    names = args.model_labels
    image, affine = read_image(args.image)
    warn_if_label_image(NAME, image, args.image)
    reference = None
    if args.reference:
        reference, ref_affine = read_image(args.reference)
        if reference.shape != image.shape or not np.allclose(ref_affine, affine, atol=1e-3):
            raise CalibSegError(f"{args.reference}: geometry differs from {args.image}; "
                                "resample the reference onto the image grid.")
    predictions, sources = [], []
    for spec in args.model:
        if is_saved(spec):
            pred = load_prediction(spec)
            if pred.shape != image.shape or not np.allclose(pred.affine, affine, atol=1e-3):
                raise CalibSegError(f"{spec}: the prediction is not on the grid of {args.image}; "
                                    "pass the image it was predicted on.")
            sources.append(os.path.abspath(spec))
        else:
            model = load_model(spec)
            pred = predict(image, affine, model, device=args.device)
            sources.append(os.path.abspath(model.folder or ""))
        predictions.append(pred)
    if predictions[0].class_names != predictions[1].class_names:
        raise CalibSegError("The two predictions have different classes; compare models of "
                            "the same task.")
    result: dict = {"image": os.path.abspath(args.image), "models": {}}
    stats = {}
    for name, source, pred in zip(names, sources, predictions):
        entry = {"folder": source, "temperature": pred.temperature,
                 "form": "compact" if pred.is_compact else "full",
                 "volume_ml": {c: float((pred.labels == k).sum() * abs(np.linalg.det(
                     affine[:3, :3])) / 1000.0) for k, c in enumerate(pred.class_names)},
                 "mean_confidence": float(pred.confidence.mean())}
        if reference is not None:
            stats[name] = pred.reliability_stats(reference, args.bins, image_id="image",
                                                 class_names=pred.class_names)
            entry["metrics"] = stats[name].metrics("macro").to_dict()
        result["models"][name] = entry
    a, b = predictions
    result["agreement"] = {"voxels_same_label": float((a.labels == b.labels).mean())}
    os.makedirs(args.output, exist_ok=True)
    for name, pred in zip(names, predictions):
        write_image(os.path.join(args.output, f"{name}_labels.nii.gz"), pred.labels, affine)
        write_image(os.path.join(args.output, f"{name}_confidence.nii.gz"), pred.confidence,
                    affine)
    if stats:
        plots.save_reliability_diagram(list(stats.items()),
                                       os.path.join(args.output, "reliability.png"))
    with atomic_path(os.path.join(args.output, "compare.json")) as tmp, \
            open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2, default=float)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        for name, entry in result["models"].items():
            m = entry.get("metrics")
            text = (f"Dice {m['mean_dice']:.3f} | marginal ACE {m['marginal_ace']:.3f} | "
                    f"top-label ECE {m['ece']:.3f}, MCE {m['mce']:.3f} (raw "
                    f"{m['mce_raw']:.3f})" if m else
                    f"mean confidence {entry['mean_confidence']:.3f}")
            print(f"{name:<20} T={entry['temperature']:.2f} | {text}")
        print(f"same label at {100 * result['agreement']['voxels_same_label']:.1f}% of voxels")
        print(f"outputs: {args.output}")
    return 0
