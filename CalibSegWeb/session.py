"""What the page does, without the page: inputs, runs, overlays, temperature, probe, export.

:class:`ViewerSession` holds one MRML scene and the Slicer module's own
:class:`CalibSegLogic` on it. Every action of the page is one method here, so the app's
behaviour is tested headless on real MRML. Inference runs in a background thread
(:class:`RunJob`) on plain arrays; its result enters the scene on the caller's thread
(:meth:`ViewerSession.finishRun`), so the server stays responsive while a model runs.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from dataclasses import dataclass, field

import numpy as np
from CalibSegSlicer import arrays, layouts, legends, table_rows, voxel_probe
from CalibSegSlicer.logic import CalibSegLogic
from CalibSegSlicer.temperature import SHOWING

import CalibSegWeb  # noqa: F401  (puts CalibSegSlicer on sys.path)
from CalibSegLib.errors import CalibSegError
from CalibSegWeb.catalogue import CatalogueEntry, ModelCatalogue
from CalibSegWeb.uploads import PrivateFolder

SLOTS = ("A", "B")
#: Overlays the page offers (the logic's foreground kinds).
OVERLAYS = ("confidence", "entropy", "similarity", "contribution", "none")
SAMPLE_REFERENCE = "sample"
#: Role attribute of the nodes the session itself adds (input and reference volumes).
ROLE = "CalibSegWeb.Role"


@dataclass
class RunJob:
    """One or two models running on a copy of the input, in a background thread.

    ``entries`` are the models to run; ``slots`` the slot of each, ``kept`` the slots whose
    shown result stays as it is (same model on the same input).
    """

    entries: list[CatalogueEntry]
    slots: list[str]
    kept: list[str]
    image: np.ndarray
    affine: np.ndarray
    device: str = "cpu"
    form: str = "auto"  #: the predictions' form (``predict``'s ``form``)
    fraction: float = 0.0
    message: str = "starting"
    error: str | None = None
    cancelled: bool = False
    outputs: list = field(default_factory=list)  #: [(Model, Prediction)] of ``slots``
    _cancel: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RunJob:
        self._thread = threading.Thread(target=self._work, name="calibseg-run", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    def _work(self) -> None:
        from CalibSegLib.errors import Cancelled
        from CalibSegLib.inference import predict
        from CalibSegLib.models import load_model

        count = len(self.entries)
        try:
            for i, entry in enumerate(self.entries):
                if entry.error is not None:
                    raise CalibSegError(entry.error)
                self.message = f"loading {entry.card.name}"
                model = load_model(entry.folder)

                def progress(f, message="", _i=i, _name=entry.card.name):
                    self.fraction = (_i + float(f)) / count
                    self.message = f"{_name}: {message}" if message else _name

                prediction = predict(self.image, self.affine, model, device=self.device,
                                     progress=progress, cancel=self._cancel.is_set,
                                     form=self.form)
                self.outputs.append((model, prediction))
            self.fraction, self.message = 1.0, "done"
        except Cancelled:
            self.cancelled, self.message, self.outputs = True, "cancelled", []
        except CalibSegError as exc:
            self.error, self.outputs = str(exc), []
        except MemoryError:
            self.error, self.outputs = ("Out of memory while running the model; close other "
                                        "programs or use a smaller image."), []
        except Exception as exc:  # noqa: BLE001  (shown in the page as one message)
            self.error, self.outputs = f"The model run failed: {exc}", []


class ViewerSession:
    """The browser app's state and actions on one MRML scene (see the module docstring)."""

    def __init__(self, scene, catalogue: ModelCatalogue, folder: PrivateFolder,
                 device: str = "cpu", form: str = "auto"):
        self.scene = scene
        self.logic = CalibSegLogic(scene)
        self.catalogue = catalogue
        self.folder = folder
        self.device = device
        #: the predictions' form: "auto" (the top-k form beyond the library's memory
        #: budget), "full" or "compact"
        self.form = form
        self.inputNodeID: str | None = None
        self.inputName = ""
        self.dicomFolder: str | None = None  #: the DICOM series the input was read from
        self.referenceNodeID: str | None = None
        self.sampleLabels: np.ndarray | None = None
        self.job: RunJob | None = None
        self.lastProbe: dict = {}
        #: slot -> catalogue id of the model whose result is shown on the current input
        self.shownModels: dict[str, str] = {}
        self._jobModels: dict[str, str] = {}  #: slot -> catalogue id of the running job

    # ------------------------------------------------------------------------- inputs
    @property
    def inputNode(self):
        return self.scene.GetNodeByID(self.inputNodeID) if self.inputNodeID else None

    def loadSample(self) -> str:
        """Load the 2 mm MNI T1 sample case; its tissue labels become the offered reference."""
        from CalibSegLib.data import sample_case

        case = sample_case("mni-t1", resolution_mm=2.0)
        self._setInput(case.image, case.affine, "mni-t1 sample", dicomFolder=None)
        self.sampleLabels = np.asarray(case.labels)
        return self.inputName

    def loadImage(self, path: str, name: str | None = None) -> str:
        """Load an image file or DICOM series folder (never modified); ``name`` shows it
        (default: the file name without its image suffix)."""
        from CalibSegLib.io import read_image

        image, affine = read_image(path)
        name = os.path.basename(os.path.normpath(name or path))
        for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        self._setInput(image, affine, name or "image",
                       dicomFolder=path if os.path.isdir(path) else None)
        self.sampleLabels = None
        return self.inputName

    def _setInput(self, image, affine, name: str, dicomFolder: str | None) -> None:
        self._checkIdle()
        self.logic.clear()
        self._removeOwnNodes()
        node = arrays.newVolumeNode(np.asarray(image), affine, name)
        node.SetAttribute(ROLE, "input")
        self.scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.AutoWindowLevelOn()
        self.inputNodeID, self.inputName, self.dicomFolder = node.GetID(), name, dicomFolder
        self.referenceNodeID = None
        self.lastProbe = {}
        self.shownModels = {}
        for composite in layouts.compositeNodes(self.scene, exclude=()):
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)

    def _removeOwnNodes(self) -> None:
        nodes = self.scene.GetNodesByClass("vtkMRMLVolumeNode")
        own = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
        for node in own:
            if node.GetAttribute(ROLE):
                for i in reversed(range(node.GetNumberOfDisplayNodes())):
                    self.scene.RemoveNode(node.GetNthDisplayNode(i))
                self.scene.RemoveNode(node)

    # ------------------------------------------------------------------------- runs
    def startRun(self, modelIds: list[str]) -> RunJob:
        """Start models ``modelIds`` (catalogue ids: A, then optionally B) in the background.

        A slot already showing the same model on this input keeps its result (and its
        temperature); only the other models run.
        """
        self._checkIdle()
        if self.inputNode is None:
            raise CalibSegError("No image loaded: load the sample case or an image first.")
        ids = [m for m in modelIds if m]
        if not ids:
            raise CalibSegError("No model chosen: choose model A from the list.")
        if len(ids) > 2:
            raise CalibSegError("At most two models (A and B) run at once.")
        entries = [self.catalogue.get(m) for m in ids]
        for entry in entries:
            if entry.error is not None:
                raise CalibSegError(entry.error)
        wanted = dict(zip(SLOTS, ids))
        kept = [s for s, m in wanted.items()
                if self.shownModels.get(s) == m and s in self.logic.results]
        todo = [s for s in wanted if s not in kept]
        image, affine = self.logic.inputArray(self.inputNode)
        self.job = RunJob([self.catalogue.get(wanted[s]) for s in todo], todo, kept, image,
                          affine, device=self.device, form=self.form)
        self._jobModels = wanted
        return self.job.start()

    def cancelRun(self) -> None:
        if self.job is not None and not self.job.done:
            self.job.cancel()

    def finishRun(self) -> list[str]:
        """Show a finished job's predictions (on this thread); return the slots shown.

        A failed job raises its one-line error; a cancelled job shows nothing.
        """
        job, self.job = self.job, None
        if job is None or not job.done:
            raise CalibSegError("No finished model run to show.")
        if job.error is not None:
            raise CalibSegError(job.error)
        if job.cancelled:
            return []
        volume = self.inputNode
        for slot, (model, prediction) in zip(job.slots, job.outputs):
            self.logic.addPrediction(volume, model, prediction, slot=slot)
            self.shownModels[slot] = self._jobModels[slot]
        slots = sorted(job.slots + job.kept)
        for slot in SLOTS:
            if slot not in slots and slot in self.logic.results:
                self.logic.removeResult(slot)
                self.shownModels.pop(slot, None)
        if self.referenceNodeID is not None:
            self.logic.setReference(self.scene.GetNodeByID(self.referenceNodeID),
                                    background=None)
        return slots

    def _checkIdle(self) -> None:
        if self.job is not None and not self.job.done:
            raise CalibSegError("A model is running: wait for it or press Cancel.")

    # ------------------------------------------------------------------------- reference
    def chooseReference(self, which: str | None, path: str | None = None) -> dict:
        """Use a reference segmentation: the sample's labels (``"sample"``) or a label file.

        Returns the metrics per slot (empty until a model has run; on large volumes an
        estimate from a voxel sample until :meth:`pollTemperatures` shows the whole
        volume's); None or "" removes it.
        """
        if not which and not path:
            self.referenceNodeID = None
            return {}
        if self.inputNode is None:
            raise CalibSegError("No image loaded: load an image before its reference.")
        if path:
            from CalibSegLib.io import read_image

            labels, affine = read_image(path)
            if not np.issubdtype(labels.dtype, np.integer) and np.any(np.mod(labels, 1)):
                raise CalibSegError(f"{os.path.basename(path)} has non-integer values: choose "
                                    "a label map (class indices) as reference.")
            name = f"{self.inputName} reference"
        elif which == SAMPLE_REFERENCE:
            if self.sampleLabels is None:
                raise CalibSegError("The sample reference belongs to the sample case: load the "
                                    "sample case, or upload the image's own label file.")
            labels, affine = self.sampleLabels, arrays.affineFromNode(self.inputNode)
            name = "mni-t1 sample tissue labels"
        else:
            raise CalibSegError(f"Unknown reference {which!r}: choose the sample's labels or "
                                "upload a label file.")
        old = self.scene.GetNodeByID(self.referenceNodeID or "")
        node = arrays.newVolumeNode(np.asarray(labels).astype(np.int16), affine, name,
                                    "vtkMRMLLabelMapVolumeNode")
        node.SetAttribute(ROLE, "reference")
        self.scene.AddNode(node)
        try:
            metrics = (self.logic.setReference(node, background=None)
                       if self.logic.results else {})
        except Exception:
            self.scene.RemoveNode(node)
            raise
        if old is not None:
            self.scene.RemoveNode(old)
        self.referenceNodeID = node.GetID()
        return metrics

    # ------------------------------------------------------------------------- display
    def setOverlay(self, kind: str, opacity: float) -> None:
        if kind not in OVERLAYS:
            raise CalibSegError(f"Unknown overlay {kind!r}; choose one of {', '.join(OVERLAYS)}.")
        self._requireResults()
        if kind == "contribution" and not self.logic.node("A", "contribution"):
            self.logic.showContributionMap(slot="A")
            if "B" in self.logic.results:
                self.logic.showContributionMap(slot="B")
        self.logic.showOverlay(kind, float(opacity))

    def showPrototypeMap(self, show: bool, opacity: float = 0.5) -> None:
        self._requireResults()
        self.logic.showPrototypeMap(bool(show), float(opacity))

    def setCompare(self, compare: bool) -> None:
        """Side-by-side A and B in linked views (needs two results), or A alone."""
        self.logic.showLayout(bool(compare))

    def setTemperature(self, slot: str, temperature: float) -> None:
        """Model ``slot`` at ``temperature``: whole volume, table and diagram before returning."""
        self._requireResults()
        self.logic.setTemperature(float(temperature), slot)

    def fitTemperatures(self) -> dict[str, float]:
        """Fit each model's temperature to the reference and apply it (whole volume)."""
        self._requireResults()
        return self.logic.fitTemperatureToReference()

    def previewTemperature(self, slot: str, temperature: float) -> bool:
        """Show ``temperature`` of model ``slot`` on the planes the views show, with a table
        and diagram estimated from a voxel sample (fast, for a moving slider); True then,
        False when no plane could be previewed (an oblique view: the whole volume follows
        at once, in the background for large volumes). :meth:`applyTemperatures` applies
        it to the whole volume."""
        self._requireResults()
        if self.logic.previewTemperature(float(temperature), slot) is not None:
            return True
        self.logic.applyPendingTemperature()
        return False

    def applyTemperatures(self) -> list[str]:
        """Apply every previewed temperature to its whole model, table and diagram (in the
        background for large volumes: :meth:`pollTemperatures` shows it when done)."""
        return self.logic.applyPendingTemperature()

    def pollTemperatures(self) -> list[str]:
        """Show the whole-volume refreshes that ended (on the caller's thread); their slots."""
        return self.logic.pollRefresh()

    @property
    def refreshing(self) -> bool:
        """Whether a whole-volume temperature refresh is still running."""
        return self.logic.refreshing

    def showing(self) -> str:
        """What the views and the table show: ``"preview: visible slices"`` or ``"full volume"``."""
        return SHOWING[self.logic.showing()] if self.logic.results else ""

    def temperatures(self) -> dict[str, float]:
        """Each shown model's temperature (a previewed one included)."""
        applied = {slot: float(r.temperature) for slot, r in self.logic.results.items()}
        return {**applied, **{s: float(t) for s, t in self.logic.pendingTemperatures.items()
                              if s in applied}}

    def legend(self, slot: str = "A") -> dict | None:
        kind = self.logic.overlay
        return legends.legend(self.logic.node(slot, kind)) if kind != "none" else None

    def _requireResults(self) -> None:
        if not self.logic.results:
            raise CalibSegError("No model result yet: press Run first.")

    # ------------------------------------------------------------------------- read-outs
    def metricsTable(self) -> tuple[list[str], list[list[str]]]:
        """The metrics table node the logic fills (header, rows); empty without a reference."""
        if self.referenceNodeID is None or not self.logic.results:
            return [], []
        return table_rows.tableRows(self.scene.GetNodeByID(self.logic.metricsTableID or ""))

    def diagramPng(self) -> bytes | None:
        """The reliability diagram of the shown models against the reference, as PNG."""
        stats = {self.logic.columnName(s) + (" (estimate from a voxel sample)"
                                             if r.statsEstimated else ""): r.stats
                 for s, r in self.logic.results.items() if r.stats is not None}
        if not stats or self.referenceNodeID is None:
            return None
        from CalibSegLib.calibration.plots import plot_reliability_diagram

        figure = plot_reliability_diagram(stats)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        return buffer.getvalue()

    def probeSliceView(self, sliceNode, x: float, y: float) -> dict:
        """Probe the voxel under pixel ``(x, y)`` of a slice view (see ``voxel_probe``)."""
        ras, out = voxel_probe.probeSliceView(self.logic, sliceNode, x, y)
        self.lastProbe = {"ras": [round(v, 2) for v in ras], "models": out}
        return self.lastProbe

    # ------------------------------------------------------------------------- export
    def exportZip(self) -> tuple[str, bytes]:
        """Segmentation, confidence, entropy (NIfTI) and metrics of each model; DICOM SEG and
        Parametric Map too when the input was a DICOM series. ``(file name, zip bytes)``."""
        self._requireResults()
        folder = self.folder.subfolder(f"export-{len(os.listdir(self.folder.path))}")
        written = list(self.logic.export(folder))
        if self.dicomFolder is not None:
            written += self._exportDicom(folder)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in written:
                archive.write(path, os.path.relpath(path, folder))
        return self.exportName(), buffer.getvalue()

    def exportName(self) -> str:
        """File name of the export of the current case."""
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.inputName)
        return f"calibseg-{stem or 'results'}.zip"

    def _exportDicom(self, folder: str) -> list[str]:
        from CalibSegLib.dicom import read_series_datasets, write_confidence_map, write_segmentation

        sources = read_series_datasets(self.dicomFolder, pixels=False)
        written = []
        for slot, result in self.logic.results.items():
            card = result.model.card
            current = result.current
            stem = os.path.join(folder, f"{slot}-{card.name}")
            written.append(write_segmentation(
                np.asarray(current.labels), sources, f"{stem}-seg.dcm",
                class_names=card.class_names, class_colors=card.class_colors,
                model_name=card.name, model_version=card.version,
                temperature=float(result.temperature)))
            written.append(write_confidence_map(
                np.asarray(current.confidence, dtype=np.float32), sources,
                f"{stem}-confidence.dcm", label="CONFIDENCE",
                explanation="maximum softmax probability", model_name=card.name,
                model_version=card.version))
        return written
