"""``calibseg compare``: two models on one image, metrics and overlaid diagrams."""

from __future__ import annotations

import argparse
import json
import os

NAME = "compare"
HELP = "run two models on one image and compare their segmentation and calibration"
EXAMPLE = ("calibseg compare image.nii.gz --model Resources/Models/dicece "
           "--model Resources/Models/dicece-hardace --reference labels.nii.gz -o out/compare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file or DICOM series folder")
    parser.add_argument("--model", action="append", required=True,
                        help="model folder (give two)")
    parser.add_argument("--reference", help="reference label map on the image grid")
    parser.add_argument("--bins", type=int, default=20)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("-o", "--output", default="out/compare", help="output folder")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from CalibSegLib.calibration import ReliabilityStats, plots
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.inference import predict
    from CalibSegLib.io import atomic_path, read_image, write_image
    from CalibSegLib.models import load_model

    if len(args.model) != 2:
        raise CalibSegError("compare needs exactly two --model folders.")
    image, affine = read_image(args.image)
    reference = None
    if args.reference:
        reference, ref_affine = read_image(args.reference)
        if reference.shape != image.shape or not np.allclose(ref_affine, affine, atol=1e-3):
            raise CalibSegError(f"{args.reference}: geometry differs from {args.image}; "
                                "resample the reference onto the image grid.")
    models = [load_model(m) for m in args.model]
    names = [m.name if m.name != models[1 - i].name else f"{m.name}-{'AB'[i]}"
             for i, m in enumerate(models)]
    predictions = [predict(image, affine, m, device=args.device) for m in models]
    result: dict = {"image": os.path.abspath(args.image), "models": {}}
    stats = {}
    for name, model, pred in zip(names, models, predictions):
        entry = {"folder": os.path.abspath(model.folder or ""), "temperature": pred.temperature,
                 "volume_ml": {c: float((pred.labels == k).sum() * abs(np.linalg.det(
                     affine[:3, :3])) / 1000.0) for k, c in enumerate(model.class_names)},
                 "mean_confidence": float(pred.confidence.mean())}
        if reference is not None:
            stats[name] = ReliabilityStats.from_probs(pred.probs, reference, args.bins,
                                                      image_id="image",
                                                      class_names=model.class_names)
            entry["metrics"] = stats[name].metrics("macro")
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
                    f"top-label ECE {m['ece']:.3f}" if m else
                    f"mean confidence {entry['mean_confidence']:.3f}")
            print(f"{name:<20} T={entry['temperature']:.2f} | {text}")
        print(f"same label at {100 * result['agreement']['voxels_same_label']:.1f}% of voxels")
        print(f"outputs: {args.output}")
    return 0
