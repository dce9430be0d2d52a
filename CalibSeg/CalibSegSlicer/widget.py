"""The CalibSeg panel: wires the widgets of ``Resources/UI/CalibSeg.ui`` to the logic.

No computation lives here. Inference runs in a child process
(:class:`CalibSegProcess.InferenceJob`) polled by a ``qt.QTimer`` on the main
thread; results become MRML nodes through :class:`CalibSegLogic.CalibSegLogic`.
"""

from __future__ import annotations

import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from CalibSegLib.errors import CalibSegError
from CalibSegSlicer import installer
from CalibSegSlicer.logic import SLOTS, CalibSegLogic, loadModel
from CalibSegSlicer.parameters import CalibSegParameterNode
from CalibSegSlicer.process import InferenceJob, loadPrediction

POLL_MS = 200


class CalibSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Module panel."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._jobs: list = []
        self._job = None
        self._timer = None
        self._crosshair = None

    # -- set-up ------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CalibSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CalibSegLogic(slicer.mrmlScene)
        self.logic.registerLayouts()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.modelAPathLineEdit.connect("currentPathChanged(QString)", self.onModelPaths)
        self.ui.modelBPathLineEdit.connect("currentPathChanged(QString)", self.onModelPaths)
        self.ui.temperatureSlider.connect("valueChanged(double)", self.onTemperature)
        self.ui.fitTemperatureButton.connect("clicked(bool)", self.onFitTemperature)
        self.ui.referenceSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onReference)
        self.ui.overlayComboBox.connect("currentIndexChanged(int)", self.onDisplay)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onDisplay)
        self.ui.prototypeMapCheckBox.connect("toggled(bool)", self.onDisplay)
        self.ui.compareCheckBox.connect("toggled(bool)", self.onCompare)
        self.ui.showPrototypeButton.connect("clicked(bool)", self.onShowPrototype)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._observeCrosshair()
        self.initializeParameterNode()

    def cleanup(self):
        self.onCancel()
        self.removeObservers()
        self._disconnectParameterNode()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        self.onCancel()
        self._disconnectParameterNode()
        self._parameterNode = None

    def onSceneEndClose(self, caller, event):
        self.logic = CalibSegLogic(slicer.mrmlScene)
        self.logic.registerLayouts()
        if self.parent.isEntered:
            self.initializeParameterNode()
        self._updateButtons()

    # -- parameter node ----------------------------------------------------------------------
    def initializeParameterNode(self):
        node = CalibSegParameterNode(self.logic.getParameterNode())
        if not node.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                node.inputVolume = first
        self._disconnectParameterNode()
        self._parameterNode = node
        self._parameterNodeGuiTag = node.connectGui(self.ui)
        self.ui.modelAPathLineEdit.currentPath = node.modelA
        self.ui.modelBPathLineEdit.currentPath = node.modelB
        self._updateButtons()

    def _disconnectParameterNode(self):
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onModelPaths(self, _path=None):
        if self._parameterNode is not None:
            self._parameterNode.modelA = self.ui.modelAPathLineEdit.currentPath
            self._parameterNode.modelB = self.ui.modelBPathLineEdit.currentPath
        self._updateButtons()

    def _updateButtons(self):
        running = self._job is not None
        haveResults = bool(self.logic and self.logic.results)
        self.ui.applyButton.enabled = (not running and bool(self.ui.inputSelector.currentNode())
                                       and bool(self.ui.modelAPathLineEdit.currentPath))
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.visible = running
        self.ui.fitTemperatureButton.enabled = haveResults and \
            self.logic.referenceLabels is not None
        self.ui.exportButton.enabled = haveResults
        self.ui.showPrototypeButton.enabled = haveResults
        self.ui.compareCheckBox.enabled = bool(self.logic and "B" in self.logic.results)

    # -- inference ---------------------------------------------------------------------------
    def onApply(self):
        with slicer.util.tryWithErrorDisplay("CalibSeg could not start.", waitCursor=True):
            if not installer.ensureDependencies():
                self.ui.statusLabel.text = "Dependencies are missing; nothing was run."
                return
            volume = self.ui.inputSelector.currentNode()
            folders = [p for p in (self.ui.modelAPathLineEdit.currentPath,
                                   self.ui.modelBPathLineEdit.currentPath) if p]
            if not folders:
                raise CalibSegError("No model selected: choose a model folder.")
            image, affine = self.logic.inputArray(volume)
            device = self.ui.deviceComboBox.currentText
            self._jobs = []
            for slot, folder in zip(SLOTS, folders):
                job = InferenceJob(folder, device)
                job.writeInput(image, affine)
                self._jobs.append((slot, folder, job))
            self._inputID = volume.GetID()
            self._jobTotal = len(self._jobs)
            self._startNext()

    def _startNext(self):
        if not self._jobs:
            self._job = None
            self._timer.stop()
            self._afterInference()
            return
        slot, folder, job = self._jobs[0]
        self._job = (slot, folder, job)
        job.start()
        self.ui.statusLabel.text = f"Running model {slot} ..."
        self._timer.start()
        self._updateButtons()

    def onPoll(self):
        if self._job is None:
            self._timer.stop()
            return
        slot, folder, job = self._job
        job.poll()
        total = max(getattr(self, "_jobTotal", 1), 1)
        done = total - len(self._jobs)
        self.ui.progressBar.value = int(100 * (done + job.fraction) / total)
        self.ui.statusLabel.text = f"Model {slot}: {job.message}"
        if job.state == "running":
            return
        self._jobs.pop(0)
        try:
            if job.state != "finished":
                raise CalibSegError(job.error or f"Model {slot} failed.")
            with slicer.util.WaitCursor():
                prediction = loadPrediction(job.outputPath)
                model = loadModel(folder)
                volume = slicer.mrmlScene.GetNodeByID(self._inputID)
                self.logic.addPrediction(volume, model, prediction, slot=slot, folder=folder)
        except Exception as exc:  # shown to the user; nothing half-made stays in the scene
            self._abort(f"Model {slot}: {exc}")
            return
        finally:
            job.cleanup()
        self._startNext()

    def _abort(self, message):
        for _, _, job in self._jobs:
            job.cleanup()
        self._jobs = []
        self._job = None
        self._timer.stop()
        self.ui.statusLabel.text = message
        self._updateButtons()
        slicer.util.errorDisplay(message)

    def onCancel(self):
        if self._job is not None:
            self._job[2].cancel()
        for _, _, job in self._jobs:
            job.cleanup()
        self._jobs = []
        self._job = None
        if self._timer is not None:
            self._timer.stop()
        if hasattr(self, "ui"):
            self.ui.statusLabel.text = "Cancelled; nothing was added."
            self._updateButtons()

    def _afterInference(self):
        with slicer.util.tryWithErrorDisplay("Could not finish.", waitCursor=True):
            reference = self.ui.referenceSelector.currentNode()
            if reference is not None:
                self.logic.setReference(reference)
            self.ui.temperatureSlider.blockSignals(True)
            self.ui.temperatureSlider.value = self.logic.results["A"].temperature
            self.ui.temperatureSlider.blockSignals(False)
            self.logic.showLayout(compare=False)
            self.onDisplay()
            self._showMetrics()
            self.ui.statusLabel.text = "Done."
        self._updateButtons()

    # -- calibration and display -------------------------------------------------------------
    def onTemperature(self, value):
        if self.logic.results:
            with slicer.util.tryWithErrorDisplay("Could not change the temperature."):
                self.logic.setTemperature(value)
                self._showMetrics()

    def onFitTemperature(self):
        with slicer.util.tryWithErrorDisplay("Could not fit the temperature.", waitCursor=True):
            fitted = self.logic.fitTemperatureToReference()
            self.ui.temperatureSlider.blockSignals(True)
            self.ui.temperatureSlider.value = fitted.get("A", self.ui.temperatureSlider.value)
            self.ui.temperatureSlider.blockSignals(False)
            self._showMetrics()

    def onReference(self, node):
        if node is not None and self.logic.results:
            with slicer.util.tryWithErrorDisplay("Could not use this reference.", waitCursor=True):
                self.logic.setReference(node)
                self._showMetrics()
        self._updateButtons()

    def _showMetrics(self):
        lines = []
        for slot, result in self.logic.results.items():
            if result.metrics:
                m = result.metrics
                lines.append(f"{slot} ({result.name}, T={result.temperature:.2f}): "
                             f"ACE {m.get('ace', float('nan')):.4f}  "
                             f"ECE {m.get('ece', float('nan')):.4f}  "
                             f"MCE {m.get('mce', float('nan')):.4f}")
        self.ui.metricsLabel.text = "\n".join(lines)

    def onDisplay(self, *_):
        if not self.logic.results:
            return
        self.logic.showOverlay(self.ui.overlayComboBox.currentText, self.ui.opacitySlider.value)
        self.logic.showPrototypeMap(self.ui.prototypeMapCheckBox.checked)

    def onCompare(self, checked):
        with slicer.util.tryWithErrorDisplay("Could not switch the comparison."):
            self.logic.showLayout(compare=checked)
            self.onDisplay()

    def onShowPrototype(self):
        with slicer.util.tryWithErrorDisplay("Could not show the prototype source.",
                                             waitCursor=True):
            self.logic.showPrototypeSource(self.ui.prototypeSpinBox.value, "A",
                                           folder=self.ui.modelAPathLineEdit.currentPath)

    def onExport(self):
        with slicer.util.tryWithErrorDisplay("Could not export.", waitCursor=True):
            written = self.logic.export(self.ui.exportDirectoryButton.directory)
            self.ui.statusLabel.text = f"Wrote {len(written)} files."

    # -- probe -------------------------------------------------------------------------------
    def _observeCrosshair(self):
        self._crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if self._crosshair is not None:
            event = slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent
            self.addObserver(self._crosshair, event, self.onCursor)

    def onCursor(self, caller, event):
        if not self.logic or not self.logic.results:
            return
        ras = [0.0, 0.0, 0.0]
        if not caller.GetCursorPositionRAS(ras):
            return
        answers = self.logic.probe(ras)
        lines = []
        for slot, a in answers.items():
            line = (f"{slot}: {a['class_name']}  conf {a['confidence']:.2f}  "
                    f"entropy {a['entropy']:.2f}")
            if a["prototypes"]:
                p = a["prototypes"][0]
                source = p["source"]
                line += f"  prototype {p['prototype']}"
                if source.get("case"):
                    line += f" from {source['case']}"
            lines.append(line)
        self.ui.probeLabel.text = "\n".join(lines) or "outside the volume"
