"""The panel's temperature slider on a compact (top-k) prediction, headless (fake widgets of
CalibSeg.ui, the real logic on real MRML): the visible slices and an estimated diagram
first ("preview: visible slices"), the whole volume in the background after ("full
volume"), the next slider move cancelling a refresh under way."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "CalibSeg"))

from CalibSegSlicer import display, layouts, temperature  # noqa: E402
from CalibSegSlicer.catalog import MemorySettings, ModelCatalog  # noqa: E402
from CalibSegSlicer.logic import CalibSegLogic  # noqa: E402
from CalibSegSlicer.panel import CalibSegPanel  # noqa: E402
from CalibSegSlicer.process import InProcessRunner  # noqa: E402
from logic_support import add_volume, case4, model_folders, new_scene  # noqa: E402
from widget_support import ManualDebounce, fake_ui  # noqa: E402

from CalibSegLib.inference import apply_temperature, predict  # noqa: E402
from CalibSegLib.models import load_model  # noqa: E402

pytestmark = pytest.mark.mrml


def poll_until_full(panel, timeout=60.0):
    """Poll as the widget's timer does until no refresh remains."""
    deadline = time.monotonic() + timeout
    while panel.poll():
        assert time.monotonic() < deadline, "the whole-volume refresh did not end"
        time.sleep(0.02)


def test_slider_on_a_compact_prediction_previews_then_shows_the_full_volume(monkeypatch):
    scene = new_scene()
    layouts.sliceNode(scene, "Red", "Axial")
    layouts.sliceNode(scene, "Green", "Coronal")
    case = case4()
    ui = fake_ui()
    linear = model_folders()[1]
    catalog = ModelCatalog(MemorySettings(), [linear])
    logic = CalibSegLogic(scene)
    logic.backgroundVoxels = 0  # the 4 mm case behaves as a CT would: refresh in the background
    debounce = ManualDebounce()
    panel = CalibSegPanel(ui, logic, InProcessRunner(form="compact"), catalog,
                          debounce=debounce, report=lambda message: pytest.fail(message))
    ui.inputSelector.node = add_volume(scene, case.image, case.affine, "patient")
    ui.referenceSelector.node = add_volume(scene, case.labels.astype(np.int16), case.affine,
                                           "reference", "vtkMRMLLabelMapVolumeNode")
    panel.apply()
    poll_until_full(panel)  # the run, then the reference's statistics (in the background)
    result = logic.results["A"]
    assert result.prediction.is_compact and not result.statsEstimated
    assert ui.temperatureStateLabel.text == "Showing: full volume"
    compact = predict(case.image, case.affine, load_model(linear), device="cpu", form="compact")
    node = logic.node("A", "confidence")
    before = slicer.util.arrayFromVolume(node).copy()

    # The slider moves: visible slices and an estimated diagram at once.
    panel.onTemperatureSlider(2.2)
    assert ui.temperatureStateLabel.text == "Showing: preview: visible slices"
    assert "T=2.20" in ui.metricsLabel.text and "estimate" in ui.metricsLabel.text
    planes = display.visiblePlanes(scene, logic.inputAffine, logic.inputShape)
    assert sorted(axis for axis, _ in planes) == [0, 1]  # axial and coronal
    at22 = apply_temperature(compact, 2.2)
    shown = slicer.util.arrayFromVolume(node)
    changed = np.zeros(shown.shape, bool)
    for axis, index in planes:
        region = (slice(None),) * axis + (index,)
        np.testing.assert_array_equal(shown[region], at22.confidence[region])
        changed[region] = True
    np.testing.assert_array_equal(shown[~changed], before[~changed])

    # The slider pauses: the whole volume follows in the background (held here until the
    # test lets it go); the label says the preview is shown and how far the volume is.
    entered, release = threading.Event(), threading.Event()
    real = temperature.apply_temperature

    def held(prediction, t, progress=None, cancel=None):
        entered.set()
        assert release.wait(30)
        return real(prediction, t, progress=progress, cancel=cancel)

    monkeypatch.setattr(temperature, "apply_temperature", held)
    debounce.fire()
    assert entered.wait(30) and panel.busy and logic.refreshing
    refresh = logic.refreshes["A"]
    assert panel.poll()  # still running: nothing shown yet
    assert ui.temperatureStateLabel.text == \
        "Showing: preview: visible slices (whole volume: 0 %)"
    # It moves again before the refresh is shown: that refresh is cancelled.
    panel.onTemperatureSlider(0.7)
    release.set()
    assert refresh.wait(30) == "cancelled" and "A" not in logic.refreshes
    assert ui.temperatureStateLabel.text == "Showing: preview: visible slices"
    monkeypatch.setattr(temperature, "apply_temperature", real)
    debounce.fire()
    poll_until_full(panel)
    assert ui.temperatureStateLabel.text == "Showing: full volume"
    assert "estimate" not in ui.metricsLabel.text
    at07 = apply_temperature(compact, 0.7)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), at07.confidence)
    metrics = at07.reliability_stats(case.labels, 20).metrics().to_dict()
    assert f"ECE {metrics['ece']:.4f}" in ui.metricsLabel.text
    assert result.temperature == pytest.approx(0.7)
