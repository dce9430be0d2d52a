"""The CalibSeg panel in Slicer: loads ``Resources/UI/CalibSeg.ui`` and wires it.

Only Qt glue lives here: the decisions are :class:`~CalibSegSlicer.panel.CalibSegPanel`'s
plain methods, connected by :data:`~CalibSegSlicer.panel.SIGNALS`. A timer polls the
background jobs and the whole-volume temperature refresh; another one waits for the
temperature slider to pause before the whole volume, diagram and metrics are recomputed.
"""

from __future__ import annotations

import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from CalibSegSlicer import installer, locations
from CalibSegSlicer.catalog import ModelCatalog
from CalibSegSlicer.logic import CalibSegLogic
from CalibSegSlicer.panel import SIGNALS, CalibSegPanel
from CalibSegSlicer.parameters import CalibSegParameterNode
from CalibSegSlicer.process import ProcessRunner

POLL_MS = 200
#: Pause of the temperature slider after which the whole volume is recomputed.
TEMPERATURE_PAUSE_MS = 250
#: Panel methods that may take a while on the main thread (shown with a wait cursor).
WAIT_CURSOR = {"apply", "clear", "fitTemperature", "onReference", "export", "showPrototype",
               "onCompare"}


class QtDebounce:
    """Runs the last scheduled callback once no new one came for ``ms`` milliseconds, then
    ``after`` (the widget starts its poll timer there)."""

    def __init__(self, ms: int, after=None) -> None:
        self._after = after
        self._callback = None
        self._timer = qt.QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(ms)
        self._timer.connect("timeout()", self._fire)

    def schedule(self, callback) -> None:
        self._callback = callback
        self._timer.start()

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            with slicer.util.tryWithErrorDisplay("Could not change the temperature."):
                callback()
        if self._after is not None:
            self._after()


class CalibSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Module panel. Slicer passes only ``parent``; a script may pass the logic, the job
    runner and the model list to use instead of the defaults (a logic on the scene, a
    :class:`ProcessRunner`, the shipped models plus Slicer's remembered folders)."""

    def __init__(self, parent=None, logic=None, runner=None, catalog=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._givenLogic, self._runner, self._catalog = logic, runner, catalog
        self.logic = None
        self.panel = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CalibSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self.onPoll)
        self._debounce = QtDebounce(TEMPERATURE_PAUSE_MS, after=self._pollWhileBusy)
        if self._catalog is None:
            self._catalog = ModelCatalog(qt.QSettings(), locations.shippedModelFolders())
        if self._runner is None:
            self._runner = ProcessRunner()
        self._newPanel(self._givenLogic)
        for name, signal, method in SIGNALS:
            getattr(self.ui, name).connect(signal, self._handler(method))
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            self.addObserver(crosshair, slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent,
                             self.onCursor)
        self.initializeParameterNode()

    def _newPanel(self, logic=None):
        self.logic = logic or CalibSegLogic(slicer.mrmlScene)
        self.logic.registerLayouts()
        self.panel = CalibSegPanel(self.ui, self.logic, self._runner, self._catalog,
                                   debounce=self._debounce,
                                   ensureDependencies=installer.ensureDependencies,
                                   report=slicer.util.errorDisplay)

    def _handler(self, method):
        waitCursor = method in WAIT_CURSOR

        def call(*args):
            with slicer.util.tryWithErrorDisplay("CalibSeg: " + method, waitCursor=waitCursor):
                getattr(self.panel, method)(*args)
            self._pollWhileBusy()
        return call

    def _pollWhileBusy(self):
        """Start the poll timer while a job or a temperature refresh is under way."""
        if self.panel is not None and self.panel.busy:
            self._timer.start()

    def onPoll(self):
        if not self.panel.poll():
            self._timer.stop()

    def onImportModel(self, *_):
        """Ask for a model folder (MONAI bundle, nnU-Net results) or a TorchScript file."""
        box = qt.QMessageBox()
        box.setWindowTitle("Import model")
        box.setText("Import a model folder (MONAI bundle, nnU-Net results) or a TorchScript "
                    "file? It is converted in the background and added to the model list.")
        folderButton = box.addButton("Folder...", qt.QMessageBox.AcceptRole)
        fileButton = box.addButton("File...", qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        source = ""
        if box.clickedButton() == folderButton:
            source = qt.QFileDialog.getExistingDirectory(None, "Model folder to import")
        elif box.clickedButton() == fileButton:
            source = qt.QFileDialog.getOpenFileName(
                None, "TorchScript model to import", "", "TorchScript (*.ts *.pt);;All files (*)")
        if source:
            self._handler("importModel")(source, "A")

    def onCursor(self, caller, event):
        if not self.panel or not self.logic.results:
            return
        ras = [0.0, 0.0, 0.0]
        if caller.GetCursorPositionRAS(ras):
            self.ui.probeLabel.text = self.panel.probeText(ras)

    def cleanup(self):
        if self.panel is not None:
            self.panel.cancel()
        self.removeObservers()
        self._disconnectParameterNode()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        self.panel.cancel()
        self._disconnectParameterNode()
        self._parameterNode = None

    def onSceneEndClose(self, caller, event):
        self._newPanel()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        node = CalibSegParameterNode(self.logic.getParameterNode())
        if not node.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                node.inputVolume = first
        self._disconnectParameterNode()
        self._parameterNode = node
        self._parameterNodeGuiTag = node.connectGui(self.ui)
        self.panel.parameterNode = node
        self.panel.refreshModels({"A": node.modelA, "B": node.modelB})

    def _disconnectParameterNode(self):
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
