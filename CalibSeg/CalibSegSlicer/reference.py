"""The reference segmentation as class indices on the input grid.

A reference is a label-map volume (class index per voxel, on the input volume's
grid) or a segmentation node whose segments are named like the model's classes;
a segmentation is rasterised onto the input volume's grid by Slicer's
segmentations logic. Every mismatch is one clear ``CalibSegError``; no node is
left behind.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from CalibSegLib.errors import CalibSegError
from CalibSegSlicer import arrays
from CalibSegSlicer.results import removeNode


def referenceLabels(scene, referenceNode, volumeNode, classNames) -> np.ndarray:
    """``(Z, Y, X)`` int64 class indices of ``referenceNode`` on ``volumeNode``'s grid.

    Raises
    ------
    CalibSegError
        No reference, another geometry, non-integer values, or labels / segment names
        the model does not know.
    """
    if referenceNode is None:
        raise CalibSegError("No reference segmentation selected.")
    names = tuple(classNames)
    image, affine = arrays.arrayFromNode(volumeNode)
    if referenceNode.IsA("vtkMRMLSegmentationNode"):
        labels = labelsFromSegmentation(scene, referenceNode, volumeNode, names)
    else:
        labels, refAffine = arrays.arrayFromNode(referenceNode)
        if not arrays.sameGeometry(refAffine, labels.shape, affine, image.shape):
            raise CalibSegError(
                f"Reference '{referenceNode.GetName()}' has another geometry than the input "
                f"volume (shape {labels.shape} vs {image.shape}, or origin/spacing/"
                "directions differ); resample it onto the input volume first."
            )
        if not np.issubdtype(labels.dtype, np.integer) and not np.all(np.mod(labels, 1) == 0):
            raise CalibSegError(
                f"Reference '{referenceNode.GetName()}' has non-integer values; "
                "select a label map (class indices) as reference."
            )
        labels = labels.astype(np.int64)
    unknown = [int(v) for v in np.unique(labels) if v < 0 or v >= len(names)]
    if unknown:
        known = ", ".join(f"{i} {n}" for i, n in enumerate(names))
        raise CalibSegError(
            f"Reference '{referenceNode.GetName()}' has label values {unknown} that the "
            f"model does not know (its classes are {known}); relabel the reference or "
            "choose the matching model."
        )
    return labels.astype(np.int64)


def labelsFromSegmentation(scene, segNode, volumeNode, classNames) -> np.ndarray:
    """Class indices from a segmentation node, matching segment names to class names."""
    lookup = {str(n).strip().lower(): i for i, n in enumerate(classNames)}
    segmentation = segNode.GetSegmentation()
    unknown, pairs = [], []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        key = segment.GetName().strip().lower()
        if key in lookup:
            pairs.append((segmentation.GetNthSegmentID(i), lookup[key]))
        else:
            unknown.append(segment.GetName())
    if not unknown and not pairs:
        raise CalibSegError(
            f"Reference segmentation '{segNode.GetName()}' has no segments; "
            "choose a segmentation with the model's classes."
        )
    if unknown:
        raise CalibSegError(
            f"Reference segments {unknown} are not classes of the model "
            f"({', '.join(classNames)}); rename the segments to the model's class names."
        )
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    labelNode = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelNode)
    colorTable = None
    try:
        ids = vtk.vtkStringArray()
        for segmentID, _ in pairs:
            ids.InsertNextValue(segmentID)
        if not logic.ExportSegmentsToLabelmapNode(segNode, ids, labelNode, volumeNode) \
                or labelNode.GetImageData() is None \
                or labelNode.GetImageData().GetPointData().GetScalars() is None:
            raise CalibSegError(
                f"Could not rasterise reference '{segNode.GetName()}' on the input grid.")
        exported = arrays.arrayFromNode(labelNode)[0].astype(np.int64)
        display = labelNode.GetDisplayNode()
        colorTable = display.GetColorNode() if display is not None else None
        labels = np.zeros(exported.shape, dtype=np.int64)
        for index, (segmentID, cls) in enumerate(pairs):
            value = index + 1
            if colorTable is not None:
                found = colorTable.GetColorIndexByName(
                    segmentation.GetSegment(segmentID).GetName())
                value = found if found > 0 else value
            labels[exported == value] = cls
    finally:
        if colorTable is not None and colorTable.GetScene() is not None:
            scene.RemoveNode(colorTable)
        removeNode(scene, labelNode)
    return labels
