"""Reliability diagrams and dataset reliability histograms (matplotlib, no pyplot state).

Figures are built with :class:`matplotlib.figure.Figure` directly, so nothing
leaks into a global figure manager (safe inside 3D Slicer and in servers).
Files are written atomically.
"""

from __future__ import annotations

import os

import numpy as np

from CalibSegLib.calibration.stats import ReliabilityStats
from CalibSegLib.errors import CalibSegError

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _models(stats_or_models) -> list[tuple[str, ReliabilityStats]]:
    if isinstance(stats_or_models, ReliabilityStats):
        return [("model", stats_or_models)]
    if isinstance(stats_or_models, dict):
        return list(stats_or_models.items())
    models = list(stats_or_models)
    if not models or not all(isinstance(m, tuple) and len(m) == 2 for m in models):
        raise CalibSegError("Pass ReliabilityStats, a dict {label: stats} or [(label, stats)].")
    return models


def _save(fig, path: str | None) -> None:
    if path is None:
        return
    from CalibSegLib.io import atomic_path

    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight")


def plot_reliability_diagram(stats_or_models, class_index: int | None = None, *,
                             title: str | None = None, path: str | None = None):
    """Reliability diagram of one or several models (overlaid), with bin counts below.

    One model: bars of observed frequency per bin, the gap to the mean confidence
    as hatched bars, the diagonal. Several: one line per model. Empty bins are
    left out (never drawn as zero). The counts panel uses a log axis when counts
    span more than 100×. ECE/ACE/MCE (ACE = Average Calibration Error) are in the
    legend. Returns the Figure; writes it to ``path`` (PNG/SVG/PDF) when given.
    """
    from matplotlib.figure import Figure

    models = _models(stats_or_models)
    fig = Figure(figsize=(5.2, 5.6))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    all_counts = []
    width = 1.0 / models[0][1].n_bins
    for n, (label, stats) in enumerate(models):
        d = stats.reliability_diagram(class_index)
        color = _COLORS[n % len(_COLORS)]
        filled = d["counts"] > 0
        text = f"{label}: ECE {d['ece']:.3f} · ACE {d['ace']:.3f} · MCE {d['mce']:.3f}"
        if len(models) == 1:
            ax.bar(d["bin_centres"][filled], d["observed_frequency"][filled], width=width,
                   color=color, alpha=0.75, edgecolor="white", label=f"observed — {text}")
            ax.bar(d["bin_centres"][filled], d["gap"][filled],
                   bottom=d["observed_frequency"][filled], width=width, fill=False,
                   edgecolor="#d62728", hatch="//", lw=0.8, label="gap to confidence")
        else:
            ax.plot(d["mean_confidence"][filled], d["observed_frequency"][filled], marker="o",
                    ms=3.5, color=color, label=text)
        ax_n.step(d["bin_edges"][:-1][filled] + width / 2, d["counts"][filled], where="mid",
                  color=color, lw=1.2)
        ax_n.plot(d["bin_centres"][filled], d["counts"][filled], "o", ms=2.5, color=color)
        all_counts.append(d["counts"][filled])
    counts = np.concatenate(all_counts) if all_counts else np.zeros(0)
    if counts.size and counts.min() > 0 and counts.max() / counts.min() > 100:
        ax_n.set_yscale("log")
    which = "top-label" if class_index is None else (
        f"class '{models[0][1].names()[int(class_index)]}' (one-vs-rest)")
    ax.set_title(title or f"Reliability diagram, {which}", fontsize=10)
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax_n.set_xlabel("confidence (predicted probability)")
    ax_n.set_ylabel("voxels")
    fig.tight_layout()
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
