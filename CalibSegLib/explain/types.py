"""The one output type shared by every explanation method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from CalibSegLib.files import json_ready

#: Methods an :class:`Explanation` can come from.
METHODS = ("prototype", "gradcam", "gradcampp", "occlusion", "random")


@dataclass
class Explanation:
    """An attribution map on the input grid, with what it explains and how it was made.

    Attributes
    ----------
    map : numpy.ndarray
        ``(Z, Y, X)`` float32 attribution on the grid of the input image; larger
        means more evidence for ``target_class`` in the explained region.
    affine : numpy.ndarray
        ``(4, 4)`` voxel-to-RAS matrix of the input image (the map's geometry).
    method : str
        One of :data:`METHODS`.
    target_class : int
        Index of the explained class.
    class_name : str
        Name of the explained class.
    region : str
        What was explained, e.g. ``"predicted segment of 'grey matter' (12345 voxels)"``.
    upsampling : str
        How the map reached the image grid: ``"none"`` (computed there) or
        ``"trilinear from feature grid (z, y, x) to image grid (Z, Y, X)"``.
    layer : str or None
        Network layer the map was taken from (Grad-CAM family), else ``None``.
    prototypes : list of dict or None
        Prototype ranking for the region (prototype method), best first.
    faithfulness : dict or None
        Scores from :func:`CalibSegLib.explain.faithfulness.evaluate_faithfulness`.
    extras : dict
        Further ``(Z, Y, X)`` maps on the same grid (e.g. nearest prototype index).
    details : dict
        Method parameters (mask size, baseline, …), JSON-serialisable.
    """

    map: np.ndarray
    affine: np.ndarray
    method: str
    target_class: int
    class_name: str = ""
    region: str = ""
    upsampling: str = "none"
    layer: str | None = None
    prototypes: list[dict] | None = None
    faithfulness: dict | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown explanation method {self.method!r}; use one of {METHODS}")
        self.map = np.asarray(self.map, dtype=np.float32)
        if self.map.ndim != 3:
            raise ValueError(f"an explanation map is (Z, Y, X); got shape {self.map.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-serialisable (NaN becomes ``None``)."""
        return json_ready({
            "method": self.method,
            "target_class": int(self.target_class),
            "class_name": self.class_name,
            "region": self.region,
            "upsampling": self.upsampling,
            "layer": self.layer,
            "shape": list(self.map.shape),
            "map_range": [float(self.map.min()), float(self.map.max())],
            "details": self.details,
            "prototypes": self.prototypes,
            "faithfulness": self.faithfulness,
            "extras": sorted(self.extras),
        })
