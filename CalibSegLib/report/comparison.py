"""The comparison report page: model cards, metrics, reliability diagrams, overlays, explanation.

Rendering only: the numbers come in computed (see :mod:`CalibSegLib.workflows.report`).
"""

from __future__ import annotations

import os

import numpy as np

from CalibSegLib.calibration import plots
from CalibSegLib.calibration.diagram import MIN_BIN_COUNT, MIN_BIN_FRACTION
from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain.table import prototype_evidence
from CalibSegLib.io import read_image
from CalibSegLib.report.figures import gallery_figure, montage_figure
from CalibSegLib.report.html import HtmlReport, esc, figure_data_uri, fmt

METRIC_COLUMNS = (("Dice GM", "dice", "grey matter"), ("Dice WM", "dice", "white matter"),
                  ("marginal ACE", "marginal_ace", None), ("marginal ECE", "marginal_ece", None),
                  ("marginal MCE (raw)", "marginal_mce", None), ("top-label ECE", "ece", None),
                  ("top-label MCE (raw)", "mce", None),
                  ("soft marginal ACE", "soft_marginal_ace", None), ("NLL", "nll", None),
                  ("Brier", "brier", None))
#: Columns shown only when the cases carry a soft reference.
SOFT_COLUMNS = ("soft_marginal_ace",)


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


def comparison_page(models, cases, focus, results, explanation, explainer,
                    subtitle: str) -> HtmlReport:
    """The comparison page of ``models`` on ``cases`` (model cards, metrics, diagrams, overlays,
    the explanation of the ``focus`` case).

    ``results`` maps each model name to its ``"T=1"`` and ``"fitted"`` pooled
    :class:`~CalibSegLib.calibration.ReliabilityStats`, its per-case ``"rows"`` and the
    ``"focus"`` :class:`~CalibSegLib.inference.Prediction`; ``explanation`` is the
    focus case's :class:`~CalibSegLib.explain.Explanation` by ``explainer``.
    """
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
    try:
        return read_image(path)[0].astype(np.float32)
    except CalibSegError:
        return None
