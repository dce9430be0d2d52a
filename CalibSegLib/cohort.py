"""Cohorts of image/reference pairs: reading, evaluation and temperature fitting with a model.

A cohort is a folder of ``<id>_image.<ext>`` + ``<id>_labels.<ext>`` pairs or a CSV
with columns ``image``, ``labels`` (optional ``id``). Everything streams case by
case: only mergeable statistics (and NLL sums over a temperature grid) are kept.
"""

from __future__ import annotations

import os

import numpy as np

from CalibSegLib.calibration import default_temperature_grid, fit_temperature_from_grid
from CalibSegLib.data.pairs import csv_cases, folder_cases
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import image_stem
from CalibSegLib.inference import load_prediction, predict
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report


def read_cohort(path: str):
    """The cases of a cohort folder or CSV (see the module docstring)."""

    if os.path.isdir(path):
        return folder_cases(path)
    if path.lower().endswith(".csv"):
        return csv_cases(path)
    raise CalibSegError(f"{path}: a cohort is a folder of <id>_image/<id>_labels pairs or a CSV.")


def _check_labels(case, model) -> None:
    if int(case.labels.max()) >= model.num_classes:
        raise CalibSegError(
            f"{case.case_id}: the reference holds label {int(case.labels.max())} but the model "
            f"knows {model.num_classes} classes ({', '.join(model.class_names)}); relabel it.")


def evaluate_cohort(model, cases, n_bins: int = 20, temperature: float | None = None,
                    device: str = "auto", progress: ProgressCallback | None = None,
                    cancel: CancelCallback | None = None):
    """Predict every case and merge its reliability statistics.

    Returns ``(stats, rows)``: the merged :class:`ReliabilityStats` (one image per
    case) and one metrics dict per case (``case`` key added).
    """

    stats = None
    rows = []
    for n, case in enumerate(cases):
        check_cancel(cancel, "cohort evaluation")
        _check_labels(case, model)
        pred = predict(case.image, case.affine, model, device=device, temperature=temperature)
        s = pred.reliability_stats(case.labels, n_bins, image_id=case.case_id,
                                   class_names=model.class_names)
        stats = s if stats is None else stats.merge(s)
        rows.append({"case": case.case_id, "temperature": pred.temperature,
                     **s.metrics("macro").to_dict()})
        report(progress, (n + 1) / len(cases), f"evaluated {case.case_id}")
    if stats is None:
        raise CalibSegError("The cohort holds no case.")
    return stats, rows


def saved_prediction(folder: str | None, case):
    """The prediction ``calibseg predict`` saved for ``case``'s image in ``folder``
    (``<image stem>_prediction.npz``), or None when there is none.

    Raises
    ------
    CalibSegError
        A saved prediction that is not on the case's grid.
    """
    if not folder or "image" not in getattr(case, "source", {}):
        return None
    path = os.path.join(folder, f"{image_stem(case.source['image'])}_prediction.npz")
    if not os.path.isfile(path):
        return None
    prediction = load_prediction(path)
    if prediction.shape != case.labels.shape or not np.allclose(prediction.affine, case.affine,
                                                                atol=1e-3):
        raise CalibSegError(f"{path}: the saved prediction is not on the grid of "
                            f"{case.source['image']}; predict that image again.")
    return prediction


def fit_cohort_temperature(model, cases, grid=None, device: str = "auto",
                           progress: ProgressCallback | None = None,
                           cancel: CancelCallback | None = None,
                           predictions: str | None = None) -> tuple[float, dict]:
    """Temperature minimising the NLL over all voxels of all cases (grid sums, mergeable).

    ``predictions``: a folder of predictions ``calibseg predict`` saved for the
    cohort's images (either form, see :func:`saved_prediction`); those cases are
    not run again. ``info["saved"]`` counts them.
    """

    grid = default_temperature_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    sums = np.zeros(grid.size)
    voxels = saved = 0
    for n, case in enumerate(cases):
        check_cancel(cancel, "temperature fitting")
        _check_labels(case, model)
        pred = saved_prediction(predictions, case)
        if pred is not None and pred.class_names != tuple(model.class_names):
            raise CalibSegError(f"{case.case_id}: the saved prediction has classes "
                                f"{', '.join(pred.class_names)}, not the model's; predict again.")
        saved += pred is not None
        if pred is None:
            pred = predict(case.image, case.affine, model, device=device, maps=False)
        s, count = pred.nll_over_temperatures(case.labels, grid)
        sums += s
        voxels += count
        report(progress, (n + 1) / len(cases), f"logits of {case.case_id}")
    temperature = fit_temperature_from_grid(sums, grid)
    at_one = float(np.interp(0.0, np.log(grid), sums)) / voxels
    best = float(sums.min()) / voxels
    return temperature, {"cases": len(cases), "voxels": voxels, "saved": saved,
                         "nll_at_T1": at_one,
                         "nll_at_fitted_grid_point": best}
