"""``calibseg evaluate``: calibration (ECE / ACE / MCE) and Dice of saved probabilities.

The probabilities are a ``.npy`` / ``.npz`` array ``(C, Z, Y, X)``, a vector image
(NIfTI, NRRD, MetaImage) with one component per class, or a prediction file of
``predict`` (``<stem>_prediction.npz``, either form: the statistics of a compact one
come from its top-k scores without expanding them); the reference is a label
image on the same grid. Class names come from ``--classes``, else from the
sidecar ``predict`` (``<stem>_prediction.json``) or ``sample-data`` (``<stem>.json``)
wrote beside the probabilities. Everything is computed before anything is
written, so an error leaves no partial output. The probability-file logic lives in functions
(:func:`read_probabilities`, :func:`evaluate_files`, :func:`summary`,
:func:`write_outputs`) so that other sources (a model on a cohort) can reuse them.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument

NAME = "evaluate"
HELP = ("measure calibration (ECE, ACE = average calibration error, MCE) and Dice of "
        "class probabilities against a reference segmentation")
EXAMPLE = ("calibseg evaluate --probs out/pred/mni-t1_image_probs.nii.gz --reference "
           "out/sample/mni-t1_labels.nii.gz -o out/eval")

#: Keys of the summary printed with ``--json``.
SUMMARY_KEYS = ("ece", "ace", "mce", "mce_raw", "marginal_ece", "marginal_ace", "marginal_mce",
                "marginal_mce_raw", "per_class", "dice", "n_bins", "min_bin_fraction",
                "min_bin_count", "reduction", "include_background", "nll", "brier", "n_voxels")
#: Files ``evaluate -o`` writes (the cohort ones only with --model/--cohort).
OUTPUT_FILES = ("stats.json", "metrics.json", "reliability.png")
COHORT_FILES = ("cases.csv", "dataset_reliability_histogram.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probs",
                        help="class probabilities: .npy/.npz (C, Z, Y, X), a vector image, or "
                             "the <stem>_prediction.npz file predict writes")
    parser.add_argument("--reference", help="reference label image (with --probs)")
    parser.add_argument("--model", help="model folder (with --cohort)")
    parser.add_argument("--cohort",
                        help="folder of <id>_image/<id>_labels pairs or a CSV (with --model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="with --model: auto uses CUDA when available")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names, background first (default: from the "
                             "prediction's JSON sidecar beside --probs, else class 0, 1, …)")
    parser.add_argument("--bins", type=int, default=20, help="confidence bins")
    parser.add_argument("--include-background", action="store_true",
                        help="let class 0 enter the class means")
    parser.add_argument("--reduction", choices=["macro", "micro"], default="macro",
                        help="macro: per image, then the mean; micro: images pooled first")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("-o", "--output", default=None,
                        help="folder for stats.json, metrics.json and reliability.png "
                             "(default: print only)")
    add_overwrite_argument(parser)


def sidecar_class_names(probs_path: str) -> tuple[str, ...] | None:
    """Class names from the JSON ``predict`` or ``sample-data`` wrote beside ``probs_path``."""
    from CalibSegLib.io import image_suffix

    folder, name = os.path.split(os.path.abspath(probs_path))
    suffix = image_suffix(name)
    stem = name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name
    for tail in ("_probs", "_prediction"):
        if stem.endswith(tail):
            stem = stem[: -len(tail)]
            break
    for candidate in (f"{stem}_prediction.json", f"{stem}.json"):
        path = os.path.join(folder, candidate)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                names = json.load(fh).get("class_names")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    return None


def class_names_for(args: argparse.Namespace, num_classes: int) -> tuple[str, ...] | None:
    """``--classes``, else the sidecar's names when they fit ``num_classes``, else None."""
    from CalibSegLib.errors import CalibSegError

    if args.classes:
        names = tuple(n.strip() for n in args.classes.split(","))
        if len(names) != num_classes:
            raise CalibSegError(f"--classes names {len(names)} classes but the probabilities "
                                f"have {num_classes} channels; give one name per channel.")
        return names
    found = sidecar_class_names(args.probs)
    return found if found is not None and len(found) == num_classes else None


def read_probabilities(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities ``(C, Z, Y, X)`` float32 and the affine (None for numpy files)."""
    from CalibSegLib.errors import CalibSegError

    if not os.path.isfile(path):
        raise CalibSegError(f"{path}: no such file.")
    lower = path.lower()
    if lower.endswith((".npy", ".npz")):
        try:
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                keys = list(data.keys())
                key = "probs" if "probs" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise CalibSegError(
                        f"{path}: holds arrays {keys}; name the probabilities 'probs'.")
                data = data[key]
        except (OSError, ValueError) as exc:
            raise CalibSegError(f"{path}: cannot read this array ({exc}).") from exc
        array = np.asarray(data)
        if array.ndim != 4:
            raise CalibSegError(
                f"{path}: expected an array (C, Z, Y, X), got shape {array.shape}.")
        return array, None
    import SimpleITK as sitk

    from CalibSegLib.io import affine_from_sitk, check_image_file, reader_message

    check_image_file(path)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise CalibSegError(f"{path}: cannot read this image ({reader_message(exc)}); pass "
                            ".npy/.npz or a vector image (NIfTI, NRRD, MetaImage).") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() < 2:
        raise CalibSegError(
            f"{path}: expected a 3D vector image with one component per class, got "
            f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} component(s).")
    array = np.moveaxis(sitk.GetArrayFromImage(image), -1, 0)  # (Z,Y,X,C) -> (C,Z,Y,X)
    return array, affine_from_sitk(image)


def read_reference(path: str, shape: tuple[int, ...], affine: np.ndarray | None) -> np.ndarray:
    """Reference labels on the probabilities' grid (checked), as an integer array."""
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import read_image

    labels, ref_affine = read_image(path)
    if labels.shape != tuple(shape):
        raise CalibSegError(
            f"{path}: the reference has shape {labels.shape} but the probabilities have "
            f"{tuple(shape)}; resample the reference onto the prediction grid.")
    if affine is not None and not np.allclose(affine, ref_affine, atol=1e-3):
        raise CalibSegError(
            f"{path}: the reference is not on the probabilities' grid (different origin, "
            "spacing or direction); resample it onto the prediction grid.")
    if labels.dtype.kind == "f":
        if not np.array_equal(labels, np.rint(labels)):
            raise CalibSegError(f"{path}: the reference holds non-integer values; pass labels.")
        labels = labels.astype(np.int64)
    return labels


def evaluate_files(probs_path: str, reference_path: str, n_bins: int = 20, progress=None,
                   cancel=None, class_names=None):
    """ReliabilityStats of a probability or prediction file against a reference label file.

    ``class_names``: a sequence, or a callable ``(num_classes) -> names or None``
    (a prediction file brings its own names when that gives none).
    """
    from CalibSegLib.inference.prediction_io import is_prediction_file, load_prediction

    if probs_path.lower().endswith(".npz") and is_prediction_file(probs_path):
        prediction = load_prediction(probs_path)
        labels = read_reference(reference_path, prediction.shape, prediction.affine)
        names = class_names(prediction.num_classes) if callable(class_names) else class_names
        return prediction.reliability_stats(
            labels, n_bins, image_id=os.path.basename(probs_path),
            class_names=names or prediction.class_names, progress=progress, cancel=cancel)
    probs, affine = read_probabilities(probs_path)
    labels = read_reference(reference_path, probs.shape[1:], affine)
    from CalibSegLib.calibration import ReliabilityStats

    name = os.path.basename(probs_path)
    if callable(class_names):
        class_names = class_names(probs.shape[0])
    return ReliabilityStats.from_probs(probs, labels, n_bins, image_id=name,
                                       class_names=class_names, progress=progress,
                                       cancel=cancel)


def summary(stats, reduction: str = "macro", include_background: bool = False) -> dict:
    """The JSON summary: top-label and marginal ECE/ACE/MCE, per-class values, Dice."""
    metrics = stats.metrics(reduction, include_background=include_background).to_dict()
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_outputs(stats, result: dict, folder: str) -> list[str]:
    """Write ``stats.json``, ``metrics.json`` and ``reliability.png`` (each atomically)."""
    from CalibSegLib.calibration import plot_reliability_diagram
    from CalibSegLib.io import atomic_path

    figure = plot_reliability_diagram(stats)  # built before any file is written
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, payload in (("stats.json", stats.to_dict()), ("metrics.json", result)):
        path = os.path.join(folder, name)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(_json_safe(payload), f, indent=1)
        written.append(path)
    path = os.path.join(folder, "reliability.png")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    written.append(path)
    return written


def write_cohort_outputs(stats, rows: list[dict], folder: str) -> list[str]:
    """Per-case CSV and the dataset reliability histogram next to :func:`write_outputs`."""
    import csv

    from CalibSegLib.calibration import plot_dataset_reliability_histogram
    from CalibSegLib.io import atomic_path

    figure = plot_dataset_reliability_histogram(stats)
    os.makedirs(folder, exist_ok=True)
    columns = ["case", "temperature", "mean_dice", "marginal_ace", "marginal_ece",
               "marginal_mce", "marginal_mce_raw", "ece", "ace", "mce", "mce_raw", "nll",
               "brier"]
    path = os.path.join(folder, "cases.csv")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c) for c in columns])
    hist = os.path.join(folder, "dataset_reliability_histogram.png")
    with atomic_path(hist) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return [path, hist]


def check(args: argparse.Namespace) -> None:
    """Options and files, before anything is read or a model loaded (no torch import)."""
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import refuse_overwrite

    if args.model or args.cohort:
        if not (args.model and args.cohort) or args.probs or args.reference:
            raise CalibSegError("Use either --model DIR --cohort DIR_OR_CSV, or --probs FILE "
                                "--reference FILE.")
        _checks.model_card(args.model)
        _checks.input_file(args.cohort, "--cohort")
        if args.classes:
            raise CalibSegError("--classes is for --probs; a model brings its class names.")
    elif args.probs and args.reference:
        _checks.input_file(args.probs, "--probs")
        _checks.input_image(args.reference)
    else:
        raise CalibSegError("Give --probs FILE --reference FILE, or --model DIR --cohort DIR.")
    if args.bins < 1:
        raise CalibSegError(f"--bins {args.bins}: give at least 1 bin.")
    if args.output:
        names = OUTPUT_FILES + (COHORT_FILES if args.model else ())
        refuse_overwrite([os.path.join(args.output, n) for n in names], args.overwrite)


def run(args: argparse.Namespace) -> int:
    check(args)
    rows = None
    if args.model:
        from CalibSegLib.cohort import evaluate_cohort, read_cohort
        from CalibSegLib.models import load_model

        stats, rows = evaluate_cohort(load_model(args.model), read_cohort(args.cohort),
                                      args.bins, device=args.device)
    else:
        stats = evaluate_files(args.probs, args.reference, args.bins,
                               class_names=lambda n: class_names_for(args, n))
    result = summary(stats, args.reduction, args.include_background)
    written = write_outputs(stats, result, args.output) if args.output else []
    if args.output and rows is not None:
        written += write_cohort_outputs(stats, rows, args.output)
    if args.json:
        print(json.dumps(_json_safe(result), indent=1))
    elif not getattr(args, "quiet", False):
        for line in summary_lines(result):
            print(line)
    if not getattr(args, "quiet", False):
        for path in written:
            print(f"wrote {path}")
    return 0


def _mce(value: float, raw: float) -> str:
    shown = "  –   " if value != value else f"{value:.4f}"
    return shown if raw == value or raw != raw else f"{shown} (raw {raw:.4f})"


def summary_lines(result: dict) -> list[str]:
    """The human-readable summary of :func:`summary`."""
    lines = [
        f"top-label  ECE {result['ece']:.4f}  ACE {result['ace']:.4f}  "
        f"MCE {_mce(result['mce'], result['mce_raw'])}",
        f"marginal   ECE {result['marginal_ece']:.4f}  ACE {result['marginal_ace']:.4f}  "
        f"MCE {_mce(result['marginal_mce'], result['marginal_mce_raw'])}",
        f"  ({result['reduction']}, {result['n_bins']} bins; ACE = average calibration error; "
        f"MCE leaves out bins under {100 * result['min_bin_fraction']:g} % of the voxels or "
        f"{result['min_bin_count']} voxels, raw = every non-empty bin)",
    ]
    for name, dice in result["dice"].items():
        lines.append(f"  Dice {name}: {dice:.4f}")
    return lines
