"""``calibseg compare``: two models on one image, metrics and overlaid diagrams.

Each ``--model`` is a model folder (run on the image) or a prediction file that
``predict`` wrote for the image (``<stem>_prediction.npz``, either form; not run again).
"""

from __future__ import annotations

import argparse
import json
import os

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument

NAME = "compare"
HELP = "run two models on one image and compare their segmentation and calibration"
EXAMPLE = ("calibseg compare out/sample/mni-t1_image.nii.gz --model Resources/Models/dicece "
           "--model Resources/Models/dicece-softace --reference out/sample/mni-t1_labels.nii.gz "
           "-o out/compare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file or DICOM series folder")
    parser.add_argument("--model", action="append", required=True,
                        help="model folder, or a <stem>_prediction.npz file predict wrote for "
                             "the image (give two)")
    parser.add_argument("--reference", help="reference label map on the image grid")
    parser.add_argument("--bins", type=int, default=20, help="confidence bins")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available")
    parser.add_argument("-o", "--output", default="out/compare", help="output folder")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_overwrite_argument(parser)


def _is_saved(spec: str) -> bool:
    """Whether a ``--model`` entry is a saved prediction file rather than a model folder."""
    return spec.lower().endswith(".npz") and os.path.isfile(spec)


def _names(card_names: list[str]) -> list[str]:
    return [n if n != card_names[1 - i] else f"{n}-{'AB'[i]}" for i, n in enumerate(card_names)]


def check(args: argparse.Namespace) -> list[str]:
    """Options, files and outputs before any model is loaded; returns the models' labels."""
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import refuse_overwrite

    if len(args.model) != 2:
        raise CalibSegError("compare needs exactly two --model folders.")
    _checks.input_image(args.image)
    if args.reference:
        _checks.input_image(args.reference)
    if args.bins < 1:
        raise CalibSegError(f"--bins {args.bins}: give at least 1 bin.")
    folders = [m for m in args.model if not _is_saved(m)]
    classes = [_checks.model_class_names(m) for m in folders]
    if len(classes) == 2 and classes[0] != classes[1]:
        raise CalibSegError("The two models have different classes; compare models of the "
                            "same task.")
    names = _names([os.path.basename(m)[: -len(".npz")] if _is_saved(m) else str(
        _checks.model_card(m).get("name", os.path.basename(os.path.normpath(m))))
        for m in args.model])
    planned = [os.path.join(args.output, f"{n}_{k}.nii.gz") for n in names
               for k in ("labels", "confidence")]
    planned += [os.path.join(args.output, f) for f in ("compare.json", "reliability.png")]
    refuse_overwrite(planned, args.overwrite)
    return names


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import atomic_path, read_image, write_image

    names = check(args)
    image, affine = read_image(args.image)
    _checks.warn_if_label_image(NAME, image, args.image)
    reference = None
    if args.reference:
        reference, ref_affine = read_image(args.reference)
        if reference.shape != image.shape or not np.allclose(ref_affine, affine, atol=1e-3):
            raise CalibSegError(f"{args.reference}: geometry differs from {args.image}; "
                                "resample the reference onto the image grid.")
    from CalibSegLib.calibration import plots
    from CalibSegLib.inference import load_prediction, predict
    from CalibSegLib.models import load_model

    predictions, sources = [], []
    for spec in args.model:
        if _is_saved(spec):
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
