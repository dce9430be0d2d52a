"""Training cases: image/label pairs from files, a CSV, or the embedded sample case.

A :class:`TrainingCase` holds one image ``(Z, Y, X)`` with its integer labels,
its IJK-to-RAS affine and a short id that is recorded in model cards (e.g. as
the source of a prototype). Loaders check geometry and label values and raise
:class:`~CalibSegLib.errors.CalibSegError` with what to fix.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

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

    @property
    def num_voxels(self) -> int:
        return int(self.labels.size)


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """Parse ``"1-40,45,50-52"`` into a sorted list of distinct integers.

    Parameters
    ----------
    text
        Comma-separated integers and inclusive ranges ``a-b``, or a sequence of ints.
    """
    if not isinstance(text, str):
        return sorted({int(v) for v in text})
    seeds: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                cut = part.index("-", 1)
                lo, hi = int(part[:cut]), int(part[cut + 1:])
                if hi < lo:
                    raise ValueError
                seeds.update(range(lo, hi + 1))
            else:
                seeds.add(int(part))
        except ValueError as exc:
            raise CalibSegError(
                f"Cannot read seed list {text!r}: write integers and ranges such as '1-40,45'."
            ) from exc
    if not seeds:
        raise CalibSegError(f"Seed list {text!r} is empty; give at least one seed, e.g. '1-40'.")
    return sorted(seeds)


def format_seeds(seeds: Sequence[int]) -> str:
    """The compact text form of a seed list (inverse of :func:`parse_seeds`)."""
    values = sorted({int(s) for s in seeds})
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def sample_cases(
    name: str = "mni-t1",
    seeds: Sequence[int] = (),
    resolution_mm: float = 2.0,
    crop: tuple[slice, slice, slice] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> list[TrainingCase]:
    """Shifted variants of an embedded sample case, generated once and kept in memory.

    Parameters
    ----------
    name, resolution_mm
        Passed to :func:`CalibSegLib.data.sample_case`.
    seeds
        One case per seed (``shift_seed``); seed ``0`` means the unshifted case.
    crop
        Optional ``(z, y, x)`` slices applied to every case (tests use tiny crops).
    """
    from CalibSegLib.data import sample_case

    cases = []
    for n, seed in enumerate(seeds):
        check_cancel(cancel, "loading of training cases")
        case = sample_case(name, resolution_mm=resolution_mm,
                           shift_seed=None if int(seed) == 0 else int(seed))
        image, labels, probs, affine = case.image, case.labels, case.reference_probs, case.affine
        if crop is not None:
            image, labels = image[crop], labels[crop]
            probs = None if probs is None else probs[(slice(None),) + tuple(crop)]
            start = np.array([crop[2].start or 0, crop[1].start or 0, crop[0].start or 0, 1.0])
            affine = affine.copy()
            affine[:, 3] = affine @ start
        cases.append(TrainingCase(
            case_id=case.name,
            image=np.ascontiguousarray(image, dtype=np.float32),
            labels=np.ascontiguousarray(labels, dtype=np.uint8),
            affine=np.asarray(affine, dtype=np.float64),
            reference_probs=None if probs is None else np.ascontiguousarray(probs),
            source={"sample": name, "resolution_mm": float(resolution_mm), "shift_seed": int(seed),
                    "command": f"calibseg sample-data {name}"
                    + (f" --resolution {resolution_mm:g}" if name == "mni-t1" else "")
                    + (f" --shift-seed {int(seed)}" if int(seed) else "")},
        ))
        report(progress, (n + 1) / max(len(seeds), 1), f"generated {case.name}")
    return cases


def _load_pair(image_path: str, labels_path: str, case_id: str) -> TrainingCase:
    from CalibSegLib.io import read_image

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


def check_labels(cases: Sequence[TrainingCase], num_classes: int) -> None:
    """Raise when a case has label values outside ``0 .. num_classes - 1``."""
    for case in cases:
        top = int(case.labels.max())
        if top >= num_classes:
            raise CalibSegError(
                f"Case {case.case_id} has label value {top}, but the model has {num_classes} "
                f"classes (0..{num_classes - 1}); pass matching --classes."
            )
