"""What the slice views show: foreground overlay, label layer, and which planes are visible.

Model A is shown in the layout's slice views, model B in the comparison view
(``layouts.COMPARE_VIEW``) when comparing. Functions take the results and the
display choices; they change only slice composite nodes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from CalibSegSlicer import arrays, layouts
from CalibSegSlicer.results import ModelResult

#: Overlay kinds of the foreground layer (node key of a result, or none).
OVERLAYS = ("confidence", "entropy", "similarity", "contribution", "none")


def viewsBySlot(scene, comparing: bool) -> list[tuple[str, list]]:
    """``[(slot, composite nodes)]``: A in the layout's views, B in the comparison view."""
    views = [("A", layouts.compositeNodes(scene))]
    if comparing:
        views.append(("B", [layouts.compositeNode(scene, layouts.COMPARE_VIEW)]))
    return views


def showForeground(scene, results: Mapping[str, ModelResult], inputNodeID: str | None,
                   kind: str, opacity: float, comparing: bool) -> None:
    """Input volume as background, node ``kind`` of each slot's result as foreground."""
    for slot, composites in viewsBySlot(scene, comparing):
        result = results.get(slot)
        if result is None:
            continue
        foreground = result.nodeIDs.get(kind) if kind != "none" else None
        for composite in composites:
            if inputNodeID:
                composite.SetBackgroundVolumeID(inputNodeID)
            composite.SetForegroundVolumeID(foreground)
            composite.SetForegroundOpacity(opacity)


def showLabelLayer(scene, results: Mapping[str, ModelResult], show: bool, opacity: float,
                   comparing: bool) -> None:
    """Show (or hide) each slot's nearest-prototype label map as the label layer."""
    for slot, composites in viewsBySlot(scene, comparing):
        result = results.get(slot)
        labelID = result.nodeIDs.get("prototypes") if (result is not None and show) else None
        for composite in composites:
            composite.SetLabelVolumeID(labelID)
            composite.SetLabelOpacity(opacity)


def visiblePlanes(scene, affine: np.ndarray, shape, tolerance: float = 1e-3
                  ) -> list[tuple[int, int]] | None:
    """The array planes ``[(axis, index)]`` the slice views cut through the volume.

    ``axis`` is 0, 1 or 2 of the ``(Z, Y, X)`` array. None when a view is oblique
    to the voxel grid (no single plane shows it); views outside the volume are left out.
    """
    toIJK = np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3])
    planes: list[tuple[int, int]] = []
    for composite in layouts.compositeNodes(scene, exclude=()):
        node = layouts.sliceNodeIfPresent(scene, composite.GetLayoutName())
        if node is None:
            continue
        matrix = node.GetSliceToRAS()
        normal = np.array([matrix.GetElement(r, 2) for r in range(3)])
        origin = [matrix.GetElement(r, 3) for r in range(3)]
        ijk = toIJK @ normal
        ijk /= np.abs(ijk).max()
        dominant = int(np.argmax(np.abs(ijk)))
        if np.sum(np.abs(ijk) > tolerance) != 1:
            return None
        index = arrays.rasToIndex(affine, origin, shape)
        if index is None:
            continue
        axis = 2 - dominant  # (i, j, k) -> (Z, Y, X) array axes
        plane = (axis, int(index[axis]))
        if plane not in planes:
            planes.append(plane)
    return planes
