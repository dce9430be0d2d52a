"""Tables of explanations: faithfulness over models and cases; signed prototype evidence."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from CalibSegLib.explain.api import explain
from CalibSegLib.explain.prototype import is_prototype_network
from CalibSegLib.models import load_model
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report, scaled

METRICS = ("deletion_auc", "insertion_auc", "correlation")


def _load(model):
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        model = load_model(str(model))
    card = getattr(model, "card", None)
    name = (card.get("name") if isinstance(card, dict) else getattr(card, "name", None)) or type(
        model).__name__
    return name, model


def _case(case, index: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    if isinstance(case, (tuple, list)):
        name, image, affine, *rest = case
        return str(name), image, affine, rest[0] if rest else None
    return (str(getattr(case, "name", f"case {index}")), case.image, case.affine,
            getattr(case, "labels", None))


def _is_prototype(model) -> bool:
    if hasattr(model, "is_prototype"):
        return bool(model.is_prototype)

    net = getattr(model, "network", model)
    return is_prototype_network(net)


def _summary(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def explanation_table(
    model_folders: Sequence,
    cases: Iterable,
    methods: Sequence[str] = ("prototype", "gradcam", "occlusion"),
    target_class: int | str | None = None,
    faithfulness_options: dict | None = None,
    occlusion_options: dict | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> list[dict]:
    """Deletion AUC, insertion AUC and faithfulness correlation, mean ± sd over cases.

    Parameters
    ----------
    model_folders : sequence
        Model folders (loaded with :func:`CalibSegLib.models.load_model`) or loaded models.
    cases : iterable
        Objects with ``image``, ``affine`` and optionally ``labels`` and ``name``
        (e.g. :class:`~CalibSegLib.data.SampleCase`), or ``(name, image, affine[, labels])``.
    methods : sequence of str
        Explanation methods; ``"prototype"`` is skipped for linear-head models.
    target_class : int or str, optional
        Explained class (default: each case's largest predicted foreground class).
    faithfulness_options : dict, optional
        Passed to :func:`~CalibSegLib.explain.faithfulness.evaluate_faithfulness`.

    Returns
    -------
    list of dict
        One row per model and method, plus one per model, method and random
        variant (``method="random"``, ``of=<method>``, ``variant``): ``model``,
        ``method``, ``n_cases``, ``<metric>_mean`` / ``<metric>_sd`` for
        deletion_auc, insertion_auc and correlation, ``beats_random_fraction``
        and ``activation_precision_mean`` / ``_sd`` when cases carry labels.
    """
    cases = [_case(c, i) for i, c in enumerate(cases)]
    models = list(model_folders)
    rows: list[dict] = []
    jobs = max(1, len(models) * len(cases) * len(methods))
    done = 0
    for model in models:
        name, loaded = _load(model)
        collected: dict[tuple, dict[str, list]] = {}
        for case_name, image, affine, labels in cases:
            for method in methods:
                check_cancel(cancel, "explanation table")
                if method == "prototype" and not _is_prototype(loaded):
                    done += 1
                    continue
                sub = scaled(progress, done / jobs, (done + 1) / jobs)
                e = explain(image, affine, loaded, method, target_class, faithfulness=True,
                            faithfulness_options=faithfulness_options, reference=labels,
                            occlusion_options=occlusion_options, device=device, progress=sub,
                            cancel=cancel)
                f = e.faithfulness
                assert f is not None  # explain(..., faithfulness=True) scores it
                keyed: list[tuple[tuple[str, str | None, str | None], dict]] = [
                    ((method, None, None), f["explanation"])] + [
                    (("random", method, variant), r) for variant, r in f["random"].items()]
                for key, scores in keyed:
                    bucket = collected.setdefault(key, {m: [] for m in METRICS} | {
                        "beats_random": [], "activation_precision": [], "cases": [],
                        "constant": []})
                    for m in METRICS:
                        bucket[m].append(scores[m])
                    bucket["cases"].append(case_name)
                    if key[0] != "random":
                        bucket["constant"].append(bool(e.details.get("constant_map", False)))
                        bucket["beats_random"].append(float(f.get("beats_random", False)))
                        if "plausibility" in f:
                            bucket["activation_precision"].append(
                                f["plausibility"]["activation_precision"])
                done += 1
                report(progress, done / jobs, f"{name}: {case_name} {method}")
        for (method, of, variant), bucket in collected.items():
            row = {"model": name, "method": method, "n_cases": len(bucket["cases"])}
            if of is not None:
                row |= {"of": of, "variant": variant}
            for m in METRICS:
                row[f"{m}_mean"], row[f"{m}_sd"] = _summary(bucket[m])
            if bucket["beats_random"]:
                row["beats_random_fraction"] = float(np.mean(bucket["beats_random"]))
                row["constant_maps"] = int(sum(bucket["constant"]))
            if bucket["activation_precision"]:
                (row["activation_precision_mean"],
                 row["activation_precision_sd"]) = _summary(bucket["activation_precision"])
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`explanation_table` rows."""
    lines = ["| model | method | n | deletion AUC ↓ | insertion AUC ↑ | correlation ↑ "
             "| beats random |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        method = r["method"] if "of" not in r else f"random ({r['variant']}, of {r['of']})"
        cells = [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_sd']:.3f}" for m in METRICS]
        beats = f"{r['beats_random_fraction']:.0%}" if "beats_random_fraction" in r else ""
        if r.get("constant_maps"):
            beats += f" ({r['constant_maps']} constant map{'s' if r['constant_maps'] > 1 else ''})"
        lines.append(f"| {r['model']} | {method} | {r['n_cases']} | " + " | ".join(cells)
                     + f" | {beats} |")
    return "\n".join(lines)


def prototype_evidence(prototypes: Sequence[dict], top: int | None = 5) -> list[dict]:
    """Signed evidence of prototypes for a class over a region, for and against, ranked.

    Parameters
    ----------
    prototypes : sequence of dict
        :func:`~CalibSegLib.explain.prototype.rank_prototypes` entries of *every*
        prototype (``contribution`` = summed ``w_cj * sim_j`` over the region),
        e.g. ``Explanation.prototypes`` computed with ``top_prototypes=None``.
    top : int, optional
        Rows kept on each side (None: all).

    Returns
    -------
    list of dict
        First the prototypes with positive contributions (evidence *for* the class),
        largest first, then those with negative ones (evidence *against*), most
        negative first. Each row: ``side`` (``"for"`` / ``"against"``), ``rank``
        (1, 2, … within its side, in the order shown), ``evidence`` (the signed share
        ``contribution / sum |contribution|`` over all prototypes, so the shares'
        magnitudes sum to 1 over all of them), and the entry's ``index``,
        ``class_name``, ``contribution``, ``mean_similarity``, ``source``.
    """
    total = float(sum(abs(float(p["contribution"])) for p in prototypes))
    positive = sorted((p for p in prototypes if p["contribution"] > 0),
                      key=lambda p: -float(p["contribution"]))
    negative = sorted((p for p in prototypes if p["contribution"] < 0),
                      key=lambda p: float(p["contribution"]))
    rows = []
    for side, entries in (("for", positive), ("against", negative)):
        for rank, p in enumerate(entries[:top] if top is not None else entries, start=1):
            rows.append({
                "side": side, "rank": rank, "index": int(p["index"]),
                "class_name": p.get("class_name"),
                "contribution": float(p["contribution"]),
                "evidence": float(p["contribution"]) / total if total > 0 else 0.0,
                "mean_similarity": float(p.get("mean_similarity", float("nan"))),
                "source": dict(p.get("source") or {}),
            })
    return rows

