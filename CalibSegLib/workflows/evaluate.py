"""``calibseg evaluate``: calibration (ECE / ACE / MCE) and Dice of saved probabilities.

The probability-file logic lives in functions (:func:`read_probabilities`,
:func:`evaluate_files`, :func:`summary`, :func:`write_outputs`) so that other sources
(a model on a cohort) can reuse them. Everything is computed before anything is
written, so an error leaves no partial output.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
import SimpleITK as sitk

from CalibSegLib.calibration import (
    ReliabilityStats,
    plot_dataset_reliability_histogram,
    plot_reliability_diagram,
)
from CalibSegLib.cohort import evaluate_cohort, read_cohort
from CalibSegLib.commands.evaluate import SUMMARY_KEYS
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import (
    atomic_path,
    check_image_file,
    image_stem,
    json_ready,
    write_json,
)
from CalibSegLib.inference.prediction_io import is_prediction_file, load_prediction
from CalibSegLib.io import affine_from_sitk, read_image, reader_message
from CalibSegLib.models import load_model

NAME = "evaluate"


def sidecar_class_names(probs_path: str) -> tuple[str, ...] | None:
    """Class names from the JSON ``predict`` or ``sample-data`` wrote beside ``probs_path``."""
    folder, stem = os.path.dirname(os.path.abspath(probs_path)), image_stem(probs_path)
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
    """Reference labels on the probabilities' grid (checked), an integer array of shape
    (Z, Y, X) (``shape``; ``affine`` of shape (4, 4), ``None`` for numpy files)."""
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
    if probs_path.lower().endswith(".npz") and is_prediction_file(probs_path):
        prediction = load_prediction(probs_path)
        labels = read_reference(reference_path, prediction.shape, prediction.affine)
        names = class_names(prediction.num_classes) if callable(class_names) else class_names
        return prediction.reliability_stats(
            labels, n_bins, image_id=os.path.basename(probs_path),
            class_names=names or prediction.class_names, progress=progress, cancel=cancel)
    probs, affine = read_probabilities(probs_path)
    labels = read_reference(reference_path, probs.shape[1:], affine)
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


def write_outputs(stats, result: dict, folder: str) -> list[str]:
    """Write ``stats.json``, ``metrics.json`` and ``reliability.png`` (each atomically)."""
    figure = plot_reliability_diagram(stats)  # built before any file is written
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, payload in (("stats.json", stats.to_dict()), ("metrics.json", result)):
        written.append(write_json(os.path.join(folder, name), payload, indent=1))
    path = os.path.join(folder, "reliability.png")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    written.append(path)
    return written


def write_cohort_outputs(stats, rows: list[dict], folder: str) -> list[str]:
    """Per-case CSV and the dataset reliability histogram next to :func:`write_outputs`."""
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


def run(args: argparse.Namespace) -> int:
    """``calibseg evaluate`` after its checks: statistics, summary and the written files."""
    rows = None
    if args.model:
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
        print(json.dumps(json_ready(result), indent=1))
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
