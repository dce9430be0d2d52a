"""A compact (top-k) prediction shown by CalibSegLogic on real MRML (slicer-core): a
temperature change previews the visible planes and an estimated diagram first, the whole
volume follows in a worker thread (a newer change cancels it), and the probe, export,
fit and comparison read the compact form."""

from __future__ import annotations

import functools
import os
import sys
import threading

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "CalibSeg"))

from CalibSegSlicer import arrays, display, layouts, plots  # noqa: E402
from CalibSegSlicer import temperature as temperature_module  # noqa: E402
from CalibSegSlicer.logic import CalibSegLogic  # noqa: E402
from logic_support import add_volume, case4, model_folders, new_scene  # noqa: E402

from CalibSegLib.calibration import ReliabilityStats  # noqa: E402
from CalibSegLib.inference import apply_temperature, predict  # noqa: E402

pytestmark = pytest.mark.mrml
METRICS = ("ace", "ece", "mce", "marginal_ace", "marginal_ece", "marginal_mce", "nll", "brier")


def metric_dict(stats) -> dict:
    return stats.metrics().to_dict()


@functools.cache
def predictions():
    """``(model, compact prediction, full prediction)`` of the linear model on the 4 mm case."""
    from CalibSegLib.models import load_model

    case = case4()
    model = load_model(model_folders()[1])
    compact = predict(case.image, case.affine, model, device="cpu", form="compact")
    full = predict(case.image, case.affine, model, device="cpu", form="full")
    return model, compact, full


@pytest.fixture
def shown():
    """Scene with axial (Red) and sagittal (Yellow) views, the compact result in slot A and
    the reference; the whole-volume refresh always runs in the background."""
    scene = new_scene()
    case = case4()
    volume = add_volume(scene, case.image, case.affine, "mni-t1")
    layouts.sliceNode(scene, "Red", "Axial")
    layouts.sliceNode(scene, "Yellow", "Sagittal")
    logic = CalibSegLogic(scene)
    logic.backgroundVoxels = 0
    model, compact, _ = predictions()
    assert compact.is_compact and compact.probs is None
    logic.addPrediction(volume, model, compact, slot="A")
    reference = add_volume(scene, case.labels.astype(np.int16), case.affine, "reference",
                           "vtkMRMLLabelMapVolumeNode")
    logic.setReference(reference)
    return scene, volume, logic


def node_array(logic, key, slot="A"):
    return slicer.util.arrayFromVolume(logic.node(slot, key))


class Gate:
    """Holds the worker thread's ``apply_temperature`` until :meth:`open` (the real call,
    with the refresh's own ``cancel``, runs after)."""

    def __init__(self, monkeypatch):
        self.entered = threading.Event()
        self.released = threading.Event()
        real = temperature_module.apply_temperature

        def gated(prediction, t, progress=None, cancel=None):
            self.entered.set()
            assert self.released.wait(30)
            return real(prediction, t, progress=progress, cancel=cancel)

        monkeypatch.setattr(temperature_module, "apply_temperature", gated)

    def open(self):
        self.released.set()


def test_change_previews_the_visible_planes_then_the_whole_volume(shown, monkeypatch):
    scene, _, logic = shown
    _, compact, full = predictions()
    case = case4()
    gate = Gate(monkeypatch)
    before = node_array(logic, "confidence").copy()

    planes = logic.previewTemperature(2.0, "A")
    assert planes == display.visiblePlanes(scene, logic.inputAffine, logic.inputShape)
    assert sorted(axis for axis, _ in planes) == [0, 2]  # axial and sagittal
    at2 = apply_temperature(compact, 2.0)
    shownConfidence = node_array(logic, "confidence")
    untouched = np.ones(before.shape, bool)
    for axis, index in planes:
        region = (slice(None),) * axis + (index,)
        np.testing.assert_array_equal(shownConfidence[region], at2.confidence[region])
        np.testing.assert_array_equal(node_array(logic, "entropy")[region], at2.entropy[region])
        untouched[region] = False
    np.testing.assert_array_equal(shownConfidence[untouched], before[untouched])
    # The diagram and table: an estimate from the voxel sample, labelled so.
    result = logic.results["A"]
    assert logic.showing("A") == "preview" and result.statsEstimated
    assert result.temperature == pytest.approx(compact.temperature)  # not applied yet
    chart = scene.GetNodeByID(logic.chartNodeID)
    assert "estimate" in chart.GetTitle()
    region = temperature_module.sampleRegion(logic.inputShape)
    sample = np.zeros(case.labels.shape, bool)
    sample[region] = True
    assert 0 < sample.sum() <= temperature_module.SAMPLE_VOXELS
    import torch

    from CalibSegLib.inference import probability_maps

    probs = probability_maps(torch.from_numpy(np.ascontiguousarray(
        full.logits[(slice(None), *region)])), 2.0)[0].numpy()
    independent = metric_dict(ReliabilityStats.from_probs(probs, case.labels[region]))
    for key in METRICS:  # the top-k form of 3 classes: only float16 rounding of the gaps;
        # MCE can jump where a few of the sample's voxels decide a sparse bin
        assert result.metrics[key] == pytest.approx(
            independent[key], abs=1e-2 if key.endswith("mce") else 1e-3), key
    table = plots.readMetricsTable(scene.GetNodeByID(logic.metricsTableID))
    assert table[logic.columnName("A")]["temperature"] == pytest.approx(2.0)

    # The slider pauses: the whole volume starts in the background ...
    assert logic.applyPendingTemperature() == ["A"]
    first = logic.refreshes["A"]
    assert gate.entered.wait(30) and logic.refreshing and first.state == "running"
    assert logic.pollRefresh() == [] and logic.showing("A") == "preview"
    # ... and a second change cancels it before it shows anything.
    logic.previewTemperature(3.0, "A")
    assert "A" not in logic.refreshes
    assert logic.applyPendingTemperature() == ["A"]
    second = logic.refreshes["A"]
    gate.open()
    assert first.wait(30) == "cancelled" and first.current is None
    assert second.wait(30) == "finished"
    assert logic.pollRefresh() == ["A"]
    assert not logic.refreshing and logic.showing("A") == "full"

    # The end: every number is the whole volume's at T = 3.
    at3 = apply_temperature(compact, 3.0)
    assert result.temperature == pytest.approx(3.0) and not result.statsEstimated
    np.testing.assert_array_equal(node_array(logic, "confidence"), at3.confidence)
    np.testing.assert_array_equal(node_array(logic, "entropy"), at3.entropy)
    exact = metric_dict(at3.reliability_stats(case.labels, 20))
    fullAt3 = metric_dict(apply_temperature(full, 3.0).reliability_stats(case.labels, 20))
    for key in METRICS:
        assert result.metrics[key] == pytest.approx(exact[key], rel=1e-12, abs=1e-12), key
        assert result.metrics[key] == pytest.approx(fullAt3[key], abs=1e-3), key
    assert "estimate" not in scene.GetNodeByID(logic.chartNodeID).GetTitle()
    table = plots.readMetricsTable(scene.GetNodeByID(logic.metricsTableID))
    assert table[logic.columnName("A")]["ECE"] == pytest.approx(exact["ece"])
    assert table[logic.columnName("A")]["temperature"] == pytest.approx(3.0)


def test_small_volumes_refresh_before_returning(shown):
    _, _, logic = shown
    _, compact, _ = predictions()
    logic.backgroundVoxels = 10 ** 9
    logic.previewTemperature(1.7, "A")
    assert logic.applyPendingTemperature() == ["A"]
    assert not logic.refreshing and logic.showing() == "full"
    np.testing.assert_array_equal(node_array(logic, "confidence"),
                                  apply_temperature(compact, 1.7).confidence)


def test_probe_export_fit_and_comparison_read_the_compact_form(shown, tmp_path):
    scene, volume, logic = shown
    model, compact, full = predictions()
    case = case4()
    logic.setTemperature(1.5, "A")
    at = apply_temperature(full, 1.5)
    zyx = (12, 30, 25)
    answer = logic.probe(arrays.indexToRas(case.affine, zyx))["A"]
    probs = [answer["probabilities"][n] for n in model.class_names]
    np.testing.assert_allclose(probs, at.probs[(slice(None), *zyx)], atol=1e-3)
    assert answer["class_index"] == int(full.labels[zyx])
    assert answer["confidence"] == pytest.approx(float(at.confidence[zyx]), abs=1e-3)
    # Export: the maps shown, at the temperature shown.
    from CalibSegLib.io import read_image

    written = logic.export(str(tmp_path))
    confidence = read_image(next(p for p in written if p.endswith("-confidence.nii.gz")))[0]
    np.testing.assert_array_equal(confidence, node_array(logic, "confidence"))
    labels = read_image(next(p for p in written if p.endswith("-labels.nii.gz")))[0]
    np.testing.assert_array_equal(labels, full.labels)
    # Fit: the grid NLL of the top-k form gives the full form's temperature.
    from CalibSegLib.calibration import fit_temperature

    fitted = logic.fitTemperatureToReference("A")["A"]
    assert fitted == pytest.approx(fit_temperature(full.logits, case.labels.astype(np.int64)),
                                   rel=1e-2)
    assert logic.results["A"].temperature == pytest.approx(fitted)
    # A/B: the full-form prediction beside the compact one.
    logic.addPrediction(volume, model, full, slot="B")
    assert logic.showLayout(compare=True) == layouts.LAYOUT_COMPARE
    assert layouts.compositeNode(scene, layouts.COMPARE_VIEW).GetForegroundVolumeID() == \
        logic.results["B"].nodeIDs["confidence"]


def test_a_reference_on_a_large_volume_is_estimated_first_then_exact(monkeypatch):
    scene = new_scene()
    case = case4()
    volume = add_volume(scene, case.image, case.affine, "mni-t1")
    layouts.sliceNode(scene, "Red", "Axial")
    logic = CalibSegLogic(scene)
    logic.backgroundVoxels = 0
    model, compact, _ = predictions()
    logic.addPrediction(volume, model, compact, slot="A")
    reference = add_volume(scene, case.labels.astype(np.int16), case.affine, "reference",
                           "vtkMRMLLabelMapVolumeNode")
    maps = node_array(logic, "confidence").copy()
    held = []  # the worker threads start when the test says so
    realStart = temperature_module.VolumeRefresh.start

    def hold(job):
        job.state = "running"
        held.append(job)
        return job

    monkeypatch.setattr(temperature_module.VolumeRefresh, "start", hold)
    estimate = logic.setReference(reference, background=None)["A"]
    result = logic.results["A"]
    assert result.statsEstimated and "estimate" in scene.GetNodeByID(logic.chartNodeID).GetTitle()
    assert logic.refreshing and logic.pollRefresh() == []
    assert [job.slot for job in held] == ["A"]
    realStart(held[0])
    assert logic.waitForRefresh() == ["A"] and not result.statsEstimated
    exact = metric_dict(compact.reliability_stats(case.labels, 20))
    for key in METRICS:
        assert result.metrics[key] == pytest.approx(exact[key], rel=1e-12, abs=1e-12), key
        assert estimate[key] == pytest.approx(exact[key], abs=5e-2), key
    assert result.current is compact  # statistics only: the maps were already right
    np.testing.assert_array_equal(node_array(logic, "confidence"), maps)
    # A previewed temperature is applied with a new reference (script default: at once).
    logic.previewTemperature(2.0, "A")
    logic.setReference(reference)
    assert not logic.refreshing and result.temperature == pytest.approx(2.0)
    at2 = apply_temperature(compact, 2.0)
    np.testing.assert_array_equal(node_array(logic, "confidence"), at2.confidence)
    assert result.metrics["ece"] == pytest.approx(
        metric_dict(at2.reliability_stats(case.labels, 20))["ece"], rel=1e-12)
