"""CalibSeg's MRML logic: from a volume node and model folders to overlays and plots.

:class:`CalibSegLogic` is a plain class (no Qt). It runs in 3D Slicer and
headless on the ``slicer-core`` wheel. Arrays cross between MRML and
CalibSegLib only through :mod:`CalibSegArrays`; all computing is CalibSegLib's.

Every result is a set of NEW nodes (the input volume is never modified):

- a segmentation node with the model's class names and colours,
- confidence and entropy volumes with CalibSeg's colour tables, shown as the
  slice views' foreground,
- for prototype models: the nearest-prototype label map, the top-similarity
  volume and, on demand, contribution maps,
- with a reference segmentation: a reliability diagram (plot chart, one series
  per model) and a metrics table (one column per model).

A temperature change recomputes overlays and diagram from the stored logits
(no new inference) and updates the same nodes in place.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import slicer

from CalibSegLib.errors import CalibSegError
from CalibSegSlicer import arrays, colors, layouts, plots

OVERLAYS = ("confidence", "entropy", "similarity", "contribution", "none")
SLOTS = ("A", "B")
N_BINS = 20


@dataclass
class ModelResult:
    """One model's prediction on the input and the nodes that show it."""

    slot: str
    model: object
    name: str
    prediction: object  #: the prediction as inferred (its own temperature)
    current: object  #: the prediction at ``temperature``
    temperature: float
    classNames: tuple
    classColors: tuple
    nodeIDs: dict = field(default_factory=dict)
    stats: object = None
    metrics: dict | None = None


# --------------------------------------------------------------------------- library adapters
def _field(obj, *names, default=None):
    """The first attribute (or dict key) of ``obj`` among ``names`` that is not None."""
    for name in names:
        if isinstance(obj, dict):
            value = obj.get(name)
        else:
            value = getattr(obj, name, None)
            if value is None and callable(getattr(obj, "get", None)):
                value = obj.get(name)
        if value is not None:
            return value
    return default


def _numpy(value):
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def modelClassColors(model, count: int) -> tuple:
    """Class colours from the model card (grey where the card has none)."""
    card = _field(model, "card", default={}) or {}
    cardColors = _field(model, "class_colors", default=None) or _field(card, "class_colors")
    classes = _field(card, "classes", default=[]) or []
    out = []
    for index in range(count):
        color = None
        if cardColors is not None and index < len(cardColors):
            color = cardColors[index]
        elif index < len(classes):
            color = _field(classes[index], "color", "colour")
        if color is None:
            color = (0.0, 0.0, 0.0) if index == 0 else colors.shade((0.5, 0.5, 0.5), 1.0)
        color = [float(c) for c in color[:3]]
        if max(color) > 1.0:  # 0..255 colours
            color = [c / 255.0 for c in color]
        out.append(tuple(color))
    return tuple(out)


def modelName(model, folder=None) -> str:
    card = _field(model, "card", default={}) or {}
    name = _field(model, "name") or _field(card, "name")
    if name:
        return str(name)
    return os.path.basename(os.path.normpath(folder)) if folder else "model"


def prototypeCatalogue(model) -> list:
    """The card's prototype catalogue as a list of dicts (empty when none)."""
    card = _field(model, "card", default={}) or {}
    catalogue = _field(card, "prototypes", default=[]) or []
    if isinstance(catalogue, dict):
        catalogue = _field(catalogue, "items", "prototypes", "catalogue", default=[]) or []
    out = []
    for entry in catalogue:
        out.append(entry if isinstance(entry, dict) else dict(vars(entry)))
    return out


def loadModel(folder):
    """Load a model folder with CalibSegLib, with a clear error when the folder is empty."""
    if not folder:
        raise CalibSegError("No model selected: choose a model folder (with model.json).")
    if not os.path.isdir(folder):
        raise CalibSegError(f"Model folder {folder} does not exist; choose a model folder.")
    from CalibSegLib.models import load_model

    return load_model(folder)


def applyTemperature(prediction, temperature: float):
    from CalibSegLib.inference import apply_temperature

    return apply_temperature(prediction, float(temperature))


def compactPrediction(prediction):
    """A library prediction in compact storage; other objects as they are."""
    import dataclasses

    if not dataclasses.is_dataclass(prediction):
        return prediction
    from CalibSegLib.inference.compact import compact_prediction

    return compact_prediction(prediction)


def probabilitiesAt(probs, index) -> np.ndarray:
    """float32 class probabilities of one voxel (fixed-point storage read back)."""
    from CalibSegLib.inference.compact import from_fixed_point

    return from_fixed_point(probs[(slice(None),) + tuple(index)])


def reliabilityStats(probs, labels, n_bins: int = N_BINS):
    from CalibSegLib.calibration import ReliabilityStats

    return ReliabilityStats.from_probs(probs, labels, n_bins=n_bins)


# --------------------------------------------------------------------------- the logic
class CalibSegLogic:
    """MRML logic of CalibSeg (no Qt): see the module docstring."""

    def __init__(self, scene=None, compact: bool = True):
        self.scene = scene if scene is not None else slicer.mrmlScene
        #: hold probabilities as uint16 fixed point and similarity maps as float16
        #: (CalibSegLib.inference.compact): about half the memory, metrics within 1e-3
        self.compact = bool(compact)
        self.results: dict[str, ModelResult] = {}
        self.inputNodeID: str | None = None
        self.inputAffine: np.ndarray | None = None
        self.inputShape: tuple | None = None
        self.referenceLabels: np.ndarray | None = None
        self.referenceNodeID: str | None = None
        self.overlay = "confidence"
        self.opacity = 0.6
        self.comparing = False
        self.chartNodeID: str | None = None
        self.diagonalTableID: str | None = None
        self.metricsTableID: str | None = None

    def getParameterNode(self):
        """The module's parameter node (a singleton scripted-module node, created on demand)."""
        node = self.scene.GetSingletonNode("CalibSeg", "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag("CalibSeg")
            node.SetName("CalibSeg")
            node.SetAttribute("ModuleName", "CalibSeg")
            self.scene.AddNode(node)
        return node

    # ----------------------------------------------------------------------- inputs
    def inputArray(self, volumeNode) -> tuple[np.ndarray, np.ndarray]:
        """``(image (Z, Y, X) float32, affine)`` of the input volume node (a copy)."""
        if volumeNode is None:
            raise CalibSegError("No input volume selected: choose the scan to segment.")
        return arrays.arrayFromNode(volumeNode, dtype=np.float32)

    def predict(self, volumeNode, modelFolder, device="auto", progress=None, cancel=None):
        """Load a model and run inference in this process; return ``(model, prediction)``."""
        from CalibSegLib.inference import predict

        model = loadModel(modelFolder)
        image, affine = self.inputArray(volumeNode)
        prediction = predict(image, affine, model, device=device, progress=progress,
                             cancel=cancel)
        return model, prediction

    def run(self, volumeNode, modelFolders, device="auto", referenceNode=None,
            progress=None, cancel=None) -> dict[str, ModelResult]:
        """Predict with one or two model folders and show everything (in-process)."""
        folders = [f for f in (modelFolders or []) if f]
        if not folders:
            raise CalibSegError("No model selected: choose a model folder (with model.json).")
        if volumeNode is None:
            raise CalibSegError("No input volume selected: choose the scan to segment.")
        outputs = []
        for index, folder in enumerate(folders[:2]):
            sub = None
            if progress is not None:
                def sub(f, m="", _i=index):
                    progress((_i + f) / len(folders[:2]), m)
            outputs.append(self.predict(volumeNode, folder, device, sub, cancel))
        if referenceNode is not None:  # validate before any node is created
            self._referenceLabels(referenceNode, volumeNode, [m for m, _ in outputs])
        for slot, (model, prediction) in zip(SLOTS, outputs):
            self.addPrediction(volumeNode, model, prediction, slot=slot,
                               folder=folders[SLOTS.index(slot)])
        if referenceNode is not None:
            self.setReference(referenceNode)
        return self.results

    # ----------------------------------------------------------------------- results -> nodes
    def addPrediction(self, volumeNode, model, prediction, slot: str = "A", folder=None,
                      temperature: float | None = None) -> ModelResult:
        """Show a prediction of ``model`` on ``volumeNode`` as new nodes in slot ``slot``.

        Nodes of an earlier result in the same slot are removed first. Everything
        is computed and checked before the first node enters the scene; a failure
        removes the nodes already added.
        """
        if slot not in SLOTS:
            raise CalibSegError(f"Unknown model slot {slot!r}; use 'A' or 'B'.")
        if model is None or prediction is None:
            raise CalibSegError("No model result to show: run a model first.")
        image, affine = self.inputArray(volumeNode)
        logits = _numpy(_field(prediction, "logits"))
        if logits is None or logits.ndim != 4 or tuple(logits.shape[1:]) != image.shape:
            shape = None if logits is None else tuple(logits.shape)
            raise CalibSegError(
                f"The prediction's grid {shape} does not match the input volume "
                f"{image.shape}; run the model on this volume again."
            )
        predAffine = _numpy(_field(prediction, "affine"))
        if predAffine is not None and not arrays.sameGeometry(predAffine, image.shape, affine,
                                                               image.shape):
            raise CalibSegError(
                "The prediction was made on a volume with another geometry than "
                f"'{volumeNode.GetName()}'; run the model on this volume again."
            )
        if self.results and self.inputNodeID not in (None, volumeNode.GetID()):
            other = [s for s in self.results if s != slot]
            if other and not arrays.sameGeometry(self.inputAffine, self.inputShape, affine,
                                                 image.shape):
                raise CalibSegError(
                    "Model results shown at the same time must be on the same volume; "
                    "clear the results first."
                )
        names = tuple(_field(prediction, "class_names", default=None)
                      or _field(model, "class_names", default=()) or ())
        if len(names) != logits.shape[0]:
            names = tuple(f"class {c}" for c in range(logits.shape[0]))
        T = float(temperature if temperature is not None
                  else _field(prediction, "temperature", default=None)
                  or _field(model, "temperature", default=1.0) or 1.0)
        if self.compact:
            prediction = compactPrediction(prediction)
        same = abs(float(_field(prediction, "temperature", default=math.nan)) - T) < 1e-12
        current = prediction if same else applyTemperature(prediction, T)
        result = ModelResult(slot=slot, model=model, name=modelName(model, folder),
                             prediction=prediction, current=current, temperature=T,
                             classNames=names, classColors=modelClassColors(model, len(names)))
        built = self._buildNodes(result, volumeNode, affine)  # nothing in the scene yet

        previous = self.results.pop(slot, None)
        if previous is not None:
            self._removeNodes(previous)
        added = []
        try:
            for key, node in built:
                self.scene.AddNode(node)
                added.append(node)
                result.nodeIDs[key] = node.GetID()
            self._finishNodes(result, volumeNode)
        except Exception:
            for nodeID in list(result.nodeIDs.values()):
                self._removeNode(self.scene.GetNodeByID(nodeID))
            for node in reversed(added):
                self._removeNode(node)
            result.nodeIDs.clear()
            raise
        self.results[slot] = result
        self.inputNodeID = volumeNode.GetID()
        self.inputAffine, self.inputShape = affine, image.shape
        self.showOverlay(self.overlay, self.opacity)
        if self.referenceLabels is not None:
            self._updateStats()
        return result

    def _buildNodes(self, result: ModelResult, volumeNode, affine):
        """New, not-yet-added nodes for one result: [(key, node)]."""
        base = f"{volumeNode.GetName()} {result.name} ({result.slot})"
        current = result.current
        built = []
        confidence = _numpy(_field(current, "confidence")).astype(np.float32)
        entropy = _numpy(_field(current, "entropy")).astype(np.float32)
        built.append(("confidence", arrays.newVolumeNode(confidence, affine, f"{base} confidence")))
        built.append(("entropy", arrays.newVolumeNode(entropy, affine, f"{base} entropy")))
        labels = _numpy(_field(current, "labels")).astype(np.int16)
        seg = slicer.vtkMRMLSegmentationNode()
        seg.SetName(f"{base} segmentation")
        built.append(("segmentation", seg))
        result._labels = labels  # used once, by _finishNodes
        similarity = _numpy(_field(current, "top_similarity"))
        nearest = _numpy(_field(current, "nearest_prototype"))
        if nearest is not None:
            nearest = (nearest.astype(np.int32) + 1).astype(np.int16)  # 0 = none
            labelNode = arrays.newVolumeNode(nearest, affine, f"{base} nearest prototype",
                                             "vtkMRMLLabelMapVolumeNode")
            built.append(("prototypes", labelNode))
        if similarity is not None:
            built.append(("similarity", arrays.newVolumeNode(
                similarity.astype(np.float32), affine, f"{base} prototype similarity")))
        for key, node in built:
            node.SetAttribute("CalibSeg.Slot", result.slot)
            node.SetAttribute("CalibSeg.Role", key)
        return built

    def _finishNodes(self, result: ModelResult, volumeNode) -> None:
        """Display nodes, colour tables and the segmentation content (nodes are in the scene)."""
        scene = self.scene
        for key, table, window, level in self._windowLevels(result):
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
            node = scene.GetNodeByID(result.nodeIDs["prototypes"])
            classes = self._prototypeClasses(result)
            table = colors.buildTable(f"CalibSeg prototypes {result.name} ({result.slot})",
                                      colors.prototypeColors(classes, result.classColors),
                                      ["none"] + [f"prototype {k}" for k in range(len(classes))])
            table.SetAttribute("CalibSeg.Slot", result.slot)
            scene.AddNode(table)
            result.nodeIDs["prototypeColors"] = table.GetID()
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        self._fillSegmentation(result, volumeNode)

    def _windowLevels(self, result):
        count = len(result.classNames)
        low = 1.0 / max(count, 1)
        rows = [("confidence", colors.confidenceTable(self.scene), 1.0 - low, (1.0 + low) / 2),
                ("entropy", colors.entropyTable(self.scene), 1.0, 0.5)]
        if "similarity" in result.nodeIDs:
            rows.append(("similarity", colors.similarityTable(self.scene), None, None))
        return rows

    def _prototypeClasses(self, result) -> list[int]:
        classes = _field(result.current, "prototype_class", default=None)
        if classes is None:
            classes = [int(_field(p, "class_index", "class", "label", default=0))
                       for p in prototypeCatalogue(result.model)]
        classes = [int(c) for c in _numpy(classes).ravel()] if len(classes) else []
        nearest = _numpy(_field(result.current, "nearest_prototype"))
        count = int(nearest.max()) + 1 if nearest is not None and nearest.size else 0
        if len(classes) < count:  # unknown classes: shade them as class 0
            classes = classes + [0] * (count - len(classes))
        return classes

    def _fillSegmentation(self, result: ModelResult, volumeNode) -> None:
        seg = self.scene.GetNodeByID(result.nodeIDs["segmentation"])
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        labelNode = arrays.newVolumeNode(result._labels, self.inputAffineOf(volumeNode),
                                         "CalibSeg temporary labels",
                                         "vtkMRMLLabelMapVolumeNode")
        del result._labels
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

    @staticmethod
    def inputAffineOf(volumeNode) -> np.ndarray:
        return arrays.affineFromNode(volumeNode)

    def _removeNode(self, node) -> None:
        """Remove ``node`` and its display and storage nodes from the scene."""
        if node is None or node.GetScene() is None:
            return
        if node.IsA("vtkMRMLDisplayableNode"):
            for i in reversed(range(node.GetNumberOfDisplayNodes())):
                display = node.GetNthDisplayNode(i)
                if display is not None:
                    self.scene.RemoveNode(display)
        if node.IsA("vtkMRMLStorableNode"):
            for i in reversed(range(node.GetNumberOfStorageNodes())):
                storage = node.GetNthStorageNode(i)
                if storage is not None:
                    self.scene.RemoveNode(storage)
        self.scene.RemoveNode(node)

    def _removeNodes(self, result: ModelResult) -> None:
        for nodeID in result.nodeIDs.values():
            self._removeNode(self.scene.GetNodeByID(nodeID))
        result.nodeIDs.clear()

    def clear(self) -> None:
        """Remove every node CalibSeg created for the current results."""
        for result in list(self.results.values()):
            self._removeNodes(result)
        self.results.clear()
        for attr in ("chartNodeID", "diagonalTableID", "metricsTableID"):
            self._removeNode(self.scene.GetNodeByID(getattr(self, attr) or ""))
            setattr(self, attr, None)
        self._removeNode(self.scene.GetNodeByID(getattr(self, "_diagonalSeriesID", "") or ""))
        self.referenceLabels = None
        self.referenceNodeID = None

    def node(self, slot: str, key: str):
        """The node ``key`` (confidence, entropy, segmentation, ...) of model ``slot``."""
        result = self.results.get(slot)
        if result is None or key not in result.nodeIDs:
            return None
        return self.scene.GetNodeByID(result.nodeIDs[key])

    # ----------------------------------------------------------------------- display
    def showOverlay(self, kind: str = "confidence", opacity: float | None = None) -> None:
        """Show ``kind`` of model A (and B in the comparison view) as foreground layer."""
        if kind not in OVERLAYS:
            raise CalibSegError(f"Unknown overlay {kind!r}; use one of {', '.join(OVERLAYS)}.")
        self.overlay = kind
        if opacity is not None:
            self.opacity = float(min(max(opacity, 0.0), 1.0))
        inputID = self.inputNodeID
        for slot, nodes in (("A", layouts.compositeNodes(self.scene)),
                            ("B", self._compareComposites())):
            result = self.results.get(slot) or (self.results.get("A") if slot == "B" else None)
            if result is None:
                continue
            foreground = result.nodeIDs.get(kind) if kind != "none" else None
            for composite in nodes:
                if inputID:
                    composite.SetBackgroundVolumeID(inputID)
                composite.SetForegroundVolumeID(foreground)
                composite.SetForegroundOpacity(self.opacity)

    def setOpacity(self, opacity: float) -> None:
        self.showOverlay(self.overlay, opacity)

    def showPrototypeMap(self, show: bool = True, opacity: float = 0.5) -> None:
        """Show (or hide) the nearest-prototype label map as the label layer."""
        for slot, nodes in (("A", layouts.compositeNodes(self.scene)),
                            ("B", self._compareComposites())):
            result = self.results.get(slot)
            labelID = result.nodeIDs.get("prototypes") if (result and show) else None
            for composite in nodes:
                composite.SetLabelVolumeID(labelID)
                composite.SetLabelOpacity(opacity)

    def _compareComposites(self):
        if not self.comparing:
            return []
        return [layouts.compositeNode(self.scene, layouts.COMPARE_VIEW)]

    def registerLayouts(self):
        """Register CalibSeg's layouts on the layout node; return the layout node."""
        return layouts.registerLayouts(self.scene)

    def showLayout(self, compare: bool | None = None) -> int:
        """Switch to the overview or (with two models) comparison layout; return its id."""
        layoutNode = self.registerLayouts()
        compare = self.comparing if compare is None else bool(compare)
        if compare and "B" not in self.results:
            raise CalibSegError("Comparison needs two models: choose a model B and apply.")
        self.comparing = compare
        if compare:
            layouts.sliceNode(self.scene, layouts.COMPARE_VIEW, "Axial")
            layouts.linkViews(self.scene, ["Red", layouts.COMPARE_VIEW])
        plotView = layouts.plotViewNode(self.scene)
        if self.chartNodeID:
            plotView.SetPlotChartNodeID(self.chartNodeID)
        index = layouts.LAYOUT_COMPARE if compare else layouts.LAYOUT_OVERVIEW
        layoutNode.SetViewArrangement(index)
        self.showOverlay(self.overlay, self.opacity)
        return index

    # ----------------------------------------------------------------------- reference
    def _referenceLabels(self, referenceNode, volumeNode, models) -> np.ndarray:
        """Reference labels (Z, Y, X) on the input grid, checked against the models' classes."""
        names = None
        for model in models:
            modelNames = tuple(_field(model, "class_names", default=()) or ())
            names = names or modelNames
        if referenceNode is None:
            raise CalibSegError("No reference segmentation selected.")
        image, affine = self.inputArray(volumeNode)
        if referenceNode.IsA("vtkMRMLSegmentationNode"):
            labels = self._labelsFromSegmentation(referenceNode, volumeNode, names)
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
        count = len(names) if names else None
        if count:
            values = np.unique(labels)
            unknown = [int(v) for v in values if v < 0 or v >= count]
            if unknown:
                known = ", ".join(f"{i} {n}" for i, n in enumerate(names))
                raise CalibSegError(
                    f"Reference '{referenceNode.GetName()}' has label values {unknown} that the "
                    f"model does not know (its classes are {known}); relabel the reference or "
                    "choose the matching model."
                )
        return labels.astype(np.int64)

    def _labelsFromSegmentation(self, segNode, volumeNode, names) -> np.ndarray:
        """Class indices from a segmentation node, matching segment names to class names."""
        lookup = {str(n).strip().lower(): i for i, n in enumerate(names or ())}
        segmentation = segNode.GetSegmentation()
        unknown = []
        pairs = []
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            key = segment.GetName().strip().lower()
            if key not in lookup:
                unknown.append(segment.GetName())
            else:
                pairs.append((segmentation.GetNthSegmentID(i), lookup[key]))
        if not unknown and not pairs:
            raise CalibSegError(
                f"Reference segmentation '{segNode.GetName()}' has no segments; "
                "choose a segmentation with the model's classes."
            )
        if unknown:
            raise CalibSegError(
                f"Reference segments {unknown} are not classes of the model "
                f"({', '.join(names or ())}); rename the segments to the model's class names."
            )
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        labelNode = slicer.vtkMRMLLabelMapVolumeNode()
        self.scene.AddNode(labelNode)
        try:
            ids = __import__("vtk").vtkStringArray()
            for segmentID, _ in pairs:
                ids.InsertNextValue(segmentID)
            colorTable = None
            if not logic.ExportSegmentsToLabelmapNode(segNode, ids, labelNode, volumeNode) \
                    or labelNode.GetImageData() is None \
                    or labelNode.GetImageData().GetPointData().GetScalars() is None:
                raise CalibSegError(
                    f"Could not rasterise reference '{segNode.GetName()}' on the input grid.")
            exported = arrays.arrayFromNode(labelNode)[0].astype(np.int64)
            colorTable = labelNode.GetDisplayNode().GetColorNode() if labelNode.GetDisplayNode() \
                else None
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
                self.scene.RemoveNode(colorTable)
            self._removeNode(labelNode)
        return labels

    def setReference(self, referenceNode) -> dict:
        """Compute reliability statistics against ``referenceNode``; draw diagram and table."""
        if not self.results:
            raise CalibSegError("No model result yet: apply a model before choosing a reference.")
        volumeNode = self.scene.GetNodeByID(self.inputNodeID)
        labels = self._referenceLabels(referenceNode, volumeNode,
                                       [r.model for r in self.results.values()])
        previous = (self.referenceLabels, self.referenceNodeID)
        self.referenceLabels, self.referenceNodeID = labels, referenceNode.GetID()
        try:
            return self._updateStats()
        except Exception:
            self.referenceLabels, self.referenceNodeID = previous
            raise

    def _updateStats(self, slots=None) -> dict:
        """(Re)compute statistics of ``slots`` and refresh the chart and metrics table."""
        for slot in slots or list(self.results):
            result = self.results[slot]
            probs = _field(result.current, "probs")
            result.stats = reliabilityStats(probs, self.referenceLabels)
            result.metrics = result.stats.metrics()
        self._updatePlots()
        return {slot: r.metrics for slot, r in self.results.items()}

    def _updatePlots(self) -> None:
        scene = self.scene
        chart = scene.GetNodeByID(self.chartNodeID or "")
        if chart is None:
            diagonal = plots.newDiagonalTable()
            scene.AddNode(diagonal)
            series = plots.newSeries("perfect calibration", diagonal, "x", "y",
                                     (0.4, 0.4, 0.4), "diagonal")
            scene.AddNode(series)
            series.SetAndObserveTableNodeID(diagonal.GetID())
            chart = plots.newChart()
            scene.AddNode(chart)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.chartNodeID, self.diagonalTableID = chart.GetID(), diagonal.GetID()
            self._diagonalSeriesID = series.GetID()
        metricsTable = scene.GetNodeByID(self.metricsTableID or "")
        if metricsTable is None:
            metricsTable = slicer.vtkMRMLTableNode()
            metricsTable.SetName(plots.METRICS_TABLE)
            scene.AddNode(metricsTable)
            self.metricsTableID = metricsTable.GetID()
        wanted = [self._diagonalSeriesID]
        columns, temperatures = {}, {}
        for slot, result in self.results.items():
            table = scene.GetNodeByID(result.nodeIDs.get("reliability", ""))
            if table is None:
                table = slicer.vtkMRMLTableNode()
                table.SetName(f"CalibSeg reliability {result.name} ({slot})")
                table.SetAttribute("CalibSeg.Slot", slot)
                scene.AddNode(table)
                result.nodeIDs["reliability"] = table.GetID()
                color = plots.SERIES_COLORS.get(slot, (0.2, 0.2, 0.2))
                for key, title, x, y, kind in (
                    ("observedSeries", "observed frequency", plots.CONFIDENCE, plots.OBSERVED,
                     "line"),
                    ("countSeries", "fraction of voxels", plots.BIN_CENTRE, plots.FRACTION,
                     "bar"),
                ):
                    series = plots.newSeries(f"{slot}: {result.name} {title}", table, x, y,
                                             color, kind)
                    series.SetAttribute("CalibSeg.Slot", slot)
                    scene.AddNode(series)
                    series.SetAndObserveTableNodeID(table.GetID())
                    result.nodeIDs[key] = series.GetID()
            plots.fillColumns(table, plots.diagramArrays(result.stats.reliability_diagram()))
            wanted += [result.nodeIDs["observedSeries"], result.nodeIDs["countSeries"]]
            label = self.columnName(slot)
            columns[label] = plots.metricRows(result.metrics, result.classNames)
            temperatures[label] = result.temperature
        present = [chart.GetNthPlotSeriesNodeID(i)
                   for i in range(chart.GetNumberOfPlotSeriesNodes())]
        for seriesID in present:
            if seriesID not in wanted:
                chart.RemovePlotSeriesNodeID(seriesID)
        for seriesID in wanted:
            if seriesID not in present:
                chart.AddAndObservePlotSeriesNodeID(seriesID)
        plots.fillMetricsTable(metricsTable, columns, temperatures)
        layouts.plotViewNode(scene).SetPlotChartNodeID(chart.GetID())

    def columnName(self, slot: str) -> str:
        """Metrics table column of model ``slot``."""
        return f"{slot}: {self.results[slot].name}"

    # ----------------------------------------------------------------------- temperature
    def setTemperature(self, temperature: float, slot: str | None = None) -> None:
        """Rescale logits by ``temperature`` (no re-inference); update nodes in place."""
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature <= 0:
            raise CalibSegError(f"Temperature must be a positive number, got {temperature}.")
        slots = [slot] if slot else list(self.results)
        for s in slots:
            if s not in self.results:
                raise CalibSegError(f"No model result in slot {s}: apply a model first.")
        for s in slots:
            result = self.results[s]
            result.current = applyTemperature(result.prediction, temperature)
            result.temperature = temperature
            affine = self.inputAffine
            for key in ("confidence", "entropy"):
                values = _numpy(_field(result.current, key)).astype(np.float32, copy=False)
                arrays.fillNode(self.scene.GetNodeByID(result.nodeIDs[key]), values, affine)
        if self.referenceLabels is not None:
            self._updateStats(slots)

    def fitTemperatureToReference(self, slot: str | None = None) -> dict[str, float]:
        """Fit the temperature of each model to the reference; apply and return them."""
        if self.referenceLabels is None:
            raise CalibSegError("No reference segmentation: choose one before fitting.")
        from CalibSegLib.calibration import fit_temperature

        fitted = {}
        for s in [slot] if slot else list(self.results):
            logits = _field(self.results[s].prediction, "logits")
            fitted[s] = float(fit_temperature(logits, self.referenceLabels))
            self.setTemperature(fitted[s], s)
        return fitted

    # ----------------------------------------------------------------------- probe
    def probe(self, ras, slot: str | None = None, topK: int = 3) -> dict:
        """What each model says at RAS point ``ras``; empty dict outside the volume."""
        out = {}
        for s in [slot] if slot else list(self.results):
            result = self.results[s]
            index = arrays.rasToIndex(self.inputAffine, ras, self.inputShape)
            if index is None:
                continue
            current = result.current
            probs = probabilitiesAt(_numpy(_field(current, "probs")), index)
            cls = int(np.argmax(probs))
            entry = {
                "model": result.name, "index_zyx": index,
                "class_index": cls, "class_name": result.classNames[cls],
                "probabilities": {n: float(p) for n, p in zip(result.classNames, probs)},
                "confidence": float(_numpy(_field(current, "confidence"))[index]),
                "entropy": float(_numpy(_field(current, "entropy"))[index]),
                "temperature": result.temperature, "prototypes": [],
            }
            entry["prototypes"] = self._probePrototypes(result, index, topK)
            out[s] = entry
        return out

    def _probePrototypes(self, result, index, topK) -> list[dict]:
        current = result.current
        catalogue = prototypeCatalogue(result.model)
        allSim = _numpy(_field(current, "similarity"))
        candidates = []
        if allSim is not None and allSim.ndim == 4:
            values = allSim[(slice(None),) + index]
            order = np.argsort(-values)[:topK]
            candidates = [(int(k), float(values[k])) for k in order]
        else:
            nearest = _numpy(_field(current, "nearest_prototype"))
            similarity = _numpy(_field(current, "top_similarity"))
            if nearest is not None:
                sim = float(similarity[index]) if similarity is not None else math.nan
                candidates = [(int(nearest[index]), sim)]
        rows = []
        for k, sim in candidates:
            source = catalogue[k] if 0 <= k < len(catalogue) else {}
            rows.append({"prototype": k, "similarity": sim,
                         "class_index": _field(source, "class_index", "class", "label"),
                         "source": source})
        return rows

    # ----------------------------------------------------------------------- prototype sources
    def prototypeSource(self, k: int, slot: str = "A") -> dict:
        result = self.results.get(slot)
        if result is None:
            raise CalibSegError(f"No model result in slot {slot}: apply a model first.")
        catalogue = prototypeCatalogue(result.model)
        if not 0 <= int(k) < len(catalogue):
            raise CalibSegError(
                f"Model {result.name} has no prototype {k} in its card "
                f"({len(catalogue)} catalogued).")
        return catalogue[int(k)]

    def showPrototypeSource(self, k: int, slot: str = "A", folder: str | None = None):
        """Load prototype ``k``'s gallery crop as a volume and centre the views on it."""
        source = self.prototypeSource(k, slot)
        result = self.results[slot]
        gallery = _field(source, "gallery", "gallery_file", "crop", "file")
        if not gallery:
            raise CalibSegError(f"Prototype {k} of {result.name} has no gallery crop in its card.")
        base = folder or _field(result.model, "folder", default=None) or ""
        if os.path.isabs(str(gallery)):
            path = str(gallery)
        elif hasattr(result.model, "gallery_path") and not folder:
            path = result.model.gallery_path(str(gallery)) or str(gallery)
        else:
            path = os.path.join(str(base), str(gallery))
        image, affine = readCrop(path)
        name = f"CalibSeg prototype {k} source ({result.name})"
        node = arrays.newVolumeNode(image.astype(np.float32), affine, name)
        node.SetAttribute("CalibSeg.Slot", slot)
        node.SetAttribute("CalibSeg.Role", "prototypeSource")
        self.scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        result.nodeIDs[f"prototypeSource{k}"] = node.GetID()
        centre = arrays.indexToRas(affine, [(s - 1) / 2.0 for s in image.shape])
        for composite in layouts.compositeNodes(self.scene):
            sliceNode = self._sliceNodeOf(composite)
            if sliceNode is not None:
                sliceNode.JumpSliceByCentering(*centre)
        return node

    def _sliceNodeOf(self, composite):
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
            if node.GetLayoutName() == composite.GetLayoutName():
                return node
        return None

    def showContributionMap(self, prototype: int | None = None, slot: str = "A"):
        """Create (or refresh) a contribution map of model ``slot`` and show it.

        Without ``prototype``: the part of the winning class's logit given by its own
        prototypes (``prototype_contribution``). With ``prototype`` ``k``: ``w[c, k] *
        similarity[k]``, the contribution of prototype ``k`` to its class ``c``.
        """
        result = self.results.get(slot)
        if result is None:
            raise CalibSegError(f"No model result in slot {slot}: apply a model first.")
        current = result.current
        if prototype is None:
            values = _numpy(_field(current, "prototype_contribution"))
            key, title = "contribution", "contribution"
        else:
            weights = _numpy(_field(current, "prototype_weights"))
            similarity = _numpy(_field(current, "similarity"))
            classes = _numpy(_field(current, "prototype_class"))
            values = None
            if weights is not None and similarity is not None and classes is not None:
                k = int(prototype)
                if not 0 <= k < similarity.shape[0]:
                    raise CalibSegError(f"Model {result.name} has no prototype {k} "
                                        f"({similarity.shape[0]} prototypes).")
                values = np.float32(weights[int(classes[k]), k]) * similarity[k].astype(np.float32)
            key, title = f"contribution{int(prototype)}", f"prototype {int(prototype)} contribution"
        if values is None:
            raise CalibSegError(f"Model {result.name} gives no contribution maps "
                                "(only prototype models do).")
        values = np.asarray(values, dtype=np.float32)
        node = self.scene.GetNodeByID(result.nodeIDs.get(key, ""))
        if node is None:
            node = arrays.newVolumeNode(values, self.inputAffine,
                                        f"{result.name} ({slot}) {title}")
            node.SetAttribute("CalibSeg.Slot", slot)
            node.SetAttribute("CalibSeg.Role", key)
            self.scene.AddNode(node)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetAndObserveColorNodeID(
                colors.similarityTable(self.scene).GetID())
            result.nodeIDs[key] = node.GetID()
        else:
            arrays.fillNode(node, values, self.inputAffine)
        if key == "contribution":
            self.showOverlay("contribution", self.opacity)
        return node

    # ----------------------------------------------------------------------- export
    def export(self, folder: str) -> list[str]:
        """Write segmentation labels, confidence, entropy and metrics of each model to files."""
        import json

        from CalibSegLib.io import write_image

        if not self.results:
            raise CalibSegError("Nothing to export: apply a model first.")
        os.makedirs(folder, exist_ok=True)
        written = []
        for slot, result in self.results.items():
            stem = os.path.join(folder, f"{slot}-{_safe(result.name)}")
            for key, dtype in (("labels", np.uint8), ("confidence", np.float32),
                               ("entropy", np.float32)):
                values = _numpy(_field(result.current, key)).astype(dtype)
                written.append(write_image(f"{stem}-{key}.nii.gz", values, self.inputAffine))
            if result.metrics is not None:
                path = f"{stem}-metrics.json"
                with open(path, "w", encoding="utf-8") as fh:
                    json.dump({"model": result.name, "temperature": result.temperature,
                               "metrics": _jsonable(result.metrics)}, fh, indent=2)
                written.append(path)
        return written


def readCrop(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A prototype gallery crop: an image file or ``.npz`` (``image`` [+ ``affine``])."""
    if not os.path.exists(path):
        raise CalibSegError(f"Prototype gallery crop {path} is missing; reinstall the model.")
    if path.lower().endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            key = "image" if "image" in data else list(data.keys())[0]
            image = np.asarray(data[key])
            affine = np.asarray(data["affine"]) if "affine" in data else np.eye(4)
        while image.ndim > 3:
            image = image[0]
        return image, affine
    from CalibSegLib.io import read_image

    return read_image(path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
