"""Figures for reports: orthogonal slice montages with overlays, prototype galleries."""

from __future__ import annotations

import numpy as np


def _slices(volume: np.ndarray, centre) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a (Z, Y, X) RAS-aligned volume for display."""
    z, y, x = centre
    return [volume[z], volume[:, y, :], volume[:, :, x]]


def _label_rgba(labels: np.ndarray, colors, alpha: float) -> np.ndarray:
    palette = np.zeros((max(len(colors), int(labels.max()) + 1), 4), np.float32)
    for i, c in enumerate(colors):
        palette[i, :3] = c[:3]
        palette[i, 3] = alpha if i > 0 else 0.0
    return palette[labels]


def montage_figure(image: np.ndarray, rows: list[tuple[str, np.ndarray | None, dict]],
                   centre=None, title: str = ""):
    """One row per overlay, three columns (axial, coronal, sagittal).

    ``image`` is an array of shape (Z, Y, X); ``rows`` holds ``(label, overlay or None,
    options)``, each overlay an array of shape (Z, Y, X); options: ``labels=True``
    with ``colors`` for a label map, otherwise ``cmap``, ``vmin``, ``vmax``,
    ``alpha`` for a scalar overlay (a colour bar is drawn).
    """
    from matplotlib.figure import Figure

    if centre is None:
        centre = tuple(n // 2 for n in image.shape)
    lo, hi = np.percentile(image, [1, 99.5])
    fig = Figure(figsize=(9.0, 2.9 * len(rows)))
    axes = np.atleast_2d(fig.subplots(len(rows), 3))
    views = ("axial", "coronal", "sagittal")
    for r, (label, overlay, options) in enumerate(rows):
        for c, (base, view) in enumerate(zip(_slices(image, centre), views)):
            ax = axes[r, c]
            ax.imshow(base, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                      interpolation="nearest")
            if overlay is not None:
                over = _slices(overlay, centre)[c]
                if options.get("labels"):
                    ax.imshow(_label_rgba(over.astype(np.int64), options["colors"],
                                          options.get("alpha", 0.45)), origin="lower",
                              interpolation="nearest")
                else:
                    shown = ax.imshow(over, cmap=options.get("cmap", "magma"),
                                      vmin=options.get("vmin"), vmax=options.get("vmax"),
                                      alpha=options.get("alpha", 0.7), origin="lower",
                                      interpolation="nearest")
                    if c == 2:
                        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(view, fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def gallery_figure(entries: list[dict], crops: list[np.ndarray | None]):
    """Prototype gallery: the middle axial slice of each prototype's training crop.

    ``crops`` holds one array of shape (z, y, x) per entry, or None where there is none.
    """
    from matplotlib.figure import Figure

    n = max(len(entries), 1)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, entry, crop in zip(axes, entries, crops):
        if crop is not None:
            lo, hi = np.percentile(crop, [1, 99.5])
            ax.imshow(crop[crop.shape[0] // 2], cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.plot([crop.shape[2] // 2], [crop.shape[1] // 2], "+", color="#ff4040", ms=10)
        ax.set_title(f"#{entry.get('index')} {entry.get('class_name', '')}\n"
                     f"{entry.get('case', '')} {tuple(entry.get('voxel', ()))}", fontsize=7)
    fig.tight_layout()
    return fig
