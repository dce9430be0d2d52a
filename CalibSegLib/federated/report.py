"""Writing federated results: JSON summary, per-site CSV, reliability diagrams (PNG)."""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np

from CalibSegLib.calibration import plots
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import atomic_path

LOG = logging.getLogger("CalibSegLib.federated")


def _prepare(output: str) -> str:
    output = os.path.abspath(output)
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as exc:
        raise CalibSegError(f"Cannot create the report folder {output} ({exc}).") from exc
    return output


def write_json(path: str, data: dict) -> str:
    """Write ``data`` as indented JSON (atomic rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=float)
    return path


def write_statistics(path: str, stats) -> str:
    """The pooled statistics' arrays (``ReliabilityStats.to_arrays``) as ``.npz`` (atomic).

    They merge exactly with statistics of later evaluations
    (``ReliabilityStats.from_arrays(dict(np.load(path)))``).
    """
    with atomic_path(path) as tmp:
        np.savez(tmp, allow_pickle=False,
                 **{k: np.asarray(v) for k, v in stats.to_arrays().items()})
    return path


def evaluation_summary(result) -> dict:
    """The JSON-ready summary of an :class:`~CalibSegLib.federated.server.EvaluationResult`."""
    return {
        "model": {"name": result.model_name, "version": result.model_version},
        "classes": list(result.class_names),
        "n_bins": result.n_bins,
        "pooled": result.pooled_metrics(),
        "pooled_means": "computed from the statistics merged over all sites (micro); "
                        "'mean_over_cases' is the mean of per-case metrics (macro)",
        "mean_over_cases": result.case_mean_metrics(),
        "sites": result.site_metrics(),
        "outcomes": [o.to_dict() for o in result.outcomes],
        "drift": [f.to_dict() for f in result.flags],
    }


def write_evaluation_report(result, output: str, plots: bool = True) -> dict[str, str]:
    """Write ``summary.json``, ``pooled_statistics.npz``, ``sites.csv`` and (``plots``) PNGs."""
    output = _prepare(output)
    files = {"summary": write_json(os.path.join(output, "summary.json"),
                                   evaluation_summary(result)),
             "statistics": write_statistics(os.path.join(output, "pooled_statistics.npz"),
                                            result.pooled)}
    rows = [("pooled", "ok", result.pooled_metrics(), None),
            ("mean over cases", "ok", result.case_mean_metrics(), None)]
    flags = {f.site: f for f in result.flags}
    metrics = result.site_metrics()
    for o in result.outcomes:
        rows.append((o.site, o.status, metrics.get(o.site, {}), flags.get(o.site)))
    keys = sorted({k for _, _, m, _ in rows for k in m})
    path = os.path.join(output, "sites.csv")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["site", "status", *keys, "flagged", "reason"])
        for site, status, m, flag in rows:
            reason = flag.reason if flag else next(
                (o.reason for o in result.outcomes if o.site == site), "")
            writer.writerow([site, status, *[m.get(k, "") for k in keys],
                             "" if flag is None else int(flag.flagged), reason])
    files["sites"] = path
    if plots:
        files.update(_plots(result, output))
    return files


def _plots(result, output: str) -> dict[str, str]:
    files = {}
    pairs = [("pooled", result.pooled), *sorted(result.site_stats.items())]
    for name, stats in pairs:
        path = os.path.join(output, f"reliability_{name}.png")
        plots.save_reliability_diagram(stats, path, title=f"{name}: {result.model_name} "
                                       f"{result.model_version}")
        files[f"reliability_{name}"] = path
    path = os.path.join(output, "dataset_reliability_histogram.png")
    plots.save_dataset_reliability_histogram(result.pooled, path, title="all sites")
    files["dataset_histogram"] = path
    return files
