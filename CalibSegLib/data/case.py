"""The sample-case type and the names of the embedded cases (numpy only, no image library).

The command line checks a sample name against :func:`available_cases` before any
data is generated; :mod:`CalibSegLib.data.sample` builds the cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MNI_CLASS_NAMES = ("background", "grey matter", "white matter")
MNI_CLASS_COLORS = ((0.0, 0.0, 0.0), (0.86, 0.55, 0.35), (0.95, 0.95, 0.80))


@dataclass
class SampleCase:
    """One image with its reference segmentation (and soft reference when known)."""

    name: str
    image: np.ndarray  #: (Z, Y, X) float32 intensities
    affine: np.ndarray  #: (4, 4) float64, voxel (i, j, k) -> RAS mm
    labels: np.ndarray  #: (Z, Y, X) uint8 class indices
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[float, float, float], ...]
    reference_probs: np.ndarray | None = None  #: (C, Z, Y, X) float32 summing to 1, or None
    description: str = ""
    attribution: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (i, j, k) = (X, Y, Z)."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return x, y, z

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes (background included)."""
        return len(self.class_names)

    def summary(self) -> str:
        """A few human-readable lines describing the case."""
        counts = np.bincount(self.labels.ravel(), minlength=self.num_classes)
        fractions = ", ".join(
            f"{n} {100.0 * c / self.labels.size:.1f}%" for n, c in zip(self.class_names, counts)
        )
        lines = [
            f"{self.name}: {self.description}",
            f"  array (Z, Y, X) {tuple(self.image.shape)}, spacing (mm, X/Y/Z) "
            + " x ".join(f"{s:g}" for s in self.spacing),
            f"  intensities {float(self.image.min()):g} .. {float(self.image.max()):g}",
            f"  classes: {fractions}",
            "  soft reference: "
            + ("yes, (C, Z, Y, X) " + str(tuple(self.reference_probs.shape))
               if self.reference_probs is not None else "no"),
            f"  source: {self.attribution}",
        ]
        return "\n".join(lines)


def available_cases() -> tuple[str, ...]:
    """Names accepted by :func:`~CalibSegLib.data.sample.sample_case`."""
    return ("mni-t1", "ct-chest")
