"""CalibSeg's MRML logic: a short facade over the package's one-job files.

:class:`CalibSegLogic` is a plain class (no Qt). It runs in 3D Slicer and headless
on the ``slicer-core`` wheel. It keeps the state of one case (the input volume, the
results in slots A and B, the reference labels, the display choices) and delegates:

- :mod:`~CalibSegSlicer.results`: a result's nodes (build, refresh, remove),
- :mod:`~CalibSegSlicer.reference`: the reference segmentation on the input grid,
- :mod:`~CalibSegSlicer.reliability`: reliability diagram and metrics table,
- :mod:`~CalibSegSlicer.display`: foreground and label layers, visible planes,
- :mod:`~CalibSegSlicer.temperature`: a temperature change, previewed on the visible
  planes and a sampled diagram first, the whole volume after (in the background),
- :mod:`~CalibSegSlicer.prototypes`: probe, prototype sources, contribution maps,
- :mod:`~CalibSegSlicer.export`: files.

Results shown together are on one input volume: a prediction on another volume
starts a new case (the previous results, reference and chart are removed). The
input volume node is never modified.
"""

from __future__ import annotations

import math

import numpy as np
import slicer

from CalibSegLib.calibration import default_temperature_grid, fit_temperature_from_grid
from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import Prediction
from CalibSegLib.models import Model
from CalibSegSlicer import (
    arrays,
    display,
    export,
    layouts,
    prototypes,
    reference,
    results,
)
from CalibSegSlicer.catalog import loadModel  # noqa: F401  (part of the scripting API)
from CalibSegSlicer.reliability import ReliabilityChart, columnName
from CalibSegSlicer.results import SLOTS, ModelResult
from CalibSegSlicer.temperature import (
    BACKGROUND_VOXELS,
    FULL,
    PREVIEW,
    VolumeRefresh,
    regionStats,
    sampleRegion,
)

N_BINS = 20


class CalibSegLogic:
    """MRML logic of CalibSeg (no Qt): see the module docstring."""

    def __init__(self, scene=None):
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.results: dict[str, ModelResult] = {}
        self.inputNodeID: str | None = None
        self.inputAffine: np.ndarray | None = None
        self.inputShape: tuple[int, int, int] | None = None
        self.referenceLabels: np.ndarray | None = None
        self.referenceNodeID: str | None = None
        self.overlay = "confidence"
        self.opacity = 0.6
        self.comparing = False
        self.chart = ReliabilityChart(self.scene)
        #: slot -> temperature previewed on the visible planes, not yet applied
        self.pendingTemperatures: dict[str, float] = {}
        #: slot -> whole-volume refresh at a new temperature, running or not yet shown
        self.refreshes: dict[str, VolumeRefresh] = {}
        #: volumes of at least this many voxels are refreshed in a worker thread
        self.backgroundVoxels = BACKGROUND_VOXELS

    @property
    def chartNodeID(self) -> str | None:
        return self.chart.chartNodeID

    @property
    def metricsTableID(self) -> str | None:
        return self.chart.metricsTableID

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

    def run(self, volumeNode, models: list[Model], device: str = "auto", referenceNode=None,
            progress=None, cancel=None, form: str = "auto") -> dict[str, ModelResult]:
        """Predict with one or two loaded models in this process and show everything.

        ``form`` is the prediction's form (``"auto"``: the top-k form beyond the library's
        memory budget; ``"full"``; ``"compact"``).
        """
        from CalibSegLib.inference import predict

        if not models:
            raise CalibSegError("No model selected: choose a model.")
        image, affine = self.inputArray(volumeNode)
        for slot, model in zip(SLOTS, models):
            prediction = predict(image, affine, model, device=device, progress=progress,
                                 cancel=cancel, form=form)
            self.addPrediction(volumeNode, model, prediction, slot=slot)
        for slot in SLOTS[len(models):]:
            self.removeResult(slot)
        if referenceNode is not None:
            self.setReference(referenceNode)
        return self.results

    # ----------------------------------------------------------------------- results
    def addPrediction(self, volumeNode, model: Model, prediction: Prediction,
                      slot: str = "A") -> ModelResult:
        """Show ``prediction`` of ``model`` on ``volumeNode`` as new nodes in ``slot``.

        The slot's earlier nodes are replaced; a prediction on another volume than the
        shown results starts a new case. Everything is checked and built before the first
        node enters the scene; a failure removes the nodes already added.
        """
        if slot not in SLOTS:
            raise CalibSegError(f"Unknown model slot {slot!r}; use 'A' or 'B'.")
        if model is None or prediction is None:
            raise CalibSegError("No model result to show: run a model first.")
        image, affine = self.inputArray(volumeNode)
        results.checkPrediction(prediction, image.shape, affine, volumeNode.GetName())
        result = ModelResult(slot=slot, model=model, prediction=prediction, current=prediction)
        built = results.buildNodes(result, volumeNode.GetName(), affine)

        if self.inputNodeID not in (None, volumeNode.GetID()):
            self.clear()  # a new case: nothing of the previous volume stays
        self.removeResult(slot)
        try:
            for key, node in built.nodes:
                self.scene.AddNode(node)
                result.nodeIDs[key] = node.GetID()
            results.finishNodes(self.scene, result, volumeNode, built.labels)
        except Exception:
            results.removeNodes(self.scene, result)
            for _, node in built.nodes:
                results.removeNode(self.scene, node)
            raise
        self.results[slot] = result
        self.inputNodeID = volumeNode.GetID()
        self.inputAffine, self.inputShape = affine, tuple(image.shape)
        try:
            self.showOverlay(self.overlay, self.opacity)
        except CalibSegError:  # the chosen overlay needs a prototype model: show confidence
            self.showOverlay("confidence", self.opacity)
        if self.referenceLabels is not None:
            self._updateStats([slot], background=self._large())
        return result

    def node(self, slot: str, key: str):
        """The node ``key`` (confidence, entropy, segmentation, ...) of model ``slot``."""
        result = self.results.get(slot)
        if result is None or key not in result.nodeIDs:
            return None
        return self.scene.GetNodeByID(result.nodeIDs[key])

    def removeResult(self, slot: str) -> None:
        """Remove model ``slot``'s result and nodes (nothing when the slot is empty)."""
        result = self.results.pop(slot, None)
        self.pendingTemperatures.pop(slot, None)
        self._cancelRefresh(slot)
        if result is not None:
            results.removeNodes(self.scene, result)
            if self.chart.chartNodeID is not None:
                self.chart.update(self.results)
        if slot == "B" and self.comparing:
            self.comparing = False

    def clear(self) -> None:
        """Remove every node CalibSeg created for the current case (results, chart, tables)."""
        for result in self.results.values():
            results.removeNodes(self.scene, result)
        self.results.clear()
        self.pendingTemperatures.clear()
        for slot in list(self.refreshes):
            self._cancelRefresh(slot)
        self.chart.remove()
        self.referenceLabels = self.referenceNodeID = None
        self.inputNodeID = self.inputAffine = self.inputShape = None
        self.comparing = False

    # ----------------------------------------------------------------------- display
    def showOverlay(self, kind: str = "confidence", opacity: float | None = None) -> None:
        """Show ``kind`` of model A (and B in the comparison view) as the foreground layer.

        ``"contribution"`` creates the contribution maps of prototype models on demand;
        a kind no shown model has is refused with a clear error.
        """
        if kind not in display.OVERLAYS:
            raise CalibSegError(f"Unknown overlay {kind!r}; use one of "
                                f"{', '.join(display.OVERLAYS)}.")
        shown = [s for s, _ in display.viewsBySlot(self.scene, self.comparing)
                 if s in self.results]
        if kind == "contribution":
            for slot in shown:
                if self.results[slot].current.is_prototype:
                    self.showContributionMap(slot=slot, show=False)
        if kind != "none" and shown and not any(kind in self.results[s].nodeIDs for s in shown):
            names = ", ".join(self.results[s].name for s in shown)
            raise CalibSegError(f"The {kind} overlay needs a prototype model; {names} "
                                "has none. Choose confidence or entropy.")
        self.overlay = kind
        if opacity is not None:
            self.opacity = float(min(max(opacity, 0.0), 1.0))
        display.showForeground(self.scene, self.results, self.inputNodeID, kind, self.opacity,
                               self.comparing)

    def setOpacity(self, opacity: float) -> None:
        self.showOverlay(self.overlay, opacity)

    def showPrototypeMap(self, show: bool = True, opacity: float = 0.5) -> None:
        """Show (or hide) the nearest-prototype label map as the label layer."""
        display.showLabelLayer(self.scene, self.results, show, opacity, self.comparing)

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
        if self.chartNodeID:
            layouts.plotViewNode(self.scene).SetPlotChartNodeID(self.chartNodeID)
        index = layouts.LAYOUT_COMPARE if compare else layouts.LAYOUT_OVERVIEW
        layoutNode.SetViewArrangement(index)
        self.showOverlay(self.overlay, self.opacity)
        return index

    # ----------------------------------------------------------------------- reference
    def _classNames(self) -> tuple[str, ...]:
        return next(iter(self.results.values())).classNames

    def setReference(self, referenceNode, background: bool | None = False) -> dict:
        """Compute reliability statistics against ``referenceNode``; draw diagram and table.

        A temperature previewed or still being applied is applied with it (its statistics
        need the new reference). With ``background`` (``None``: volumes of at least
        :attr:`backgroundVoxels` voxels) the diagram and table first show an estimate
        from a voxel sample and the whole volume's statistics follow in a worker thread
        (:meth:`pollRefresh`); the metrics returned are then the estimates.
        """
        if not self.results:
            raise CalibSegError("No model result yet: apply a model before choosing a reference.")
        volumeNode = self.scene.GetNodeByID(self.inputNodeID)
        labels = reference.referenceLabels(self.scene, referenceNode, volumeNode,
                                           self._classNames())
        previous = (self.referenceLabels, self.referenceNodeID)
        self.referenceLabels, self.referenceNodeID = labels, referenceNode.GetID()
        try:
            return self._updateStats(background=self._large() if background is None
                                     else background)
        except Exception:
            self.referenceLabels, self.referenceNodeID = previous
            raise

    def _large(self) -> bool:
        """Whether the case's volume is refreshed in the background (see backgroundVoxels)."""
        voxels = int(np.prod(self.inputShape)) if self.inputShape else 0
        return voxels >= self.backgroundVoxels

    def _updateStats(self, slots=None, background: bool = False) -> dict:
        """(Re)compute the whole-volume statistics of ``slots`` against the reference, at
        the temperature each model is going to (a previewed or refreshing one, else its
        own); refresh chart and table.

        In the ``background``: an estimate from a voxel sample now, the whole volume in a
        worker thread (statistics only when the maps are already at that temperature).
        """
        for slot in slots or list(self.results):
            result = self.results[slot]
            running = self.refreshes.get(slot)
            value = self.pendingTemperatures.pop(
                slot, running.temperature if running is not None else result.temperature)
            start = result.current if value == result.temperature else None
            if background:
                region = sampleRegion(self.inputShape)
                result.setStats(regionStats(result.current, self.referenceLabels, value,
                                            region, N_BINS), value, estimated=True)
            self._startRefresh(slot, value, background, start)
        if not self.pollRefresh():  # a refresh shown has updated the chart already
            self.chart.update(self.results)
        return {slot: r.metrics for slot, r in self.results.items()}

    def columnName(self, slot: str) -> str:
        """Metrics table column of model ``slot``."""
        return columnName(self.results[slot])

    # ----------------------------------------------------------------------- temperature
    def _result(self, slot: str) -> ModelResult:
        if slot not in self.results:
            raise CalibSegError(f"No model result in slot {slot}: apply a model first.")
        return self.results[slot]

    def setTemperature(self, temperature: float, slot: str | None = None) -> None:
        """Model ``slot`` at ``temperature`` (logits rescaled, no re-inference): whole
        volume, diagram and metrics, before returning; nodes updated in place. Other
        models keep theirs; ``slot=None`` sets every model to ``temperature``."""
        value = _checked(temperature)
        for s in [slot] if slot else list(self.results):
            self._result(s)
            self.pendingTemperatures.pop(s, None)
            self._startRefresh(s, value, background=False)
        self.pollRefresh()

    def changeTemperature(self, temperature: float, slot: str) -> list[tuple[int, int]] | None:
        """Interactive change: :meth:`previewTemperature`, then the whole volume follows
        (in the background for large volumes; :meth:`pollRefresh` shows it)."""
        planes = self.previewTemperature(temperature, slot)
        self.applyPendingTemperature()
        return planes

    def previewTemperature(self, temperature: float, slot: str) -> list[tuple[int, int]] | None:
        """Show model ``slot`` at ``temperature`` on the planes the slice views show, and
        an estimated diagram and table (from a grid sample of the volume); the cost is
        bounded by the planes and the sample, not the volume.

        A refresh of the slot still running is cancelled. The result keeps the applied
        temperature until :meth:`applyPendingTemperature`. Returns the planes refreshed;
        None when a view is oblique to the voxel grid (no plane is previewed; the views
        follow when the pending temperature is applied).
        """
        result = self._result(slot)
        value = _checked(temperature)
        self._cancelRefresh(slot)
        self.pendingTemperatures[slot] = value
        planes = display.visiblePlanes(self.scene, self.inputAffine, self.inputShape)
        if planes is not None:
            results.refreshPlanes(self.scene, result, planes, value)
        result.showing = PREVIEW
        if self.referenceLabels is not None:
            region = sampleRegion(self.inputShape)
            result.setStats(regionStats(result.prediction, self.referenceLabels, value,
                                        region, N_BINS), value, estimated=True)
            self.chart.update(self.results)
        return planes

    def applyPendingTemperature(self, background: bool | None = None) -> list[str]:
        """Apply every previewed temperature to its whole model; return the slots started.

        ``background`` (default: volumes of at least :attr:`backgroundVoxels` voxels) runs
        the work in a worker thread: the preview stays until :meth:`pollRefresh` shows
        the whole volume and the exact statistics. Otherwise they are shown before this
        returns.
        """
        if background is None:
            background = self._large()
        started = []
        for slot, value in list(self.pendingTemperatures.items()):
            if slot in self.results:
                self._startRefresh(slot, value, background)
                started.append(slot)
        self.pendingTemperatures.clear()
        self.pollRefresh()
        return started

    def _startRefresh(self, slot: str, value: float, background: bool,
                      start: Prediction | None = None) -> None:
        """Whole volume of ``slot`` at ``value`` from ``start`` (default: as inferred)."""
        self._cancelRefresh(slot)
        job = VolumeRefresh(slot, start or self.results[slot].prediction, value,
                            self.referenceLabels, N_BINS)
        self.refreshes[slot] = job
        if background:
            job.start()
        else:
            job.run()

    def _cancelRefresh(self, slot: str) -> None:
        job = self.refreshes.pop(slot, None)
        if job is not None:
            job.cancel()

    @property
    def refreshing(self) -> bool:
        """Whether a whole-volume refresh is under way (or finished, not yet shown)."""
        return bool(self.refreshes)

    def pollRefresh(self) -> list[str]:
        """Show the finished whole-volume refreshes (call on the main thread, e.g. from a
        timer); return their slots. A failed refresh raises its error once."""
        shown, failed = [], []
        for slot, job in list(self.refreshes.items()):
            if not job.done:
                continue
            del self.refreshes[slot]
            result = self.results.get(slot)
            if job.state != "finished" or result is None:
                if job.state == "failed":
                    failed.append(job.error)
                continue
            if job.current is not result.current:
                result.current = job.current
                results.refreshTemperatureNodes(self.scene, result, self.inputAffine)
            if self.referenceLabels is not None:
                stats = job.stats if job.reference is self.referenceLabels else \
                    result.current.reliability_stats(self.referenceLabels, N_BINS)
                result.setStats(stats, result.temperature, estimated=False)
            result.showing = FULL
            shown.append(slot)
        if shown and self.referenceLabels is not None:
            self.chart.update(self.results)
        if failed:
            raise CalibSegError(failed[0])
        return shown

    def waitForRefresh(self, timeout: float | None = None) -> list[str]:
        """Wait for the running refreshes, then show them (scripts and tests)."""
        for job in list(self.refreshes.values()):
            job.wait(timeout)
        return self.pollRefresh()

    def finishTemperatures(self) -> None:
        """Apply pending temperatures and wait for every refresh: the whole volume is shown."""
        self.applyPendingTemperature(background=False)
        self.waitForRefresh()

    def showing(self, slot: str | None = None) -> str:
        """``"preview"`` while model ``slot`` (any model, for None) shows a preview, else
        ``"full"``; ``CalibSegSlicer.temperature.SHOWING`` has the words for it."""
        shown = [self.results[slot]] if slot in self.results else (
            list(self.results.values()) if slot is None else [])
        if any(r.showing == PREVIEW for r in shown):
            return PREVIEW
        return FULL

    def fitTemperatureToReference(self, slot: str | None = None) -> dict[str, float]:
        """Fit each model's temperature to the reference (minimum NLL over a grid of
        temperatures, from the stored prediction in either form); apply and return them."""
        if self.referenceLabels is None:
            raise CalibSegError("No reference segmentation: choose one before fitting.")
        self.finishTemperatures()
        grid = default_temperature_grid()
        fitted = {}
        for s in [slot] if slot else list(self.results):
            sums, _ = self._result(s).prediction.nll_over_temperatures(self.referenceLabels,
                                                                       grid)
            fitted[s] = float(fit_temperature_from_grid(sums, grid))
            self.setTemperature(fitted[s], s)
        return fitted

    # ----------------------------------------------------------------------- probe
    def probe(self, ras, slot: str | None = None, topK: int = 3) -> dict:
        """What each model says at RAS point ``ras``; empty dict outside the volume."""
        out = {}
        for s in [slot] if slot else list(self.results):
            result = self._result(s)
            index = arrays.rasToIndex(self.inputAffine, ras, self.inputShape)
            if index is None:
                continue
            current = result.current
            probs = current.probabilities(region=index)  # (C,) at the shown temperature
            cls = int(current.labels[index])
            out[s] = {
                "model": result.name, "index_zyx": index,
                "class_index": cls, "class_name": result.classNames[cls],
                "probabilities": {n: float(p) for n, p in zip(result.classNames, probs)},
                "confidence": float(current.confidence[index]),
                "entropy": float(current.entropy[index]),
                "temperature": result.temperature,
                "prototypes": prototypes.probePrototypes(current, result.model, index, topK),
            }
        return out

    # ----------------------------------------------------------------------- prototypes
    def prototypeSource(self, k: int, slot: str = "A") -> dict:
        """The card's catalogue entry of prototype ``k`` of model ``slot``."""
        return prototypes.sourceEntry(self._result(slot), k)

    def showPrototypeSource(self, k: int, slot: str = "A"):
        """Load prototype ``k``'s gallery crop as a volume and centre the views on it."""
        return prototypes.showSource(self.scene, self._result(slot), k)

    def showContributionMap(self, prototype: int | None = None, slot: str = "A",
                            show: bool = True):
        """Create (or refresh) a contribution map of model ``slot``; show the total one.

        See :func:`CalibSegSlicer.prototypes.contributionValues` for what is mapped.
        """
        node = prototypes.contributionNode(self.scene, self._result(slot), self.inputAffine,
                                           prototype)
        if show and prototype is None:
            self.showOverlay("contribution", self.opacity)
        return node

    # ----------------------------------------------------------------------- export
    def export(self, folder: str) -> list[str]:
        """Write labels, confidence, entropy (and metrics) of each model into ``folder``
        (a temperature change under way is finished first)."""
        self.finishTemperatures()
        return export.exportResults(self.results, self.inputAffine, folder)


def _checked(temperature: float) -> float:
    value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise CalibSegError(f"Temperature must be a positive number, got {temperature}.")
    return value
