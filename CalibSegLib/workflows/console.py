"""What the workflows print: warnings and progress on stderr, in the command line's wording."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from CalibSegLib.io import looks_like_labels


def warn(command: str, message: str) -> None:
    """One warning line on stderr."""
    print(f"calibseg {command}: warning: {message}", file=sys.stderr)


def warn_if_label_image(command: str, array: np.ndarray, path: str) -> None:
    """Warn when ``array``, read from ``path`` as the intensity input, looks like a label map.

    ``array`` is the image, an array of shape (Z, Y, X).
    """
    if looks_like_labels(array):
        values = np.unique(array)
        warn(command, f"{path} holds only {values.size} integer values "
                      f"({', '.join(str(v) for v in values[:6])}{' …' if values.size > 6 else ''})"
                      "; it looks like a label map, not an intensity image. Pass the scan itself.")


def progress_printer(quiet: bool) -> Callable[[float, str], None] | None:
    """A progress callback drawing a one-line bar on stderr, or ``None`` when ``quiet``."""
    if quiet:
        return None

    def show(fraction: float, message: str) -> None:
        bar = "#" * int(30 * fraction)
        sys.stderr.write(f"\r[{bar:<30}] {100 * fraction:5.1f}% {message[:40]:<40}")
        if fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show
