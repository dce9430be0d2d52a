"""The decisions of the CalibSeg panel, in plain methods (no Qt).

:class:`CalibSegPanel` reads and sets the panel's widgets through ``ui`` (the
widgets of ``Resources/UI/CalibSeg.ui`` in Slicer, any object with the same
attributes in tests), drives a :class:`~CalibSegSlicer.logic.CalibSegLogic`, starts
jobs through a runner (:class:`~CalibSegSlicer.process.ProcessRunner` or
:class:`~CalibSegSlicer.process.InProcessRunner`) and lists models from a
:class:`~CalibSegSlicer.catalog.ModelCatalog`. The Qt widget only connects the
signals of :data:`SIGNALS` to these methods and polls :meth:`CalibSegPanel.poll`
with a timer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import CARD_FILE
from CalibSegSlicer.catalog import ModelCatalog, cardText, loadModel, modelFoldersIn
from CalibSegSlicer.logic import CalibSegLogic
from CalibSegSlicer.process import Job, JobRunner
from CalibSegSlicer.results import SLOTS
from CalibSegSlicer.temperature import SHOWING

#: (widget, signal, panel method) connected by the Qt widget. Every input of Apply
#: (volume, model A, model B) ends in :meth:`CalibSegPanel.updateButtons`.
SIGNALS = (
    ("inputSelector", "currentNodeChanged(vtkMRMLNode*)", "onInputChanged"),
    ("modelAComboBox", "currentIndexChanged(int)", "onModelChanged"),
    ("modelBComboBox", "currentIndexChanged(int)", "onModelChanged"),
    ("modelAPathLineEdit", "currentPathChanged(QString)", "onModelAFolder"),
    ("modelBPathLineEdit", "currentPathChanged(QString)", "onModelBFolder"),
    ("applyButton", "clicked(bool)", "apply"),
    ("cancelButton", "clicked(bool)", "cancel"),
    ("clearButton", "clicked(bool)", "clear"),
    ("temperatureSlotComboBox", "currentIndexChanged(int)", "onTemperatureSlot"),
    ("temperatureSlider", "valueChanged(double)", "onTemperatureSlider"),
    ("fitTemperatureButton", "clicked(bool)", "fitTemperature"),
    ("referenceSelector", "currentNodeChanged(vtkMRMLNode*)", "onReference"),
    ("overlayComboBox", "currentIndexChanged(int)", "onDisplay"),
    ("opacitySlider", "valueChanged(double)", "onDisplay"),
    ("prototypeMapCheckBox", "toggled(bool)", "onDisplay"),
    ("compareCheckBox", "toggled(bool)", "onCompare"),
    ("showPrototypeButton", "clicked(bool)", "showPrototype"),
    ("exportButton", "clicked(bool)", "export"),
)

NO_MODEL = "(none)"


class Debounce(Protocol):
    """Runs a scheduled callback later, once scheduling pauses (the widget's: a Qt timer)."""

    def schedule(self, callback: Callable[[], Any]) -> None: ...


class RunNow:
    """A debouncer that runs the callback at once (scripts); the widget's waits for a pause."""

    def schedule(self, callback: Callable[[], Any]) -> None:
        callback()


@dataclass
class Task:
    """One background job of the panel: an inference for a slot, or a model import."""

    kind: str  #: "inference" or "import"
    slot: str
    folder: str  #: the model folder (inference) or the new folder (import)
    job: Job


class CalibSegPanel:
    """What the panel does when the user acts (see the module docstring)."""

    def __init__(self, ui, logic: CalibSegLogic, runner: JobRunner, catalog: ModelCatalog,
                 debounce: Debounce | None = None,
                 ensureDependencies: Callable[[], bool] | None = None,
                 report: Callable[[str], None] | None = None, parameterNode=None) -> None:
        self.ui = ui
        self.logic = logic
        self.runner = runner
        self.catalog = catalog
        self.debounce = debounce or RunNow()
        self.ensureDependencies = ensureDependencies or (lambda: True)
        self.report = report or (lambda message: None)
        self.parameterNode = parameterNode
        self.tasks: list[Task] = []
        self.current: Task | None = None
        self.inputNodeID: str | None = None
        self._slotsRun: list[str] = []  #: slots of the last Apply
        self._taskTotal = 1
        self._refreshing = False
        self.refreshModels()

    # ----------------------------------------------------------------------- model list
    def refreshModels(self, select: dict[str, str] | None = None) -> None:
        """Fill the model selectors from the catalog, keeping (or setting) each selection."""
        wanted = {slot: self.selectedFolder(slot) for slot in SLOTS}
        wanted.update(select or {})
        entries = self.catalog.entries(reread=True)
        self._refreshing = True
        try:
            for slot in SLOTS:
                combo = self._modelCombo(slot)
                combo.clear()
                if slot != "A":
                    combo.addItem(NO_MODEL, "")
                for entry in entries:
                    combo.addItem(entry.label, entry.folder)
                index = combo.findData(wanted[slot]) if wanted[slot] else -1
                combo.currentIndex = index if index >= 0 else 0
        finally:
            self._refreshing = False
        if self.catalog.problems:
            self.ui.statusLabel.text = "Models not listed: " + "; ".join(
                self.catalog.problems.values())
        self.onModelChanged()

    def _modelCombo(self, slot: str):
        return self.ui.modelAComboBox if slot == "A" else self.ui.modelBComboBox

    def selectedFolder(self, slot: str) -> str:
        """The model folder chosen for ``slot`` ("" for none)."""
        combo = self._modelCombo(slot)
        if combo.count == 0 or combo.currentIndex < 0:
            return ""
        return combo.itemData(combo.currentIndex) or ""

    def onModelChanged(self, *_) -> None:
        """Show the chosen models' cards; remember the choice; recompute Apply."""
        if self._refreshing:
            return
        parts = []
        for slot in SLOTS:
            folder = self.selectedFolder(slot)
            if self.parameterNode is not None:
                setattr(self.parameterNode, f"model{slot}", folder)
            entry = self.catalog.find(folder) if folder else None
            if entry is not None:
                parts.append(f"Model {slot}: " + cardText(entry.card))
        self.ui.cardLabel.text = "\n\n".join(parts) or "No model chosen."
        self.updateButtons()

    def addModelFolder(self, folder: str, slot: str = "A") -> None:
        """Add a user's model folder to the list (remembered) and choose it for ``slot``."""
        if not folder:
            return
        added = self.catalog.addFolder(folder)
        self.refreshModels({slot: added[0].folder})
        self.ui.statusLabel.text = f"Added {len(added)} model(s) from {folder}."

    def onModelAFolder(self, path: str = "") -> None:
        self._folderEdited(path or self.ui.modelAPathLineEdit.currentPath, "A")

    def onModelBFolder(self, path: str = "") -> None:
        self._folderEdited(path or self.ui.modelBPathLineEdit.currentPath, "B")

    def _folderEdited(self, path: str, slot: str) -> None:
        """A path field changed (also while typing): add it once it names a model folder."""
        if path and modelFoldersIn(path):
            self.addModelFolder(path, slot)
        elif path:
            self.ui.statusLabel.text = f"No model in {path} yet (a folder with {CARD_FILE})."

    def importModel(self, source: str, slot: str = "A") -> None:
        """Import a MONAI bundle or TorchScript file in the background; list it when done."""
        if not source:
            return
        if self.running:
            raise CalibSegError("A job is running; wait for it or cancel it first.")
        destination = self.catalog.importDestination(source)
        self.tasks = [Task("import", slot, destination,
                           self.runner.importModel(source, destination))]
        self._taskTotal = 1
        self._startNext()

    # ----------------------------------------------------------------------- Apply
    @property
    def running(self) -> bool:
        return self.current is not None

    @property
    def busy(self) -> bool:
        """A job runs, or a temperature change is still being applied to the whole volume:
        keep calling :meth:`poll`."""
        return self.running or self.logic.refreshing

    def canApply(self) -> tuple[bool, str]:
        """Whether Apply can run now, and why not (shown as the button's tooltip)."""
        if self.running:
            return False, "A job is running: wait for it or cancel it."
        if self.ui.inputSelector.currentNode() is None:
            return False, "Choose the input volume to segment."
        if not self.selectedFolder("A"):
            return False, "Choose model A in the list (or add a model folder)."
        return True, "Run the chosen model(s) on the input volume."

    def updateButtons(self) -> None:
        """Enable each button from the current inputs and results."""
        ui, results = self.ui, self.logic.results
        ok, why = self.canApply()
        ui.applyButton.enabled = ok
        ui.applyButton.toolTip = why
        ui.cancelButton.enabled = self.running
        ui.progressBar.visible = self.running
        ui.clearButton.enabled = bool(results) and not self.running
        ui.fitTemperatureButton.enabled = bool(results) and \
            self.logic.referenceLabels is not None
        ui.exportButton.enabled = bool(results)
        ui.showPrototypeButton.enabled = bool(results)
        ui.compareCheckBox.enabled = "B" in results
        ui.temperatureSlider.enabled = self.temperatureSlot() in results

    def onInputChanged(self, *_) -> None:
        self.updateButtons()

    def apply(self, *_) -> bool:
        """Start the chosen models on the input volume (one after the other); False if not."""
        ok, why = self.canApply()
        if not ok:
            raise CalibSegError(why)
        if not self.ensureDependencies():
            self.ui.statusLabel.text = "Dependencies are missing; nothing was run."
            return False
        volume = self.ui.inputSelector.currentNode()
        image, affine = self.logic.inputArray(volume)
        device = self.ui.deviceComboBox.currentText
        self.tasks = []
        for slot in SLOTS:
            folder = self.selectedFolder(slot)
            if folder:
                job = self.runner.inference(folder, device)
                job.writeInput(image, affine)
                self.tasks.append(Task("inference", slot, folder, job))
        self.inputNodeID = volume.GetID()
        self._slotsRun = [t.slot for t in self.tasks]
        self._taskTotal = len(self.tasks)
        self._startNext()
        return True

    def _startNext(self) -> bool:
        if not self.tasks:
            self.current = None
            self.updateButtons()
            return False
        self.current = self.tasks[0]
        self.ui.statusLabel.text = self._describe(self.current) + " ..."
        self.current.job.start()
        self.updateButtons()
        return True

    @staticmethod
    def _describe(task: Task) -> str:
        return f"Model {task.slot}" if task.kind == "inference" else "Import"

    def poll(self) -> bool:
        """Follow the running job and the temperature refresh; show what ended. True while
        either remains."""
        self.pollTemperature()
        task = self.current
        if task is None:
            return self.logic.refreshing
        task.job.poll()
        done = self._taskTotal - len(self.tasks)
        self.ui.progressBar.value = int(100 * (done + task.job.fraction) / self._taskTotal)
        self.ui.statusLabel.text = f"{self._describe(task)}: {task.job.message}"
        if task.job.state == "running":
            return True
        self.tasks.pop(0)
        try:
            if task.job.state != "finished":
                raise CalibSegError(task.job.error or f"{self._describe(task)} failed.")
            if task.kind == "inference":
                volume = self.logic.scene.GetNodeByID(self.inputNodeID)
                self.logic.addPrediction(volume, loadModel(task.folder), task.job.result(),
                                         slot=task.slot)
            else:
                folder = task.job.result()
                self.catalog.addFolder(folder)
                self.refreshModels({task.slot: self.catalog.find(folder).folder})
                self.ui.statusLabel.text = f"Imported model into {folder}."
        except Exception as exc:  # shown to the user; the queue stops
            self._abort(f"{self._describe(task)}: {exc}")
            return False
        finally:
            task.job.cleanup()
        if self._startNext():
            return True
        if task.kind == "inference":
            self._afterInference()
        return self.logic.refreshing

    def _abort(self, message: str) -> None:
        for task in self.tasks:
            task.job.cleanup()
        self.tasks, self.current = [], None
        self.ui.statusLabel.text = message
        self.updateButtons()
        self.report(message)

    def cancel(self, *_) -> None:
        """Stop the running job and drop the queued ones; nothing is added."""
        if self.current is not None:
            self.current.job.cancel()
        for task in self.tasks:
            task.job.cleanup()
        had = self.current is not None
        self.tasks, self.current = [], None
        if had:
            self.ui.statusLabel.text = "Cancelled; nothing was added."
        self.updateButtons()

    def _afterInference(self) -> None:
        """Models not chosen this time leave; reference, slider, layout and metrics follow."""
        for slot in SLOTS:
            if slot not in self._slotsRun:
                self.logic.removeResult(slot)
        status = "Done."
        referenceNode = self.ui.referenceSelector.currentNode()
        if referenceNode is not None:
            try:
                self.logic.setReference(referenceNode, background=None)
            except CalibSegError as exc:
                status = f"Done; the reference was not used: {exc}"
        self.ui.compareCheckBox.checked = False
        self.logic.showLayout(compare=False)
        self.onDisplay()
        self.showTemperature()
        self.showMetrics()
        self.ui.statusLabel.text = status
        self.updateButtons()

    def clear(self, *_) -> None:
        """Remove every result of the case (nodes, chart, tables); the inputs stay."""
        self.cancel()
        self.logic.clear()
        self.ui.metricsLabel.text = ""
        self.ui.statusLabel.text = "Results cleared."
        self.updateButtons()

    # ----------------------------------------------------------------------- temperature
    def temperatureSlot(self) -> str:
        """The model the temperature slider acts on."""
        text = self.ui.temperatureSlotComboBox.currentText
        return text if text in SLOTS else "A"

    def showTemperature(self) -> None:
        """Put the selected model's temperature on the slider (without acting on it)."""
        slot = self.temperatureSlot()
        result = self.logic.results.get(slot)
        if result is None:
            return
        value = self.logic.pendingTemperatures.get(slot, result.temperature)
        slider = self.ui.temperatureSlider
        blocked = slider.blockSignals(True)
        try:
            slider.value = value
        finally:
            slider.blockSignals(blocked)

    def onTemperatureSlot(self, *_) -> None:
        if self.parameterNode is not None:
            self.parameterNode.temperatureSlot = self.temperatureSlot()
        self.showTemperature()
        self.updateButtons()

    def onTemperatureSlider(self, value: float) -> None:
        """Preview the selected model at ``value`` on the visible planes; apply to the
        whole volume, diagram and metrics once the slider pauses (the debouncer). With a
        view oblique to the voxel grid nothing is previewed: the views follow at the pause."""
        slot = self.temperatureSlot()
        if slot not in self.logic.results:
            return
        if self.parameterNode is not None:
            setattr(self.parameterNode, f"temperature{slot}", float(value))
        self.logic.previewTemperature(value, slot)
        self.showMetrics()
        self.debounce.schedule(self.applyPendingTemperature)

    def applyPendingTemperature(self) -> None:
        """The slider paused: the whole volume follows (in the background for large
        volumes: :meth:`poll` shows it when done)."""
        self.logic.applyPendingTemperature()
        self.showMetrics()

    def pollTemperature(self) -> bool:
        """Show a finished whole-volume refresh; True while one is still running."""
        try:
            shown = self.logic.pollRefresh()
        except CalibSegError as exc:
            self.ui.statusLabel.text = str(exc)
            self.report(str(exc))
            shown = []
        if shown:
            self.showMetrics()
        if self.logic.refreshing:
            done = min(job.fraction for job in self.logic.refreshes.values())
            self.ui.temperatureStateLabel.text = (
                f"Showing: {SHOWING[self.logic.showing()]} (whole volume: {100 * done:.0f} %)")
        return self.logic.refreshing

    def fitTemperature(self, *_) -> None:
        self.logic.fitTemperatureToReference()
        self.showTemperature()
        self.showMetrics()

    # ----------------------------------------------------------------------- reference, display
    def onReference(self, node=None) -> None:
        node = node if node is not None else self.ui.referenceSelector.currentNode()
        if node is not None and self.logic.results:
            self.logic.setReference(node, background=None)  # large volumes: estimate first
            self.showMetrics()
        self.updateButtons()

    def showMetrics(self) -> None:
        """Each model's temperature and metrics (an estimate while previewed), and what the
        views show: a preview of the visible slices, or the full volume."""
        lines = []
        for slot, result in self.logic.results.items():
            t = self.logic.pendingTemperatures.get(slot, result.statsTemperature
                                                   if result.statsEstimated else
                                                   result.temperature)
            line = f"{slot} ({result.name}): T={t:.2f}"
            if result.metrics:
                m = result.metrics
                line += (f"  ACE {m['ace']:.4f}  ECE {m['ece']:.4f}  MCE {m['mce']:.4f}")
                if result.statsEstimated:
                    line += "  (estimate from a voxel sample)"
            lines.append(line)
        self.ui.metricsLabel.text = "\n".join(lines)
        self.ui.temperatureStateLabel.text = (
            f"Showing: {SHOWING[self.logic.showing()]}" if self.logic.results else "")

    def onDisplay(self, *_) -> None:
        if not self.logic.results:
            return
        self.logic.showOverlay(self.ui.overlayComboBox.currentText, self.ui.opacitySlider.value)
        self.logic.showPrototypeMap(self.ui.prototypeMapCheckBox.checked)

    def onCompare(self, checked: bool) -> None:
        if not self.logic.results:
            return
        self.logic.showLayout(compare=bool(checked))
        self.onDisplay()

    def showPrototype(self, *_) -> None:
        self.logic.showPrototypeSource(int(self.ui.prototypeSpinBox.value), "A")

    def export(self, *_) -> list[str]:
        written = self.logic.export(self.ui.exportDirectoryButton.directory)
        self.ui.statusLabel.text = f"Wrote {len(written)} files."
        return written

    def probeText(self, ras) -> str:
        """What the models say at RAS point ``ras``, one line per model."""
        lines = []
        for slot, a in self.logic.probe(ras).items():
            line = (f"{slot}: {a['class_name']}  conf {a['confidence']:.2f}  "
                    f"entropy {a['entropy']:.2f}")
            if a["prototypes"]:
                first = a["prototypes"][0]
                line += f"  prototype {first['prototype']}"
                if first["source"].get("case"):
                    line += f" from {first['source']['case']}"
            lines.append(line)
        return "\n".join(lines) or "outside the volume"
