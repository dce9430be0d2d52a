"""Click a voxel: what each shown model says there, with its prototypes' source crops.

A click in a slice view arrives as the view's pixel position ``(x, y)``; the slice node's
``XYToRAS`` matrix turns it into a RAS point, and :meth:`CalibSegLogic.probe` reads the
class probabilities, confidence, entropy and top prototypes of every model there. For
prototype models the centre plane of each prototype's gallery crop (shipped in the model
folder, named by its card) is added, so the page can show "this looks like that".
"""

from __future__ import annotations

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import Model


def rasFromSliceXY(sliceNode, x: float, y: float) -> tuple[float, float, float]:
    """RAS point under pixel ``(x, y)`` (origin bottom-left, VTK convention) of a slice view."""
    xyToRas = sliceNode.GetXYToRAS()
    point = [float(x), float(y), 0.0, 1.0]
    ras = [sum(xyToRas.GetElement(r, c) * point[c] for c in range(4)) for r in range(3)]
    return ras[0], ras[1], ras[2]


def cropPlane(model: Model, source: dict) -> np.ndarray | None:
    """Centre axial plane ``(Y, X)`` of a prototype's gallery crop as uint8 (None if none).

    Intensities are windowed to the crop's 1st-99th percentiles.
    """
    gallery = source.get("gallery") if source else None
    if not gallery:
        return None
    from CalibSegLib.io import read_image

    path = model.gallery_path(str(gallery))
    if path is None:
        return None
    try:
        image, _ = read_image(path)
    except (CalibSegError, OSError):
        return None
    plane = np.asarray(image[image.shape[0] // 2], dtype=np.float32)
    low, high = np.percentile(plane, [1.0, 99.0])
    scaled = (plane - low) / (high - low) if high > low else np.zeros_like(plane)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def probeVoxel(logic, ras, topK: int = 3) -> dict:
    """:meth:`CalibSegLogic.probe` at ``ras`` for every model shown, each prototype with its
    ``crop`` plane (see :func:`cropPlane`); an empty dict outside the volume or with no result.
    """
    if not logic.results:
        return {}
    out = logic.probe(tuple(float(v) for v in ras), topK=topK)
    for slot, entry in out.items():
        model = logic.results[slot].model
        for row in entry.get("prototypes", []):
            row["crop"] = cropPlane(model, row.get("source") or {})
    return out


def probeSliceView(logic, sliceNode, x: float, y: float, topK: int = 3) -> tuple[tuple, dict]:
    """``(ras, probe)`` for a click at pixel ``(x, y)`` of the view of ``sliceNode``."""
    ras = rasFromSliceXY(sliceNode, x, y)
    return ras, probeVoxel(logic, ras, topK)
