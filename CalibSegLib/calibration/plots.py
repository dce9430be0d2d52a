"""Reliability diagrams and dataset reliability histograms (matplotlib, no pyplot state).

Figures are built with :class:`matplotlib.figure.Figure` directly, so nothing
leaks into a global figure manager (safe inside 3D Slicer and in servers).
Files are written atomically.
"""

from __future__ import annotations

import os

import numpy as np

from CalibSegLib.calibration.diagram import DiagramBins
from CalibSegLib.calibration.stats import ReliabilityStats
from CalibSegLib.io import atomic_path

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
#: Colour of bins below the minimum bin mass.
_SPARSE = "0.65"


def _models(stats_or_models) -> list[tuple[str, ReliabilityStats]]:
    if isinstance(stats_or_models, ReliabilityStats):
        return [("model", stats_or_models)]
    if isinstance(stats_or_models, dict):
        return list(stats_or_models.items())
    models = list(stats_or_models)
    if not models or not all(isinstance(m, tuple) and len(m) == 2 for m in models):
        raise TypeError("pass ReliabilityStats, a dict {label: stats} or [(label, stats)]")
    return models


def _save(fig, path: str | None) -> None:
    if path is None:
        return

    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight")


def metric_text(d: DiagramBins) -> str:
    """``ECE … · ACE … · MCE … (raw …)`` of one diagram, as shown in legends and tables."""
    raw = "" if d.mce_raw == d.mce or np.isnan(d.mce_raw) else f" (raw {d.mce_raw:.3f})"
    mce = "–" if np.isnan(d.mce) else f"{d.mce:.3f}"
    return f"ECE {d.ece:.3f} · ACE {d.ace:.3f} · MCE {mce}{raw}"


def plot_reliability_diagram(stats_or_models, class_index: int | None = None, *,
                             title: str | None = None, path: str | None = None):
    """Reliability diagram of one or several models (overlaid), with bin counts below.

    One model: bars of observed frequency per bin, the gap to the mean confidence
    as hatched bars, the diagonal. Several: one line per model. Empty bins are
    left out (never drawn as zero). Bins below the minimum bin mass
    (:mod:`CalibSegLib.calibration.diagram`) are drawn in grey, apart from the
    curve, with their voxel count written next to them, and do not enter MCE
    (the raw MCE over every bin is shown alongside when it differs). The counts
    panel shows every non-empty bin (grey below the threshold, dotted line at the
    threshold) on a log axis when counts span more than 100×. Returns the Figure;
    writes it to ``path`` (PNG/SVG/PDF) when given.
    """
    from matplotlib.figure import Figure

    models = _models(stats_or_models)
    fig = Figure(figsize=(5.4, 6.4))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    all_counts = []
    width = 1.0 / models[0][1].n_bins
    any_sparse = False
    thresholds = set()
    for n, (label, stats) in enumerate(models):
        d = stats.diagram_bins(class_index)
        color = _COLORS[n % len(_COLORS)]
        ok, sparse = d.reliable, d.sparse
        any_sparse |= bool(sparse.any())
        thresholds.add(d.min_count)
        text = f"{label}: {metric_text(d)}"
        if len(models) == 1:
            ax.bar(d.centres[ok], d.accuracy[ok], width=width, color=color, alpha=0.75,
                   edgecolor="white", label=f"observed — {text}")
            ax.bar(d.centres[ok], d.gap[ok], bottom=d.accuracy[ok], width=width, fill=False,
                   edgecolor="#d62728", hatch="//", lw=0.8, label="gap to confidence")
            ax.bar(d.centres[sparse], d.accuracy[sparse], width=width, color=_SPARSE,
                   alpha=0.5, edgecolor="white")
        else:
            ax.plot(d.confidence[ok], d.accuracy[ok], marker="o", ms=3.5, color=color,
                    label=text)
            ax.plot(d.confidence[sparse], d.accuracy[sparse], ls="none", marker="o", ms=5,
                    mfc="white", mec=color, alpha=0.6)
        for k in np.flatnonzero(sparse):
            x = d.centres[k] if len(models) == 1 else d.confidence[k]
            ax.annotate(f"n={d.count[k]}", (x, d.accuracy[k]), xytext=(0, 4 + 7 * n),
                        textcoords="offset points", ha="center", fontsize=6, color="0.35")
        ax_n.bar(d.centres[ok] + (n - (len(models) - 1) / 2) * width / len(models),
                 d.count[ok], width=width / len(models), color=color, alpha=0.8)
        ax_n.bar(d.centres[sparse] + (n - (len(models) - 1) / 2) * width / len(models),
                 d.count[sparse], width=width / len(models), color=_SPARSE, alpha=0.8)
        all_counts.append(d.count[d.filled])
    if any_sparse:
        ax.plot([], [], ls="none", marker="s", color=_SPARSE,
                label="bins with too few voxels (grey bars, hollow points): greyed out, "
                      "not in MCE")
    counts = np.concatenate(all_counts) if all_counts else np.zeros(0)
    if counts.size and counts.min() > 0 and counts.max() / counts.min() > 100:
        ax_n.set_yscale("log")
    for threshold in sorted(thresholds):
        ax_n.axhline(threshold, color="0.4", ls=":", lw=0.8)
    if len(thresholds) == 1:
        ax_n.annotate(f"minimum bin mass {thresholds.pop()} voxels", (0.01, 1.0),
                      xycoords="axes fraction", va="top", fontsize=6, color="0.35")
    which = "top-label" if class_index is None else (
        f"class '{models[0][1].names()[int(class_index)]}' (one-vs-rest)")
    ax.set_title(title or f"Reliability diagram, {which}", fontsize=10)
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax_n.set_xlabel("confidence (predicted probability)")
    ax_n.set_ylabel("voxels per bin")
    handles, labels = ax.get_legend_handles_labels()  # below the panels: hides no bin
    fig.legend(handles, labels, loc="lower left", fontsize=6.5, frameon=False)
    fig.tight_layout(rect=(0, 0.015 + 0.021 * len(labels), 1, 1))
    _save(fig, path)
    return fig


def plot_dataset_reliability_histogram(stats: ReliabilityStats, class_names=None, *,
                                       classes=None, title: str | None = None,
                                       path: str | None = None):
    """Dataset reliability histogram: per class, where images' observed frequencies fall.

    For each class (one-vs-rest), a ``B × B`` image: column k (confidence bin) is
    the distribution over images of the observed frequency in that bin,
    normalised per column; columns with no image are blank. A well calibrated
    model concentrates mass on the diagonal. Returns the Figure.
    """
    from matplotlib.figure import Figure

    names = tuple(class_names) if class_names is not None else stats.names()
    chosen = list(range(stats.num_classes)) if classes is None else list(classes)
    fig = Figure(figsize=(3.2 * len(chosen) + 0.8, 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(chosen)))
    image = None
    for ax, c in zip(axes, chosen):
        hist = stats.dataset_reliability_histogram(c)
        image = ax.imshow(np.ma.masked_invalid(hist), origin="lower", extent=(0, 1, 0, 1),
                          cmap="magma", vmin=0, vmax=1, aspect="equal", interpolation="nearest")
        ax.plot([0, 1], [0, 1], color="white", ls="--", lw=0.8)
        ax.set_title(names[c], fontsize=9)
        ax.set_xlabel("confidence")
    axes[0].set_ylabel("observed frequency")
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.025, label="fraction of images")
    fig.suptitle(title or f"Dataset reliability histogram ({stats.num_images} images)",
                 fontsize=10)
    _save(fig, path)
    return fig


def save_reliability_diagram(stats_or_models, path: str, class_index: int | None = None,
                             title: str | None = None) -> str:
    """Write :func:`plot_reliability_diagram` to ``path``; return the path."""
    plot_reliability_diagram(stats_or_models, class_index, title=title, path=path)
    return path


def save_dataset_reliability_histogram(stats: ReliabilityStats, path: str,
                                       title: str | None = None, class_names=None) -> str:
    """Write :func:`plot_dataset_reliability_histogram` to ``path``; return the path."""
    plot_dataset_reliability_histogram(stats, class_names, title=title, path=path)
    return path
