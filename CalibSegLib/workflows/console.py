"""What the workflows print: warnings and progress on stderr, in the command line's wording."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from tqdm import tqdm

from CalibSegLib.io import looks_like_labels
from CalibSegLib.progress import ProgressCallback


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


@contextmanager
def progress_bar(command: str, quiet: bool) -> Iterator[ProgressCallback | None]:
    """A progress callback drawing one bar on stderr while the block runs; ``None`` when ``quiet``.

    Every workflow shows its progress through this one bar: the percentage, elapsed and
    remaining time, and the step's message.
    """
    if quiet:
        yield None
        return
    # The step's message is the bar's description, written after the bar (tqdm's postfix
    # would put a comma before it).
    bar = tqdm(total=100, file=sys.stderr,
               bar_format=command + ": {percentage:3.0f}%|{bar:30}| {elapsed}<{remaining} {desc}")

    def show(fraction: float, message: str = "") -> None:
        bar.n = round(100 * min(max(float(fraction), 0.0), 1.0), 1)
        bar.set_description_str(message[:60], refresh=False)
        bar.refresh()

    try:
        yield show
    finally:
        bar.close()
