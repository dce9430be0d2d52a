"""The Qt glue of the panel (CalibSegSlicer/widget.py), run with stand-ins for what only the
Slicer application provides (Qt timers and settings, loadUI, the module widget base class,
the parameter node wrapper); MRML, the logic, the panel and the models are real.

Checks that ``setup()`` connects every signal of :data:`SIGNALS` to the panel, that the
poll timer follows the jobs, that the slider's pause timer applies the temperature, and that
an error in a handler is shown instead of escaping.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types

import pytest

slicer = pytest.importorskip("slicer")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "CalibSeg"))

from CalibSegSlicer import layouts  # noqa: E402
from CalibSegSlicer.catalog import MemorySettings, ModelCatalog  # noqa: E402
from CalibSegSlicer.process import InProcessRunner  # noqa: E402
from logic_support import add_volume, case4, model_folders, new_scene  # noqa: E402
from widget_support import fake_ui  # noqa: E402

pytestmark = pytest.mark.mrml


class QTimer:
    """Records what the widget asks of a timer; ``fire()`` is its timeout."""

    def __init__(self):
        self.active, self.single, self.interval, self.callbacks = False, False, 0, []

    def setInterval(self, ms):
        self.interval = ms

    def setSingleShot(self, single):
        self.single = single

    def connect(self, signal, callback):
        assert signal == "timeout()"
        self.callbacks.append(callback)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):
        if self.single:
            self.active = False
        for callback in self.callbacks:
            callback()


class QSettings:
    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


class ModuleWidget:
    """Slicer's ScriptedLoadableModuleWidget, as far as the widget uses it."""

    def __init__(self, parent=None):
        self.parent = types.SimpleNamespace(isEntered=True)
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

    def setup(self):
        pass

    def resourcePath(self, name):
        return os.path.join(ROOT, "CalibSeg", "Resources", name)


def parameter_wrapper(cls):
    """A stand-in for ``parameterNodeWrapper``: fields with their defaults, connectGui."""
    defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

    class Wrapped:
        def __init__(self, node):
            self.__dict__.update(defaults, node=node)

        def connectGui(self, ui):
            return "gui"

        def disconnectGui(self, tag):
            assert tag == "gui"

    return Wrapped


@pytest.fixture
def glue(monkeypatch):
    """The widget module imported with the stand-ins; the shown errors are collected."""
    scene = new_scene()
    layouts.sliceNode(scene, "Red")
    qt = types.ModuleType("qt")
    qt.QTimer, qt.QSettings = QTimer, QSettings
    QSettings.store = {}
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    base.ScriptedLoadableModuleWidget = ModuleWidget
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameter_wrapper
    wrapper.Choice = wrapper.WithinRange = lambda *args, **kwargs: None
    for name, module in (("qt", qt), (base.__name__, base), (wrapper.__name__, wrapper)):
        monkeypatch.setitem(sys.modules, name, module)
    ui, shown, connections = fake_ui(), [], {}
    for name, widget in vars(ui).items():
        def connect(signal, callback, _name=name):
            connections[(_name, signal)] = callback
        widget.connect = connect

    @contextlib.contextmanager
    def try_with_error_display(message, waitCursor=False):
        try:
            yield
        except Exception as exc:  # what Slicer shows in a dialog
            shown.append(f"{message}: {exc}")

    monkeypatch.setattr(slicer.util, "loadUI", lambda path: types.SimpleNamespace(
        setMRMLScene=lambda scene: None, path=path))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", try_with_error_display)
    monkeypatch.setattr(slicer.util, "errorDisplay", shown.append)
    for name in ("CalibSegSlicer.widget", "CalibSegSlicer.parameters"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    widget_module = importlib.import_module("CalibSegSlicer.widget")
    monkeypatch.setattr(widget_module.installer, "ensureDependencies", lambda: True)
    yield widget_module, scene, ui, connections, shown
    for name in ("CalibSegSlicer.widget", "CalibSegSlicer.parameters"):
        sys.modules.pop(name, None)


def tiny_models() -> ModelCatalog:
    return ModelCatalog(MemorySettings(), list(model_folders()))


def test_setup_connects_every_signal_to_the_panel(glue):
    widget_module, scene, ui, connections, shown = glue
    widget = widget_module.CalibSegWidget()  # as Slicer creates it: every default
    widget.setup()
    expected = {(name, signal) for name, signal, _ in widget_module.SIGNALS}
    assert expected | {("importModelButton", "clicked(bool)")} == set(connections)
    assert isinstance(widget.panel.runner, widget_module.ProcessRunner)
    # The shipped demo models are listed, with the first one's card.
    assert ui.modelAComboBox.count >= 1 and ui.cardLabel.text.startswith("Model A: ")
    assert not ui.applyButton.enabled
    assert widget.panel.parameterNode is not None
    # Choosing a volume reaches the panel through the connected handler.
    case = case4()
    ui.inputSelector.node = add_volume(scene, case.image, case.affine, "patient")
    connections[("inputSelector", "currentNodeChanged(vtkMRMLNode*)")](ui.inputSelector.node)
    assert ui.applyButton.enabled
    assert shown == []


def test_apply_polls_until_done_and_the_slider_waits_for_its_pause(glue):
    widget_module, scene, ui, connections, shown = glue
    widget = widget_module.CalibSegWidget(runner=InProcessRunner(), catalog=tiny_models())
    widget.setup()
    case = case4()
    ui.inputSelector.node = add_volume(scene, case.image, case.affine, "patient")
    connections[("inputSelector", "currentNodeChanged(vtkMRMLNode*)")](ui.inputSelector.node)
    connections[("applyButton", "clicked(bool)")](True)
    assert widget._timer.active and widget._timer.interval == widget_module.POLL_MS
    while widget._timer.active:
        widget._timer.fire()
    assert set(widget.logic.results) == {"A"} and ui.statusLabel.text == "Done.", shown
    start = widget.logic.results["A"].temperature
    slider = connections[("temperatureSlider", "valueChanged(double)")]
    for value in (1.5, 1.8, 2.1):
        slider(value)
    pause = widget._debounce._timer
    assert pause.active and pause.single
    assert widget.logic.results["A"].temperature == pytest.approx(start)
    pause.fire()
    assert widget.logic.results["A"].temperature == pytest.approx(2.1)
    assert not pause.active
    # Clear through its button; an error in a handler is shown, not raised.
    connections[("clearButton", "clicked(bool)")](True)
    assert not widget.logic.results
    connections[("applyButton", "clicked(bool)")](True)  # the volume is still there: runs
    while widget._timer.active:
        widget._timer.fire()
    assert set(widget.logic.results) == {"A"}
    ui.inputSelector.node = None
    connections[("applyButton", "clicked(bool)")](True)
    assert len(shown) == 1 and "input volume" in shown[0]
    assert not widget._timer.active
