"""Training cases: image/label pairs from files, a CSV, or the embedded sample case.

A :class:`TrainingCase` holds one image ``(Z, Y, X)`` with its integer labels,
its IJK-to-RAS affine and a short id that is recorded in model cards (e.g. as
the source of a prototype). The readers of pairs (:func:`folder_cases`,
:func:`csv_cases`) and the seed lists live in :mod:`CalibSegLib.data` (evaluation
cohorts read the same files) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from CalibSegLib.data import sample_case
from CalibSegLib.data.pairs import IMAGE_SUFFIXES, TrainingCase, csv_cases, folder_cases
from CalibSegLib.data.seeds import format_seeds, parse_seeds
from CalibSegLib.errors import CalibSegError
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

__all__ = ["IMAGE_SUFFIXES", "TrainingCase", "check_labels", "csv_cases", "folder_cases",
           "format_seeds", "parse_seeds", "sample_cases"]


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


def check_labels(cases: Sequence[TrainingCase], num_classes: int) -> None:
    """Raise when a case has label values outside ``0 .. num_classes - 1``."""
    for case in cases:
        top = int(case.labels.max())
        if top >= num_classes:
            raise CalibSegError(
                f"Case {case.case_id} has label value {top}, but the model has {num_classes} "
                f"classes (0..{num_classes - 1}); pass matching --classes."
            )
