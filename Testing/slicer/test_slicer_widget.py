"""The panel's decisions, headless: a fake of every widget of CalibSeg.ui, the real
logic on real MRML (slicer-core), real models run in this process."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "CalibSeg"))

from CalibSegSlicer import display, layouts  # noqa: E402
from CalibSegSlicer.catalog import (  # noqa: E402
    FOLDERS_KEY,
    IMPORT_FOLDER_KEY,
    MemorySettings,
    ModelCatalog,
)
from CalibSegSlicer.logic import CalibSegLogic  # noqa: E402
from CalibSegSlicer.panel import NO_MODEL, SIGNALS, CalibSegPanel  # noqa: E402
from CalibSegSlicer.process import InProcessRunner  # noqa: E402
from logic_support import add_volume, case4, model_folders, new_scene  # noqa: E402
from widget_support import (  # noqa: E402
    UI_FILE,
    ManualDebounce,
    count_by_class,
    fake_ui,
    model_with_temperature,
    run_until_idle,
)

from CalibSegLib.errors import CalibSegError  # noqa: E402
from CalibSegLib.inference import apply_temperature, predict  # noqa: E402
from CalibSegLib.models import load_model  # noqa: E402

pytestmark = pytest.mark.mrml


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A shipped folder with two models of different fitted temperatures, and a user folder."""
    proto, linear = model_folders()
    root = tmp_path_factory.mktemp("models")
    shipped = root / "shipped"
    shipped.mkdir()
    a = model_with_temperature(proto, str(shipped / "proto"), "Proto demo", 1.3,
                               intended_use="Demonstration on the MNI template.",
                               limitations="Untrained; not for diagnosis.",
                               training={"loss": "DiceCE + mL1-ACE"})
    b = model_with_temperature(linear, str(shipped / "linear"), "Linear demo", 0.8)
    user = root / "user"
    user.mkdir()
    c = model_with_temperature(linear, str(user / "mine"), "My model", 1.0)
    return {"shipped": [a, b], "user": str(user), "mine": c, "root": str(root)}


@pytest.fixture
def scene():
    scene = new_scene()
    layouts.sliceNode(scene, "Red")
    return scene


def make_panel(scene, folders, settings=None, debounce=None):
    ui = fake_ui()
    catalog = ModelCatalog(settings or MemorySettings(), folders["shipped"])
    logic = CalibSegLogic(scene)
    panel = CalibSegPanel(ui, logic, InProcessRunner(), catalog, debounce=debounce,
                          report=lambda message: pytest.fail(message))
    return panel, ui


def choose(ui, slot, name):
    combo = ui.modelAComboBox if slot == "A" else ui.modelBComboBox
    index = next(i for i, (text, _) in enumerate(combo.items) if text.startswith(name))
    combo.currentIndex = index


# ---------------------------------------------------------------------------- wiring
def test_every_signal_names_a_ui_widget_and_a_panel_method():
    widgets = {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).iter("widget")}
    signal_of = {"qMRMLNodeComboBox": "currentNodeChanged(vtkMRMLNode*)",
                 "QComboBox": "currentIndexChanged(int)", "QCheckBox": "toggled(bool)",
                 "ctkPathLineEdit": "currentPathChanged(QString)",
                 "QPushButton": "clicked(bool)", "ctkSliderWidget": "valueChanged(double)"}
    for name, signal, method in SIGNALS:
        assert name in widgets, name
        assert signal == signal_of[widgets[name]], (name, signal)
        assert callable(getattr(CalibSegPanel, method, None)), method
    inputs = {name: method for name, _, method in SIGNALS}
    # Every input of Apply is connected (the template's _checkCanApply pattern).
    for name in ("inputSelector", "modelAComboBox", "modelBComboBox"):
        assert name in inputs, name
    assert widgets["modelAComboBox"] == "QComboBox" and widgets["clearButton"] == "QPushButton"


# ---------------------------------------------------------------------------- Apply
def test_apply_is_enabled_from_every_input_in_any_order(scene, folders):
    case = case4()
    panel, ui = make_panel(scene, folders)
    handler = {name: getattr(panel, method) for name, _, method in SIGNALS}
    # Model chosen before the volume: Apply waits for the volume, then enables.
    choose(ui, "A", "Proto demo")
    handler["modelAComboBox"](ui.modelAComboBox.currentIndex)
    assert not ui.applyButton.enabled and "input volume" in ui.applyButton.toolTip
    ui.inputSelector.node = add_volume(scene, case.image, case.affine, "patient")
    handler["inputSelector"](ui.inputSelector.node)
    assert ui.applyButton.enabled
    # Volume removed from the selector: disabled again.
    ui.inputSelector.node = None
    handler["inputSelector"](None)
    assert not ui.applyButton.enabled
    # Volume first, with an empty model list; a folder added afterwards enables Apply.
    empty, ui2 = make_panel(scene, {"shipped": []})
    ui2.inputSelector.node = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    empty.onInputChanged(ui2.inputSelector.node)
    assert not ui2.applyButton.enabled and "model A" in ui2.applyButton.toolTip
    empty.onModelAFolder(folders["mine"])
    assert ui2.applyButton.enabled
    with pytest.raises(CalibSegError, match="input volume"):
        panel.apply()


def test_model_list_cards_and_remembered_folders(scene, folders):
    settings = MemorySettings()
    panel, ui = make_panel(scene, folders, settings)
    assert [t for t, _ in ui.modelAComboBox.items] == ["Proto demo 0.1", "Linear demo 0.1"]
    assert ui.modelBComboBox.items[0] == (NO_MODEL, "")
    choose(ui, "A", "Proto demo")
    panel.onModelChanged()
    card = ui.cardLabel.text
    for text in ("Proto demo", "background", "Training loss: DiceCE + mL1-ACE",
                 "Temperature (fitted): 1.3", "Network output: logits",
                 "Intended use: Demonstration on the MNI template.",
                 "Limitations: Untrained; not for diagnosis.", "prototype"):
        assert text in card, text
    # A user's folder of models is added, chosen, and remembered in the settings.
    panel.onModelBFolder(folders["user"])
    assert ui.modelBComboBox.currentText.startswith("My model")
    assert panel.selectedFolder("B") == folders["mine"]
    assert "Model B: My model" in ui.cardLabel.text
    assert folders["user"] in settings.value(FOLDERS_KEY)
    again, ui2 = make_panel(scene, folders, settings)
    assert any(t.startswith("My model") for t, _ in ui2.modelAComboBox.items)
    # A folder without a model is refused and not remembered; a path being typed is not an
    # error until it names a model folder.
    before = settings.value(FOLDERS_KEY)
    with pytest.raises(CalibSegError, match="holds no model"):
        panel.addModelFolder(folders["root"] + "/nothing-here")
    panel.onModelAFolder(folders["root"] + "/us")
    assert ui.statusLabel.text.startswith("No model in")
    assert settings.value(FOLDERS_KEY) == before
    assert panel.selectedFolder("A") == folders["shipped"][0]


# ---------------------------------------------------------------------------- slots and Clear
def test_which_slot_replacing_and_what_clear_removes(scene, folders):
    case = case4()
    volume = add_volume(scene, case.image, case.affine, "patient")
    panel, ui = make_panel(scene, folders)
    before = count_by_class(scene)
    ui.inputSelector.node = volume
    choose(ui, "A", "Proto demo")
    choose(ui, "B", "Linear demo")
    panel.onModelChanged()
    assert panel.apply()
    run_until_idle(panel)
    assert set(panel.logic.results) == {"A", "B"}
    assert panel.logic.results["A"].name == "Proto demo"
    assert panel.logic.results["B"].name == "Linear demo"
    assert ui.clearButton.enabled and ui.compareCheckBox.enabled
    with_two = count_by_class(scene)
    old_a = dict(panel.logic.results["A"].nodeIDs)
    # Only A this time: A is replaced, B leaves.
    ui.modelBComboBox.currentIndex = 0
    panel.onModelChanged()
    panel.apply()
    run_until_idle(panel)
    assert set(panel.logic.results) == {"A"}
    assert not set(old_a.values()) & set(panel.logic.results["A"].nodeIDs.values())
    with_one = count_by_class(scene)
    assert with_one["vtkMRMLSegmentationNode"] == with_two["vtkMRMLSegmentationNode"] - 1
    assert not ui.compareCheckBox.enabled
    # Clear: everything the results made leaves; shared colour tables and views may stay.
    panel.clear()
    after = count_by_class(scene)
    allowed = {"vtkMRMLColorTableNode", "vtkMRMLLayoutNode", "vtkMRMLPlotViewNode",
               "vtkMRMLSliceNode", "vtkMRMLSliceCompositeNode"}
    for cls in set(after) | set(before):
        if cls not in allowed:
            assert after.get(cls, 0) == before.get(cls, 0), cls
    assert not panel.logic.results and not ui.clearButton.enabled
    assert scene.GetNodeByID(volume.GetID()) is volume


# ---------------------------------------------------------------------------- temperature
def test_one_temperature_per_model_and_a_slider_that_previews(scene, folders):
    case = case4()
    volume = add_volume(scene, case.image, case.affine, "patient")
    reference = add_volume(scene, case.labels.astype(np.int16), case.affine, "reference",
                           "vtkMRMLLabelMapVolumeNode")
    debounce = ManualDebounce()
    panel, ui = make_panel(scene, folders, debounce=debounce)
    ui.inputSelector.node, ui.referenceSelector.node = volume, reference
    choose(ui, "A", "Proto demo")
    choose(ui, "B", "Linear demo")
    panel.apply()
    run_until_idle(panel)
    logic = panel.logic
    # Each model starts at its card's fitted temperature; the slider shows A's.
    assert logic.results["A"].temperature == pytest.approx(1.3)
    assert logic.results["B"].temperature == pytest.approx(0.8)
    assert ui.temperatureSlider.value == pytest.approx(1.3)
    b_confidence = slicer.util.arrayFromVolume(logic.node("B", "confidence")).copy()
    b_metrics = dict(logic.results["B"].metrics)

    # The slider moves (A): only the planes the views show change, at once.
    before = slicer.util.arrayFromVolume(logic.node("A", "confidence")).copy()
    panel.onTemperatureSlider(2.0)
    panel.onTemperatureSlider(2.5)
    assert debounce.scheduled == 2 and logic.results["A"].temperature == pytest.approx(1.3)
    shown = slicer.util.arrayFromVolume(logic.node("A", "confidence"))
    [(axis, index)] = display.visiblePlanes(scene, logic.inputAffine, logic.inputShape)
    model = load_model(folders["shipped"][0])
    expected = apply_temperature(predict(case.image, case.affine, model, device="cpu"), 2.5)
    np.testing.assert_allclose(np.take(shown, index, axis), np.take(expected.confidence, index,
                                                                     axis), rtol=1e-5, atol=1e-6)
    untouched = np.ones(shown.shape, bool)
    untouched[(slice(None),) * axis + (index,)] = False
    np.testing.assert_array_equal(shown[untouched], before[untouched])
    # The slider pauses: the whole volume, the diagram and the metrics follow.
    debounce.fire()
    assert logic.results["A"].temperature == pytest.approx(2.5)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(logic.node("A", "confidence")),
                               expected.confidence, rtol=1e-5, atol=1e-6)
    assert "A (Proto demo): T=2.50" in ui.metricsLabel.text
    # B kept its own temperature, maps and metrics.
    assert logic.results["B"].temperature == pytest.approx(0.8)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(logic.node("B", "confidence")),
                                  b_confidence)
    assert logic.results["B"].metrics == b_metrics
    # Choosing B puts B's temperature on the slider; moving it acts on B only.
    ui.temperatureSlotComboBox.select("B")
    panel.onTemperatureSlot()
    assert ui.temperatureSlider.value == pytest.approx(0.8)
    panel.onTemperatureSlider(1.6)
    debounce.fire()
    assert logic.results["B"].temperature == pytest.approx(1.6)
    assert logic.results["A"].temperature == pytest.approx(2.5)
    ui.temperatureSlotComboBox.select("A")
    panel.onTemperatureSlot()
    assert ui.temperatureSlider.value == pytest.approx(2.5)


# ---------------------------------------------------------------------------- overlays
def test_contribution_overlay_shows_a_map(scene, folders):
    case = case4()
    volume = add_volume(scene, case.image, case.affine, "patient")
    panel, ui = make_panel(scene, folders)
    ui.inputSelector.node = volume
    choose(ui, "A", "Proto demo")
    panel.apply()
    run_until_idle(panel)
    ui.overlayComboBox.select("contribution")
    panel.onDisplay()
    red = layouts.compositeNode(scene, "Red")
    node = panel.logic.node("A", "contribution")
    assert node is not None and red.GetForegroundVolumeID() == node.GetID()
    values = slicer.util.arrayFromVolume(node)
    assert np.isfinite(values).all() and values.std() > 0
    # A linear model has no contribution: one clear error, the views keep their overlay.
    choose(ui, "A", "Linear demo")
    ui.overlayComboBox.select("confidence")
    panel.apply()
    run_until_idle(panel)
    ui.overlayComboBox.select("contribution")
    with pytest.raises(CalibSegError, match="prototype model"):
        panel.onDisplay()
    assert red.GetForegroundVolumeID() == panel.logic.node("A", "confidence").GetID()


# ---------------------------------------------------------------------------- import
def tiny_torchscript(path) -> str:
    """A TorchScript file of a 3-class 1x1x1 convolution (what a user may have)."""
    import torch

    torch.manual_seed(0)
    traced = torch.jit.trace(torch.nn.Conv3d(1, 3, 1), torch.zeros(1, 1, 8, 8, 8))
    traced.save(str(path))
    return str(path)


def test_import_model_joins_the_list_and_is_chosen(scene, folders, tmp_path):
    source = tiny_torchscript(tmp_path / "tiny.ts")
    settings = MemorySettings({IMPORT_FOLDER_KEY: str(tmp_path / "imported")})
    panel, ui = make_panel(scene, folders, settings)
    panel.importModel(source, "B")
    run_until_idle(panel)
    destination = str(tmp_path / "imported" / "tiny")
    assert os.path.isfile(os.path.join(destination, "model.json"))
    assert panel.selectedFolder("B") == destination
    assert ui.modelBComboBox.currentText.startswith("tiny")
    assert "Model B: tiny" in ui.cardLabel.text and "background" in ui.cardLabel.text
    assert "Imported; review before use:" in ui.cardLabel.text  # the importer's guesses
    assert destination in settings.value(FOLDERS_KEY)
    assert ui.statusLabel.text == f"Imported model into {destination}."
    # A second import of the same file gets a new folder; a bad file gives one clear error.
    assert panel.catalog.importDestination(source) == destination + "-2"
    reports = []
    panel.report = reports.append
    bad = tmp_path / "not-a-model.ts"
    bad.write_text("hello")
    panel.importModel(str(bad), "A")
    run_until_idle(panel)
    assert len(reports) == 1 and reports[0].startswith("Import: ")
    assert not os.path.exists(str(tmp_path / "imported" / "not-a-model"))
