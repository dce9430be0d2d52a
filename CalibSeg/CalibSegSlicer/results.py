"""One model's result on the input volume and the MRML nodes that show it.

A result is a :class:`ModelResult` (the library's ``Model`` and ``Prediction``, the
ids of its nodes) in a slot, ``"A"`` or ``"B"``. The functions here build its nodes
(before anything enters the scene), finish their display once they are in it,
refresh them after a temperature change (the whole volume, or only a few planes),
and remove them. The input volume node is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import slicer

from CalibSegLib.calibration import ReliabilityStats
from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import Prediction
from CalibSegLib.models import Model
from CalibSegSlicer import arrays, colors

SLOTS = ("A", "B")
#: Node keys refreshed when the temperature changes.
TEMPERATURE_KEYS = ("confidence", "entropy")


@dataclass
class ModelResult:
    """One model's prediction on the input volume and the nodes that show it.

    Attributes
    ----------
    slot : str
        ``"A"`` or ``"B"``.
    model : Model
        The loaded model (card and network).
    prediction : Prediction
        As inferred, at the card's temperature, in either form (full, or top-k
        ``scores``; possibly memory-mapped from the hand-over file).
    current : Prediction
        The same class scores at the temperature applied to the whole volume
        (``current.temperature``).
    nodeIDs : dict
        Node key (``confidence``, ``entropy``, ``segmentation``, ``prototypes``,
        ``similarity``, ``contribution``, ``reliability`` ...) to MRML node id.
    stats, metrics
        Against the reference segmentation, when there is one.
    statsTemperature : float or None
        The temperature ``stats`` belong to (a previewed one while ``statsEstimated``).
    statsEstimated : bool
        ``stats`` are an estimate from a voxel sample (a temperature preview), not the
        whole volume.
    showing : str
        ``"full"`` when the nodes hold the whole volume at ``current.temperature``,
        ``"preview"`` while the visible planes show a temperature not yet applied.
    """

    slot: str
    model: Model
    prediction: Prediction
    current: Prediction
    nodeIDs: dict[str, str] = field(default_factory=dict)
    stats: ReliabilityStats | None = None
    metrics: dict | None = None
    statsTemperature: float | None = None
    statsEstimated: bool = False
    showing: str = "full"

    def setStats(self, stats: ReliabilityStats, temperature: float, estimated: bool) -> None:
        """Statistics (and their metrics) at ``temperature``; ``estimated`` from a sample."""
        self.stats, self.metrics = stats, stats.metrics().to_dict()
        self.statsTemperature, self.statsEstimated = float(temperature), bool(estimated)

    @property
    def name(self) -> str:
        return self.model.card.name

    @property
    def temperature(self) -> float:
        return float(self.current.temperature)

    @property
    def classNames(self) -> tuple[str, ...]:
        return tuple(self.prediction.class_names)

    @property
    def classColors(self) -> tuple[tuple[float, float, float], ...]:
        return self.model.card.class_colors


@dataclass
class NewNodes:
    """Nodes of a result built outside the scene, and the labels of its segmentation."""

    nodes: list[tuple[str, object]]
    labels: np.ndarray  #: (Z, Y, X) int16 class index per voxel


def checkPrediction(prediction: Prediction, shape: tuple, affine: np.ndarray,
                    volumeName: str) -> None:
    """Refuse a prediction made on another grid than the input volume's."""
    if prediction.shape != tuple(shape):
        raise CalibSegError(
            f"The prediction's grid {prediction.shape} does not match the input volume "
            f"{tuple(shape)}; run the model on this volume again."
        )
    if not arrays.sameGeometry(prediction.affine, shape, affine, shape):
        raise CalibSegError(
            "The prediction was made on a volume with another geometry than "
            f"'{volumeName}'; run the model on this volume again."
        )


def buildNodes(result: ModelResult, volumeName: str, affine: np.ndarray) -> NewNodes:
    """New, not-yet-added nodes of ``result`` (confidence, entropy, segmentation, prototypes)."""
    base = f"{volumeName} {result.name} ({result.slot})"
    current = result.current
    built: list[tuple[str, object]] = [
        ("confidence", arrays.newVolumeNode(np.asarray(current.confidence, np.float32), affine,
                                            f"{base} confidence")),
        ("entropy", arrays.newVolumeNode(np.asarray(current.entropy, np.float32), affine,
                                         f"{base} entropy")),
    ]
    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.SetName(f"{base} segmentation")
    built.append(("segmentation", segmentation))
    if current.nearest_prototype is not None:
        nearest = (current.nearest_prototype.astype(np.int32) + 1).astype(np.int16)  # 0 = none
        built.append(("prototypes", arrays.newVolumeNode(
            nearest, affine, f"{base} nearest prototype", "vtkMRMLLabelMapVolumeNode")))
    if current.top_similarity is not None:
        built.append(("similarity", arrays.newVolumeNode(
            np.asarray(current.top_similarity, np.float32), affine,
            f"{base} prototype similarity")))
    for key, node in built:
        node.SetAttribute("CalibSeg.Slot", result.slot)
        node.SetAttribute("CalibSeg.Role", key)
    return NewNodes(built, current.labels.astype(np.int16))


def finishNodes(scene, result: ModelResult, volumeNode, labels: np.ndarray) -> None:
    """Display nodes, colour tables and the segmentation's segments (nodes are in the scene)."""
    low = 1.0 / max(len(result.classNames), 1)
    rows = [("confidence", colors.confidenceTable(scene), 1.0 - low, (1.0 + low) / 2),
            ("entropy", colors.entropyTable(scene), 1.0, 0.5)]
    if "similarity" in result.nodeIDs:
        rows.append(("similarity", colors.similarityTable(scene), None, None))
    for key, table, window, level in rows:
        node = scene.GetNodeByID(result.nodeIDs[key])
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(table.GetID())
        if window is None:
            display.AutoWindowLevelOn()
        else:
            display.AutoWindowLevelOff()
            display.SetWindowLevel(window, level)
        display.SetInterpolate(False)
    if "prototypes" in result.nodeIDs:
        classes = [int(c) for c in np.asarray(result.current.prototype_class).ravel()]
        table = colors.buildTable(f"CalibSeg prototypes {result.name} ({result.slot})",
                                  colors.prototypeColors(classes, result.classColors),
                                  ["none"] + [f"prototype {k}" for k in range(len(classes))])
        table.SetAttribute("CalibSeg.Slot", result.slot)
        scene.AddNode(table)
        result.nodeIDs["prototypeColors"] = table.GetID()
        node = scene.GetNodeByID(result.nodeIDs["prototypes"])
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    fillSegmentation(scene, result, volumeNode, labels)


def fillSegmentation(scene, result: ModelResult, volumeNode, labels: np.ndarray) -> None:
    """Import ``labels`` into the result's segmentation node, one named segment per class."""
    seg = scene.GetNodeByID(result.nodeIDs["segmentation"])
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    labelNode = arrays.newVolumeNode(labels, arrays.affineFromNode(volumeNode),
                                     "CalibSeg temporary labels", "vtkMRMLLabelMapVolumeNode")
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    image = logic.CreateOrientedImageDataFromVolumeNode(labelNode)
    if not logic.ImportLabelmapToSegmentationNode(image, seg, "class"):
        raise CalibSegError("Could not build the segmentation node from the labels.")
    segmentation = seg.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        value = int(segment.GetLabelValue())
        if 0 <= value < len(result.classNames):
            segment.SetName(result.classNames[value])
            segment.SetColor(*result.classColors[value])
    seg.SetAttribute("CalibSeg.ClassNames", "|".join(result.classNames))


def refreshTemperatureNodes(scene, result: ModelResult, affine: np.ndarray) -> None:
    """Copy ``result.current``'s confidence and entropy into their nodes (whole volume)."""
    current = result.current
    for key, values in (("confidence", current.confidence), ("entropy", current.entropy)):
        arrays.fillNode(scene.GetNodeByID(result.nodeIDs[key]),
                        np.asarray(values, dtype=np.float32), affine)


def refreshPlanes(scene, result: ModelResult, planes, temperature: float) -> None:
    """Confidence and entropy at ``temperature`` on ``planes`` only (``[(axis, index)]``).

    The other voxels keep their values: a preview of what the slice views show,
    computed from those planes of the stored prediction alone (``Prediction.maps``).
    """
    for axis, index in planes:
        region = (slice(None),) * axis + (int(index),)
        _, confidence, entropy = result.prediction.maps(float(temperature), region)
        for key, values in (("confidence", confidence), ("entropy", entropy)):
            target = slicer.util.arrayFromVolume(scene.GetNodeByID(result.nodeIDs[key]))
            target[region] = values
    for key in TEMPERATURE_KEYS:
        slicer.util.arrayFromVolumeModified(scene.GetNodeByID(result.nodeIDs[key]))


def removeNode(scene, node) -> None:
    """Remove ``node`` and its display and storage nodes from the scene."""
    if node is None or node.GetScene() is None:
        return
    if node.IsA("vtkMRMLDisplayableNode"):
        for i in reversed(range(node.GetNumberOfDisplayNodes())):
            display = node.GetNthDisplayNode(i)
            if display is not None:
                scene.RemoveNode(display)
    if node.IsA("vtkMRMLStorableNode"):
        for i in reversed(range(node.GetNumberOfStorageNodes())):
            storage = node.GetNthStorageNode(i)
            if storage is not None:
                scene.RemoveNode(storage)
    scene.RemoveNode(node)


def removeNodes(scene, result: ModelResult) -> None:
    """Remove every node of ``result`` from the scene."""
    for nodeID in result.nodeIDs.values():
        removeNode(scene, scene.GetNodeByID(nodeID))
    result.nodeIDs.clear()
