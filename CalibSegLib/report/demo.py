"""The main job: two demo models on the embedded sample case, compared, explained, reported."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.progress import ProgressCallback, report
from CalibSegLib.report.html import HtmlReport, esc, figure_data_uri, fmt

DEMO_MODELS = ("dicece", "dicece-softace")
METRIC_COLUMNS = (("Dice GM", "dice", "grey matter"), ("Dice WM", "dice", "white matter"),
                  ("marginal ACE", "marginal_ace", None), ("marginal ECE", "marginal_ece", None),
                  ("marginal MCE (raw)", "marginal_mce", None), ("top-label ECE", "ece", None),
                  ("top-label MCE (raw)", "mce", None),
                  ("soft marginal ACE", "soft_marginal_ace", None), ("NLL", "nll", None),
                  ("Brier", "brier", None))
#: Columns shown only when the cases carry a soft reference.
SOFT_COLUMNS = ("soft_marginal_ace",)


def models_folder() -> str:
    """``Resources/Models`` of the source tree or of the installed extension."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.path.join(here, "Resources", "Models"),
                      os.path.join(os.path.dirname(here), "Resources", "Models")):
        if os.path.isdir(candidate):
            return candidate
    raise CalibSegError("The demo models (Resources/Models) were not found next to CalibSegLib; "
                        "run from the CalibSeg source tree or pass --models.")


def _value(metrics: dict, key: str, cls: str | None):
    value = metrics.get(key)
    if isinstance(value, dict):
        return value.get(cls, float("nan"))
    if key.endswith("mce"):  # MCE under the minimum-bin-mass rule, the raw value alongside
        raw = metrics.get(f"{key}_raw")
        shown = fmt(value)
        return shown if raw is None or fmt(raw) == shown else f"{shown} ({fmt(raw)})"
    return value


def _columns(soft: bool):
    return [c for c in METRIC_COLUMNS if soft or c[1] not in SOFT_COLUMNS]


def run_demo(output: str = "out/demo", shift_seeds=(1001, 1002, 1003), models=None,
             faithfulness: bool = True, progress: ProgressCallback | None = None) -> dict:
    """Run the demo and write ``report.html`` and ``metrics.json`` into ``output``.

    The embedded 2 mm MNI case and its shifted variants ``shift_seeds`` (never used in
    training), the shipped demo models unless ``models`` are given. Returns a summary
    dict (report path, per-model key numbers, timings).
    """
    from CalibSegLib.data import sample_case

    folders = list(models) if models else [os.path.join(models_folder(), m) for m in DEMO_MODELS]
    cases = [sample_case("mni-t1", 2.0)] + [sample_case("mni-t1", 2.0, shift_seed=s)
                                            for s in shift_seeds]
    return run_report(folders, cases, output, focus_index=1 if len(cases) > 1 else 0,
                      faithfulness=faithfulness, progress=progress,
                      subtitle=f"{len(folders)} models on the MNI ICBM152 T1 sample case (2 mm) "
                               f"and {len(cases) - 1} held-out shifted variants")


def run_report(folders, cases, output: str, focus_index: int = 0, faithfulness: bool = True,
               progress: ProgressCallback | None = None, subtitle: str | None = None) -> dict:
    """Predict, compare, recalibrate and explain ``cases`` with the models in ``folders``.

    ``cases`` need ``name``, ``image``, ``affine``, ``labels`` (reference) and
    ``reference_probs`` (or None). Writes ``report.html``, ``metrics.json`` and the
    maps of the focus case into ``output``; returns the summary dict.
    """
    from CalibSegLib.calibration import ReliabilityStats, plots
    from CalibSegLib.explain import explain
    from CalibSegLib.inference import apply_temperature, predict
    from CalibSegLib.io import write_image
    from CalibSegLib.models import load_model

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
        entry = {"T=1": None, "fitted": None, "rows": [], "focus": None}
        for case in cases:
            prediction = predict(case.image, case.affine, model, device="auto")
            for label, pred in (("T=1", apply_temperature(prediction, 1.0)),
                                ("fitted", prediction)):
                stats = ReliabilityStats.from_probs(
                    pred.probs, case.labels, 20, image_id=case.name,
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
    page = _build_report(loaded, cases, focus, results, explanation, explainer, plots, subtitle)
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
    with open(os.path.join(output, "metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, default=float)
    report(progress, 1.0, "done")
    return summary


def _build_report(models, cases, focus, results, explanation, explainer, plots,
                  subtitle: str) -> HtmlReport:
    from CalibSegLib.calibration.diagram import MIN_BIN_COUNT, MIN_BIN_FRACTION
    from CalibSegLib.explain.table import prototype_evidence

    soft = all(c.reference_probs is not None for c in cases)
    rule = (f"MCE leaves out confidence bins holding less than {100 * MIN_BIN_FRACTION:g} % of "
            f"a diagram's voxels or fewer than {MIN_BIN_COUNT} voxels (their observed frequency "
            "is noise); the raw MCE over every non-empty bin is shown in brackets where it "
            "differs, and diagrams draw such bins in grey with their count")
    page = HtmlReport(
        "CalibSeg report",
        f"{subtitle} · ACE = Average Calibration Error · metrics are per image, then "
        "averaged (macro), background excluded")
    # key numbers
    kpis = []
    for name, r in results.items():
        m1, mf = r["T=1"].metrics().to_dict(), r["fitted"].metrics().to_dict()
        text = (f"<b>{esc(name)}</b>: Dice {fmt(m1['mean_dice'])} · marginal ACE "
                f"{fmt(m1['marginal_ace'])} → {fmt(mf['marginal_ace'])} · top-label ECE "
                f"{fmt(m1['ece'])} → {fmt(mf['ece'])} after T")
        if soft:
            text += f" · soft-reference ACE {fmt(m1.get('soft_marginal_ace'))}"
        kpis.append(f"<span class='kpi'>{text}</span>")
    page.section("Summary", "".join(kpis) + "<p class='note'>Arrows show the change after "
                 "temperature scaling with each card's fitted temperature (the segmentation "
                 "does not change)." + (" The soft reference is the template's tissue "
                                        "probability maps." if soft else "") + "</p>")
    # model cards
    cards = []
    for model in models:
        card = model.card
        training = card.training or {}
        data = training.get("data", {})
        cards.append("<div class='card'><h3>" + esc(f"{card.name} {card.version}") + "</h3>"
                     + HtmlReport.definition_list([
                         ("description", card.description),
                         ("classes", ", ".join(model.class_names)),
                         ("input", f"{card.spacing_mm} mm, {card.orientation}, "
                                   f"normalisation {card.normalization.get('type', '')}"),
                         ("training loss", training.get("loss", "")),
                         ("training data", f"{data.get('sample', '')} shifted variants, seeds "
                                           f"{data.get('train_seeds', '')} (validation "
                                           f"{data.get('val_seeds', '')})"),
                         ("fitted temperature", fmt(card.temperature)),
                         ("intended use", card.intended_use),
                         ("limitations", card.limitations)]) + "</div>")
    page.section("Model cards", "<div class='grid'>" + "".join(cards) + "</div>")
    # metrics table
    columns = _columns(soft)
    rows = []
    for name, r in results.items():
        for case_name, _label, temperature, metrics in r["rows"]:
            rows.append([name, case_name, f"{temperature:.2f}"] +
                        [_value(metrics, key, cls) for _, key, cls in columns])
    for name, r in results.items():
        for label in ("T=1", "fitted"):
            m = r[label].metrics("macro").to_dict()
            rows.append([name, f"mean over {len(cases)} cases", label] +
                        [_value(m, key, cls) for _, key, cls in columns])
    foreground = list(models[0].class_names[1:])
    page.section("Metrics", HtmlReport.table(
        ["model", "case", "T"] + [c[0] for c in columns], rows) +
        f"<p class='note'>Marginal = one-vs-rest per class, mean over "
        f"{esc(', '.join(foreground))}. 20 equal-width bins; empty bins are skipped. "
        f"{esc(rule)}.</p>")
    # reliability diagrams
    figs = []
    for label in ("T=1", "fitted"):
        pairs = [(name, r[label]) for name, r in results.items()]
        figs.append(HtmlReport.image(figure_data_uri(plots.plot_reliability_diagram(
            pairs, None, title=f"Top-label reliability, all cases, "
                               f"{'T = 1' if label == 'T=1' else 'fitted T'}")), label))
        gm = models[0].class_names.index("grey matter") if "grey matter" in \
            models[0].class_names else 1
        figs.append(HtmlReport.image(figure_data_uri(plots.plot_reliability_diagram(
            pairs, gm, title=f"Grey matter (one-vs-rest), "
                             f"{'T = 1' if label == 'T=1' else 'fitted T'}")), label))
    page.section("Reliability diagrams (models overlaid)",
                 "<div class='grid'>" + "".join(f"<div class='card'>{f}</div>" for f in figs)
                 + f"</div><p class='note'>The lower panels give the voxels per bin. {esc(rule)}."
                 "</p>")
    hists = [HtmlReport.image(figure_data_uri(plots.plot_dataset_reliability_histogram(
        r["T=1"], title=f"{name}: dataset reliability histogram ({len(cases)} cases, T = 1)")),
        name) for name, r in results.items()]
    page.section("Dataset reliability histograms", "".join(hists) +
                 "<p class='note'>Per class, each column shows where the cases' observed "
                 "frequency falls for that confidence bin; a calibrated model keeps the mass on "
                 "the diagonal.</p>")
    # montages
    from CalibSegLib.report.figures import gallery_figure, montage_figure

    for model in models:
        pred = results[model.name]["focus"]
        fig = montage_figure(focus.image, [
            ("reference", focus.labels, {"labels": True, "colors": model.class_colors}),
            ("segmentation", pred.labels, {"labels": True, "colors": model.class_colors}),
            ("1 − confidence", 1.0 - pred.confidence, {"cmap": "inferno", "vmin": 0,
                                                       "vmax": 0.6}),
            ("entropy", pred.entropy, {"cmap": "viridis", "vmin": 0, "vmax": 1}),
        ], title=f"{model.name} on {focus.name} (T = {pred.temperature:.2f})")
        page.section(f"Overlays: {model.name}", HtmlReport.image(figure_data_uri(fig, 90),
                                                                 model.name))
    # explanation
    body = ""
    what = "prototype evidence" if explanation.method == "prototype" else explanation.method
    fig = montage_figure(focus.image, [(f"{what} ({explanation.class_name})",
                                        explanation.map, {"cmap": "magma", "alpha": 0.65})],
                         title=f"{explainer.name}: {explanation.method} explanation, "
                               f"upsampling {explanation.upsampling}")
    body += HtmlReport.image(figure_data_uri(fig, 90), "explanation")
    faith = explanation.faithfulness
    if faith:
        main = faith["explanation"]
        rows = [[f"{explanation.method} map", main["deletion_auc"], main["insertion_auc"],
                 main["correlation"]]]
        for variant, r in faith["random"].items():
            rows.append([f"random ({variant})", r["deletion_auc"], r["insertion_auc"],
                         r["correlation"]])
        verdict = ("<p class='ok'>The map beats the random baselines.</p>"
                   if faith.get("beats_random") else
                   "<p class='warn'>The map does not beat the random baseline: do not trust "
                   "it as an explanation.</p>")
        plaus = faith.get("plausibility", {})
        body += ("<h3>Faithfulness</h3>" + HtmlReport.table(
            ["map", "deletion AUC (lower is better)", "insertion AUC (higher is better)",
             "faithfulness correlation"], rows) + verdict +
            f"<p class='note'>Removed voxels are replaced by {esc(_baseline(faith['baseline']))}; "
            f"{faith['steps']} steps, {faith['n_blocks']} random blocks. Activation precision "
            f"against the reference (plausibility, not faithfulness): "
            f"{fmt(plaus.get('activation_precision'))}.</p>")
    elif explanation.faithfulness is None:
        body += ("<p class='note'>Faithfulness was not measured in this run "
                 "(--no-faithfulness).</p>")
    protos = prototype_evidence(explanation.prototypes or [], top=4)
    if protos:
        body += (f"<h3>This looks like that: prototypes behind the "
                 f"{esc(explanation.class_name)} region</h3>" + HtmlReport.table(
                     ["evidence", "rank", "prototype", "prototype's class",
                      "signed share of evidence", "mean similarity", "source case",
                      "voxel (i, j, k)"],
                     [[p["side"], p["rank"], str(p["index"]), p["class_name"] or "",
                       f"{p['evidence']:+.3f}", p["mean_similarity"],
                       p["source"].get("case", ""), str(tuple(p["source"].get("voxel", ())))]
                      for p in protos])
                 + "<p class='note'>Each prototype adds (for) or subtracts (against) its "
                 "similarity times its class weight from the class's logit over the region; "
                 "the signed share is its sum divided by the summed magnitudes of all "
                 "prototypes. Ranked by magnitude within each side.</p>")
        crops, entries = [], []
        catalogue = {e["index"]: e for e in (explainer.card.prototypes or [])}
        for p in protos:
            entry = catalogue.get(p["index"], {})
            entries.append(entry | {"index": p["index"]})
            crops.append(_read_crop(p["source"].get("gallery")))
        body += HtmlReport.image(figure_data_uri(gallery_figure(entries, crops), 90), "gallery")
        body += ("<p class='note'>Each crop is the training image around the voxel the "
                 "prototype was pushed to (red cross).</p>")
    page.section("Explanation", body)
    limits = "".join(f"<li><b>{esc(m.name)}</b>: {esc(m.card.limitations)}</li>" for m in models)
    page.section("Limitations", f"<ul>{limits}</ul><p class='note'>Numbers come from one "
                 "template and its synthetic variants; they show how the tool works, not how a "
                 "model performs on patients.</p>")
    return page


def _baseline(info) -> str:
    if isinstance(info, dict) and info.get("kind") == "blur":
        return f"a blurred copy (Gaussian, sigma {info.get('sigma_voxels', 0):.1f} voxels)"
    if isinstance(info, dict):
        return str(info.get("kind", info))
    return str(info)


def _read_crop(path: str | None):
    if not path or not os.path.exists(path):
        return None
    from CalibSegLib.io import read_image

    try:
        return read_image(path)[0].astype(np.float32)
    except CalibSegError:
        return None
