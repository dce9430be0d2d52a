"""Compare models on cases: predict, measure calibration, recalibrate, explain, write the report.

:func:`run_report` is the job behind ``calibseg demo`` and ``calibseg report``;
:func:`run` is ``calibseg report`` after its checks (one image and its reference).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from CalibSegLib.data.case import SampleCase
from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain import explain
from CalibSegLib.files import atomic_path
from CalibSegLib.inference import apply_temperature, predict
from CalibSegLib.io import read_image, write_image
from CalibSegLib.models import load_model
from CalibSegLib.progress import ProgressCallback, report
from CalibSegLib.report.comparison import comparison_page
from CalibSegLib.workflows.console import progress_bar, warn_if_label_image

NAME = "report"


def run_report(folders, cases, output: str, focus_index: int = 0, faithfulness: bool = True,
               progress: ProgressCallback | None = None, subtitle: str | None = None) -> dict:
    """Predict, compare, recalibrate and explain ``cases`` with the models in ``folders``.

    ``cases`` need ``name``, ``image``, ``affine``, ``labels`` (reference) and
    ``reference_probs`` (or None). Writes ``report.html``, ``metrics.json`` and the
    maps of the focus case into ``output``; returns the summary dict.
    """
    start = time.perf_counter()
    loaded = [load_model(f) for f in folders]
    for model in loaded[1:]:
        if model.class_names != loaded[0].class_names:
            raise CalibSegError("The models have different classes; compare models of the "
                                "same task.")
    for case in cases:
        if int(case.labels.max()) >= loaded[0].num_classes:
            raise CalibSegError(
                f"{case.name}: the reference holds label {int(case.labels.max())}, unknown to "
                f"the model ({', '.join(loaded[0].class_names)}).")
    focus = cases[focus_index]
    os.makedirs(output, exist_ok=True)
    results: dict = {}
    steps = len(loaded) * len(cases)
    done = 0
    for model in loaded:
        entry: dict[str, Any] = {"T=1": None, "fitted": None, "rows": [], "focus": None}
        for case in cases:
            prediction = predict(case.image, case.affine, model, device="auto")
            for label, pred in (("T=1", apply_temperature(prediction, 1.0)),
                                ("fitted", prediction)):
                stats = pred.reliability_stats(
                    case.labels, 20, image_id=case.name,
                    reference_probs=case.reference_probs, class_names=model.class_names)
                entry[label] = stats if entry[label] is None else entry[label].merge(stats)
                entry["rows"].append((case.name, label, pred.temperature,
                                      stats.metrics("macro").to_dict()))
            if case is focus:
                entry["focus"] = prediction
            done += 1
            report(progress, 0.6 * done / steps, f"{model.name}: {case.name}")
        results[model.name] = entry

    # explanation of the focus case by the last (calibration-trained) model
    explainer = loaded[-1]
    target = explainer.class_names.index("grey matter") if "grey matter" in \
        explainer.class_names else min(1, explainer.num_classes - 1)
    method = "prototype" if explainer.is_prototype else "gradcam"
    report(progress, 0.62, f"explaining ({method} map"
           + (" and its faithfulness, the longest step)" if faithfulness else ")"))
    explanation = explain(focus.image, focus.affine, explainer, method=method,
                          target_class=target, faithfulness=faithfulness,
                          faithfulness_options={"steps": 10, "n_blocks": 16},
                          reference=focus.labels, top_prototypes=None)
    report(progress, 0.9, "writing the report")

    # maps of the focus case
    written = []
    for model in loaded:
        pred = results[model.name]["focus"]
        stem = os.path.join(output, f"{focus.name}_{model.name}")
        written += [write_image(stem + "_labels.nii.gz", pred.labels, pred.affine),
                    write_image(stem + "_confidence.nii.gz", pred.confidence, pred.affine),
                    write_image(stem + "_entropy.nii.gz", pred.entropy, pred.affine)]
    written.append(write_image(os.path.join(output, f"{focus.name}_{explainer.name}_"
                                            f"{method}_explanation.nii.gz"),
                               explanation.map, focus.affine))

    subtitle = subtitle or f"{len(loaded)} model(s) on {len(cases)} case(s)"
    page = comparison_page(loaded, cases, focus, results, explanation, explainer, subtitle)
    path = page.write(os.path.join(output, "report.html"))
    summary = {
        "report": path,
        "seconds": round(time.perf_counter() - start, 1),
        "cases": [c.name for c in cases],
        "models": {
            name: {label: {k: v for k, v in r[label].metrics("macro").to_dict().items()
                           if k in ("mean_dice", "marginal_ace", "marginal_ece", "ece",
                                    "mce", "mce_raw", "soft_marginal_ace", "nll")}
                   | {"temperature": 1.0 if label == "T=1" else results[name]["focus"].temperature}
                   for label in ("T=1", "fitted")}
            for name, r in results.items()},
        "explanation": {k: explanation.faithfulness.get(k) for k in ("beats_random", "vs_random")}
        if explanation.faithfulness else None,
        "files": [os.path.basename(p) for p in written],
    }
    with atomic_path(os.path.join(output, "metrics.json")) as tmp, \
            open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, default=float)
    report(progress, 1.0, "done")
    return summary


def run(args: argparse.Namespace) -> int:
    """``calibseg report`` after its checks: the comparison report of the models on the image."""
    image, affine = read_image(args.image)
    warn_if_label_image(NAME, image, args.image)
    labels, ref_affine = read_image(args.reference)
    if labels.shape != image.shape or not np.allclose(ref_affine, affine, atol=1e-3):
        raise CalibSegError(f"{args.reference}: geometry differs from {args.image}; resample "
                            "the reference onto the image grid.")
    if labels.min() < 0 or not np.array_equal(labels, np.round(labels)):
        raise CalibSegError(f"{args.reference}: labels must be whole numbers 0, 1, 2 ...")
    name = os.path.basename(os.path.normpath(args.image)).split(".")[0]
    case = SampleCase(name=name, image=image.astype(np.float32), affine=affine,
                      labels=labels.astype(np.uint8), class_names=(), class_colors=(),
                      reference_probs=None)
    quiet = getattr(args, "quiet", False)
    if not args.no_faithfulness and not quiet:
        print("calibseg report: the faithfulness scores of the explanation take about a minute "
              "on a CPU (--no-faithfulness skips them)", file=sys.stderr)
    with progress_bar(NAME, quiet) as progress:
        summary = run_report(args.model, [case], args.output, focus_index=0,
                             faithfulness=not args.no_faithfulness, progress=progress,
                             subtitle=f"{len(args.model)} model(s) on {name}")
    print(f"report: {summary['report']}")
    return 0
