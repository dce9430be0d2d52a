"""Image/label pairs from a folder or a CSV: training data and evaluation cohorts.

A :class:`TrainingCase` holds one image ``(Z, Y, X)`` with its integer labels,
its IJK-to-RAS affine and a short id that is recorded in model cards (e.g. as
the source of a prototype). Readers check geometry and label values and raise
:class:`~CalibSegLib.errors.CalibSegError` with what to fix.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import read_image

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass
class TrainingCase:
    """One training or validation case."""

    case_id: str
    image: np.ndarray  #: (Z, Y, X) float32, raw intensities
    labels: np.ndarray  #: (Z, Y, X) uint8 class indices
    affine: np.ndarray  #: (4, 4) voxel (i, j, k) -> RAS mm
    reference_probs: np.ndarray | None = None  #: (C, Z, Y, X) soft reference, when known
    source: dict = field(default_factory=dict)  #: how to get the case again


def _load_pair(image_path: str, labels_path: str, case_id: str) -> TrainingCase:
    image, affine = read_image(image_path)
    labels, label_affine = read_image(labels_path)
    if image.shape != labels.shape:
        raise CalibSegError(
            f"{labels_path}: shape {labels.shape} differs from the image {image.shape}; "
            "resample the labels onto the image grid."
        )
    if not np.allclose(affine, label_affine, atol=1e-3):
        raise CalibSegError(
            f"{labels_path}: geometry (origin/spacing/direction) differs from {image_path}; "
            "resample the labels onto the image grid."
        )
    if not np.all(np.isfinite(image)):
        raise CalibSegError(f"{image_path}: image holds NaN or infinite values; fix or mask them.")
    if np.any(labels < 0) or np.any(labels != np.round(labels)) or labels.max() > 255:
        raise CalibSegError(
            f"{labels_path}: labels must be integers 0..255 (0 = background)."
        )
    return TrainingCase(
        case_id=case_id,
        image=np.ascontiguousarray(image, dtype=np.float32),
        labels=np.ascontiguousarray(labels, dtype=np.uint8),
        affine=affine,
        source={"image": os.path.abspath(image_path), "labels": os.path.abspath(labels_path)},
    )


def folder_cases(folder: str) -> list[TrainingCase]:
    """Read every ``<id>_image.<ext>`` / ``<id>_labels.<ext>`` pair in ``folder``."""
    if not os.path.isdir(folder):
        raise CalibSegError(f"{folder}: no such folder of training cases.")
    cases = []
    for suffix in IMAGE_SUFFIXES:
        for image_path in sorted(glob.glob(os.path.join(folder, f"*_image{suffix}"))):
            stem = image_path[: -len(f"_image{suffix}")]
            labels_path = f"{stem}_labels{suffix}"
            if not os.path.exists(labels_path):
                raise CalibSegError(
                    f"{image_path} has no label file; expected {os.path.basename(labels_path)}."
                )
            cases.append(_load_pair(image_path, labels_path, os.path.basename(stem)))
    if not cases:
        raise CalibSegError(
            f"{folder}: found no '<id>_image.nii.gz' + '<id>_labels.nii.gz' pairs "
            f"(also accepted: {', '.join(IMAGE_SUFFIXES[1:])})."
        )
    return cases


def csv_cases(path: str) -> list[TrainingCase]:
    """Read the cases listed in a CSV with columns ``image``, ``labels`` (and optional ``id``).

    Relative paths are resolved against the CSV's folder.
    """
    if not os.path.isfile(path):
        raise CalibSegError(f"{path}: no such CSV file.")
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image", "labels"} <= set(rows[0]):
        raise CalibSegError(
            f"{path}: the CSV needs a header with columns 'image' and 'labels' (optional 'id')."
        )
    cases = []
    for n, row in enumerate(rows):
        image = os.path.join(base, row["image"])
        labels = os.path.join(base, row["labels"])
        case_id = (row.get("id") or "").strip() or f"case{n:03d}"
        cases.append(_load_pair(image, labels, case_id))
    return cases
