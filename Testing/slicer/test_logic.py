"""CalibSegLogic on real MRML (slicer-core): nodes, geometry, colours, layers, plots, errors."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "CalibSeg"))

from CalibSegSlicer import arrays, colors, layouts, plots, reference, results  # noqa: E402
from CalibSegSlicer.catalog import loadModel  # noqa: E402
from CalibSegSlicer.logic import CalibSegLogic  # noqa: E402
from logic_support import (  # noqa: E402
    add_volume,
    case4,
    model_folders,
    models_and_predictions,
    new_scene,
    node_ids,
)

from CalibSegLib.errors import CalibSegError  # noqa: E402
from CalibSegLib.inference import apply_temperature  # noqa: E402

pytestmark = pytest.mark.mrml


@pytest.fixture
def scene():
    return new_scene()


@pytest.fixture
def setup(scene):
    """Scene with the input volume, the Red view and the logic with model A shown."""
    case = case4()
    volume = add_volume(scene, case.image, case.affine, "mni-t1")
    layouts.sliceNode(scene, "Red")
    logic = CalibSegLogic(scene)
    (model_a, pred_a), (model_b, pred_b) = models_and_predictions()
    logic.addPrediction(volume, model_a, pred_a, slot="A")
    return scene, volume, logic


def reference_node(scene, labels=None, affine=None, name="reference"):
    case = case4()
    return add_volume(scene, (case.labels if labels is None else labels).astype(np.int16),
                      case.affine if affine is None else affine, name,
                      "vtkMRMLLabelMapVolumeNode")


# ------------------------------------------------------------------------------------ nodes
def test_overlay_nodes_have_the_input_geometry_and_values(setup):
    scene, volume, logic = setup
    (_, pred), _ = models_and_predictions()
    expected = arrays.affineFromNode(volume)
    np.testing.assert_allclose(expected, case4().affine)
    for key, values in (("confidence", pred.confidence), ("entropy", pred.entropy),
                        ("similarity", pred.top_similarity),
                        ("prototypes", pred.nearest_prototype.astype(np.int32) + 1)):
        node = logic.node("A", key)
        assert node is not None, key
        assert np.array_equal(arrays.affineFromNode(node), expected), key
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), values, rtol=1e-6,
                                   err_msg=key)
        assert node.GetID() != volume.GetID()
    assert logic.node("A", "prototypes").IsA("vtkMRMLLabelMapVolumeNode")


def test_colour_tables_and_window_level(setup):
    scene, _, logic = setup
    confidence = logic.node("A", "confidence").GetDisplayNode()
    entropy = logic.node("A", "entropy").GetDisplayNode()
    assert confidence.GetColorNode().GetName() == colors.CONFIDENCE_TABLE
    assert entropy.GetColorNode().GetName() == colors.ENTROPY_TABLE
    assert not confidence.GetAutoWindowLevel()
    assert confidence.GetWindow() == pytest.approx(2 / 3)
    assert confidence.GetLevel() == pytest.approx(2 / 3)
    table = confidence.GetColorNode()
    low, high = [0.0] * 4, [0.0] * 4
    table.GetColor(0, low)
    table.GetColor(table.GetNumberOfColors() - 1, high)
    assert low[3] > 0.9 and low[0] > 0.8 and low[1] < 0.1  # low confidence: opaque red
    assert high[3] == 0.0  # high confidence: transparent
    # Prototype label map: one entry per prototype (+ "none"), shaded from the class colour.
    (_, pred), _ = models_and_predictions()
    proto_table = logic.node("A", "prototypes").GetDisplayNode().GetColorNode()
    assert proto_table.GetNumberOfColors() == len(pred.prototype_class) + 1
    rgba = [0.0] * 4
    proto_table.GetColor(0, rgba)
    assert rgba[3] == 0.0
    # Tables are shared: a second result does not create new confidence/entropy tables.
    count = scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")
    (model_b, pred_b) = models_and_predictions()[1]
    logic.addPrediction(scene.GetNodeByID(logic.inputNodeID), model_b, pred_b, slot="B")
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == count


def test_segmentation_node_has_class_names_colours_and_labels(setup):
    scene, volume, logic = setup
    (model, pred), _ = models_and_predictions()
    seg = logic.node("A", "segmentation")
    assert seg.IsA("vtkMRMLSegmentationNode")
    segmentation = seg.GetSegmentation()
    present = set(np.unique(pred.labels).tolist()) - {0}
    names = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i)
             for i in range(segmentation.GetNumberOfSegments())}
    assert set(names) == {model.class_names[c] for c in present}
    for c in present:
        assert names[model.class_names[c]].GetColor() == pytest.approx(model.class_colors[c])
    # Read back through the reference path: the segmentation reproduces the labels.
    labels = reference.labelsFromSegmentation(scene, seg, volume, model.class_names)
    np.testing.assert_array_equal(labels, pred.labels)


def test_input_volume_is_never_modified(scene):
    case = case4()
    volume = add_volume(scene, case.image, case.affine, "mni-t1")
    before = slicer.util.arrayFromVolume(volume).copy()
    mtime = volume.GetMTime()
    image_mtime = volume.GetImageData().GetMTime()
    logic = CalibSegLogic(scene)
    (model_a, pred_a), (model_b, pred_b) = models_and_predictions()
    layouts.sliceNode(scene, "Red")
    logic.addPrediction(volume, model_a, pred_a, slot="A")
    logic.addPrediction(volume, model_b, pred_b, slot="B")
    logic.showOverlay("entropy", 0.4)
    logic.setTemperature(1.7, "A")
    logic.showLayout(compare=True)
    logic.probe(arrays.indexToRas(case.affine, (20, 30, 25)))
    logic.showContributionMap()
    assert volume.GetMTime() == mtime
    assert volume.GetImageData().GetMTime() == image_mtime
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)


# ------------------------------------------------------------------------------------ display
def test_foreground_layer_and_opacity(setup):
    scene, volume, logic = setup
    composite = layouts.compositeNode(scene, "Red")
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert composite.GetForegroundVolumeID() == logic.node("A", "confidence").GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.6)
    logic.showOverlay("entropy", 0.25)
    assert composite.GetForegroundVolumeID() == logic.node("A", "entropy").GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.25)
    logic.setOpacity(0.9)
    assert composite.GetForegroundOpacity() == pytest.approx(0.9)
    logic.showOverlay("none")
    assert composite.GetForegroundVolumeID() is None
    logic.showPrototypeMap(True, 0.5)
    assert composite.GetLabelVolumeID() == logic.node("A", "prototypes").GetID()
    with pytest.raises(CalibSegError, match="Unknown overlay"):
        logic.showOverlay("sparkles")


def test_layouts_registered_and_comparison_wiring(setup):
    scene, volume, logic = setup
    layout_node = logic.registerLayouts()
    assert layout_node.IsLayoutDescription(layouts.LAYOUT_OVERVIEW)
    assert layout_node.IsLayoutDescription(layouts.LAYOUT_COMPARE)
    assert "vtkMRMLPlotViewNode" in layout_node.GetLayoutDescription(layouts.LAYOUT_OVERVIEW)
    assert layouts.COMPARE_VIEW in layout_node.GetLayoutDescription(layouts.LAYOUT_COMPARE)
    assert logic.showLayout(compare=False) == layouts.LAYOUT_OVERVIEW
    assert layout_node.GetViewArrangement() == layouts.LAYOUT_OVERVIEW
    with pytest.raises(CalibSegError, match="two models"):
        logic.showLayout(compare=True)
    _, (model_b, pred_b) = models_and_predictions()
    logic.addPrediction(volume, model_b, pred_b, slot="B")
    assert logic.showLayout(compare=True) == layouts.LAYOUT_COMPARE
    red = layouts.compositeNode(scene, "Red")
    other = layouts.compositeNode(scene, layouts.COMPARE_VIEW)
    assert red.GetID() != other.GetID()
    assert red.GetLinkedControl() and other.GetLinkedControl()
    assert red.GetHotLinkedControl() and other.GetHotLinkedControl()
    assert red.GetForegroundVolumeID() == logic.node("A", "confidence").GetID()
    assert other.GetForegroundVolumeID() == logic.node("B", "confidence").GetID()
    assert other.GetBackgroundVolumeID() == volume.GetID()
    assert (layouts.sliceNode(scene, "Red").GetViewGroup()
            == layouts.sliceNode(scene, layouts.COMPARE_VIEW).GetViewGroup())
    assert layouts.sliceNode(scene, layouts.COMPARE_VIEW).GetOrientation() == "Axial"


# ------------------------------------------------------------------------------------ temperature
def test_temperature_updates_overlays_in_place(setup):
    scene, _, logic = setup
    (_, pred), _ = models_and_predictions()
    before = dict(logic.results["A"].nodeIDs)
    count = scene.GetNumberOfNodes()
    logic.setTemperature(2.5, "A")
    assert logic.results["A"].nodeIDs == before
    assert scene.GetNumberOfNodes() == count
    expected = apply_temperature(pred, 2.5)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(logic.node("A", "confidence")),
                               expected.confidence, rtol=1e-6)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(logic.node("A", "entropy")),
                               expected.entropy, rtol=1e-6)
    assert np.array_equal(arrays.affineFromNode(logic.node("A", "confidence")), case4().affine)
    with pytest.raises(CalibSegError, match="positive"):
        logic.setTemperature(0.0, "A")


def test_temperature_preview_refreshes_the_visible_planes_only(setup):
    import math

    scene, _, logic = setup
    (_, pred), _ = models_and_predictions()
    node = logic.node("A", "confidence")
    before = slicer.util.arrayFromVolume(node).copy()
    [(axis, index)] = logic.previewTemperature(2.0, "A")  # the Red (axial) view
    assert axis == 0
    expected = apply_temperature(pred, 2.0).confidence
    shown = slicer.util.arrayFromVolume(node)
    np.testing.assert_allclose(shown[index], expected[index], rtol=1e-5, atol=1e-6)
    others = np.delete(np.arange(shown.shape[0]), index)
    np.testing.assert_array_equal(shown[others], before[others])
    assert logic.results["A"].temperature == pytest.approx(pred.temperature)
    assert logic.pendingTemperatures == {"A": 2.0}
    # A sagittal view adds a plane along X.
    layouts.sliceNode(scene, "Yellow", "Sagittal")
    planes = logic.previewTemperature(2.2, "A")
    assert sorted(a for a, _ in planes) == [0, 2]
    # A view oblique to the voxel grid: nothing is previewed, the temperature waits.
    red = layouts.sliceNode(scene, "Red")
    matrix = red.GetSliceToRAS()
    c, s_ = math.cos(0.4), math.sin(0.4)
    for row, values in enumerate(([c, 0, s_], [0, 1, 0], [-s_, 0, c])):
        for col, value in enumerate(values):
            matrix.SetElement(row, col, value)
    red.UpdateMatrices()
    previewed = slicer.util.arrayFromVolume(node).copy()
    assert logic.previewTemperature(3.0, "A") is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), previewed)
    assert logic.applyPendingTemperature() == ["A"]
    assert logic.results["A"].temperature == pytest.approx(3.0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node),
                               apply_temperature(pred, 3.0).confidence, rtol=1e-5, atol=1e-6)
    assert logic.pendingTemperatures == {}


def test_card_temperature_is_the_default(setup):
    scene, volume, logic = setup
    (model, pred), _ = models_and_predictions()
    assert logic.results["A"].temperature == pytest.approx(model.temperature)


# ------------------------------------------------------------------------------------ reference
def test_reliability_diagram_and_metrics_equal_the_library(setup):
    from CalibSegLib.calibration import ReliabilityStats

    scene, volume, logic = setup
    _, (model_b, pred_b) = models_and_predictions()
    logic.addPrediction(volume, model_b, pred_b, slot="B")
    reference = reference_node(scene)
    logic.setReference(reference)
    chart = scene.GetNodeByID(logic.chartNodeID)
    assert chart.GetNumberOfPlotSeriesNodes() == 7  # diagonal + 3 per model
    labels = case4().labels.astype(np.int64)
    for slot, temperature in (("A", None), ("B", None), ("A", 1.8)):
        if temperature is not None:
            ids = dict(logic.results[slot].nodeIDs)
            logic.setTemperature(temperature, slot)
            assert logic.results[slot].nodeIDs == ids
        result = logic.results[slot]
        stats = ReliabilityStats.from_probs(result.current.probs, labels, n_bins=20)
        bins = stats.diagram_bins()
        table = scene.GetNodeByID(result.nodeIDs["reliability"])
        expected = {plots.CONFIDENCE: bins.confidence, plots.COUNT: bins.count,
                    plots.FRACTION: bins.count / bins.count.sum(),
                    plots.OBSERVED: np.where(bins.reliable, bins.accuracy, np.nan),
                    plots.OBSERVED_LIGHT: np.where(bins.sparse, bins.accuracy, np.nan)}
        for column, values in expected.items():
            np.testing.assert_allclose(plots.readColumn(table, column), values,
                                       rtol=1e-9, equal_nan=True, err_msg=column)
        series = scene.GetNodeByID(result.nodeIDs["observedSeries"])
        assert series.GetTableNodeID() == table.GetID()
        assert series.GetXColumnName() == plots.CONFIDENCE
        assert series.GetYColumnName() == plots.OBSERVED
        metrics = stats.metrics().to_dict()
        values = plots.readMetricsTable(scene.GetNodeByID(logic.metricsTableID))
        column = values[logic.columnName(slot)]
        for label, key in (("ACE", "ace"), ("ECE", "ece"), ("MCE", "mce"),
                           ("MCE (all bins)", "mce_raw")):
            assert column[label] == pytest.approx(metrics[key], rel=1e-9, abs=1e-12)
        for label, value in plots.metricRows(metrics, result.classNames):
            if label.startswith("Dice"):
                assert column[label] == pytest.approx(value, rel=1e-9, nan_ok=True)
        assert column["temperature"] == pytest.approx(result.temperature)


def test_fit_temperature_to_reference(setup):
    from CalibSegLib.calibration import fit_temperature

    scene, volume, logic = setup
    logic.setReference(reference_node(scene))
    fitted = logic.fitTemperatureToReference()
    (_, pred), _ = models_and_predictions()
    expected = fit_temperature(pred.logits, case4().labels.astype(np.int64))
    # the logic fits on the library's temperature grid (refined by a parabola in log T),
    # which works on either form of the prediction: within 1e-3 of the continuous fit
    assert fitted["A"] == pytest.approx(float(expected), rel=1e-3)
    assert logic.results["A"].temperature == pytest.approx(fitted["A"])


def test_segmentation_node_as_reference(setup):
    scene, volume, logic = setup
    seg = logic.node("A", "segmentation")  # the model's own segmentation: all correct
    metrics = logic.setReference(seg)["A"]
    assert logic.referenceNodeID == seg.GetID()
    probs = np.asarray(logic.results["A"].current.probs, dtype=np.float64)
    labels = probs.argmax(0)
    np.testing.assert_array_equal(logic.referenceLabels, labels)  # read back voxel for voxel
    # Every top label is right, so each bin's accuracy is 1 and ECE = 1 - mean confidence;
    # NLL and Brier follow from the probabilities alone; every predicted class has Dice 1.
    confidence = probs.max(0)
    assert metrics["ece"] == pytest.approx(1.0 - confidence.mean(), abs=1e-6)
    assert 0.0 <= metrics["mce"] <= 1.0 - confidence.min() + 1e-6
    assert metrics["nll"] == pytest.approx(-np.log(np.maximum(confidence, 1e-12)).mean(),
                                           rel=1e-6)
    brier = ((probs ** 2).sum(0) - 2.0 * confidence + 1.0).mean()
    assert metrics["brier"] == pytest.approx(brier, rel=1e-6, abs=1e-9)
    dice = [entry["dice"] for entry in metrics["per_class"].values()]  # in class order
    present = [c for c in range(probs.shape[0]) if (labels == c).any()]
    assert len(dice) == probs.shape[0] and len(present) >= 2
    for c in present:
        assert dice[c] == pytest.approx(1.0)
    assert metrics["mean_dice"] == pytest.approx(1.0)


def test_fit_needs_a_reference(setup):
    _, _, logic = setup
    with pytest.raises(CalibSegError, match="reference"):
        logic.fitTemperatureToReference()


# ------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_clear_errors_and_no_half_made_nodes(setup):
    scene, volume, logic = setup
    case = case4()
    with pytest.raises(CalibSegError, match="No model selected"):
        loadModel("")
    with pytest.raises(CalibSegError, match="does not exist"):
        loadModel(os.path.join(os.path.dirname(model_folders()[0]), "nope"))
    with pytest.raises(CalibSegError, match="No model selected"):
        logic.run(volume, [])
    shifted = case.affine.copy()
    shifted[:3, 3] += 5.0
    wrong_grid = reference_node(scene, affine=shifted, name="shifted")
    unknown = reference_node(scene, labels=case.labels.astype(np.int16) + 3, name="unknown")
    seg = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(seg)
    blob = np.zeros(case.labels.shape, np.int16)
    blob[10:14, 20:24, 20:24] = 1
    image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        arrays.newVolumeNode(blob, case.affine, "blob", "vtkMRMLLabelMapVolumeNode"))
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(image, seg, "x")
    seg.GetSegmentation().GetNthSegment(0).SetName("tumour")
    empty = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(empty)
    before = node_ids(scene)
    with pytest.raises(CalibSegError, match="another geometry"):
        logic.setReference(wrong_grid)
    with pytest.raises(CalibSegError, match=r"label values \[3, 4, 5\].*does not know"):
        logic.setReference(unknown)
    with pytest.raises(CalibSegError, match="tumour"):
        logic.setReference(seg)
    with pytest.raises(CalibSegError, match="no segments"):
        logic.setReference(empty)
    assert node_ids(scene) == before
    assert logic.referenceLabels is None
    # A prediction made on another grid is refused before any node is created.
    other = add_volume(scene, case.image[:, :, :-2], case.affine, "cropped")
    before = node_ids(scene)
    (model, pred), _ = models_and_predictions()
    with pytest.raises(CalibSegError, match="does not match the input"):
        logic.addPrediction(other, model, pred, slot="B")
    with pytest.raises(CalibSegError, match="No input volume"):
        logic.addPrediction(None, model, pred, slot="B")
    with pytest.raises(CalibSegError, match="No model result"):
        logic.addPrediction(volume, model, None, slot="B")
    assert node_ids(scene) == before
    assert "B" not in logic.results


def test_failure_while_adding_removes_the_nodes(setup, monkeypatch):
    scene, volume, logic = setup
    _, (model_b, pred_b) = models_and_predictions()
    before = node_ids(scene)

    def boom(*args, **kwargs):
        raise CalibSegError("simulated failure")

    monkeypatch.setattr(results, "fillSegmentation", boom)
    with pytest.raises(CalibSegError, match="simulated"):
        logic.addPrediction(volume, model_b, pred_b, slot="B")
    after = set(node_ids(scene)) - set(before)
    # Only shared colour tables may remain (created once per scene, reused later).
    assert all(scene.GetNodeByID(i).IsA("vtkMRMLColorTableNode") for i in after), after
    assert "B" not in logic.results


# ------------------------------------------------------------------------------------ probe etc.
def test_probe_reads_the_maps_and_prototypes(setup):
    scene, volume, logic = setup
    (model, pred), _ = models_and_predictions()
    zyx = (20, 30, 25)
    answer = logic.probe(arrays.indexToRas(case4().affine, zyx))["A"]
    assert answer["index_zyx"] == zyx
    assert answer["confidence"] == pytest.approx(float(pred.confidence[zyx]))
    assert answer["entropy"] == pytest.approx(float(pred.entropy[zyx]))
    assert answer["class_index"] == int(pred.labels[zyx])
    probs = [answer["probabilities"][n] for n in model.class_names]
    # compact storage: uint16 fixed-point probabilities (error <= 0.5 / 65535)
    np.testing.assert_allclose(probs, pred.probs[(slice(None),) + zyx], atol=0.5 / 65535 + 1e-7)
    protos = answer["prototypes"]
    assert len(protos) == 3
    assert protos[0]["prototype"] == int(pred.nearest_prototype[zyx])
    # float16 similarity maps: relative error <= 2**-11
    assert protos[0]["similarity"] == pytest.approx(float(pred.top_similarity[zyx]), rel=5e-4)
    assert protos[0]["source"]["case"] == "mni-t1"
    assert logic.probe([1e4, 1e4, 1e4]) == {}


def test_show_prototype_source_loads_the_crop_and_centres_views(setup):
    scene, volume, logic = setup
    red = layouts.sliceNode(scene, "Red")
    folder = model_folders()[0]
    node = logic.showPrototypeSource(0)
    from CalibSegLib.io import read_image

    crop, crop_affine = read_image(os.path.join(folder, "gallery", "proto_000.nii.gz"))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), crop)
    np.testing.assert_allclose(arrays.affineFromNode(node), crop_affine, atol=1e-4)
    centre = arrays.indexToRas(crop_affine, [(s - 1) / 2 for s in crop.shape])
    slice_to_ras = red.GetSliceToRAS()
    origin = [slice_to_ras.GetElement(r, 3) for r in range(3)]
    np.testing.assert_allclose(origin, centre, atol=1e-3)
    with pytest.raises(CalibSegError, match="no gallery crop"):
        logic.showPrototypeSource(1)
    with pytest.raises(CalibSegError, match="no prototype 99"):
        logic.showPrototypeSource(99)


def test_contribution_maps_on_demand(setup):
    scene, volume, logic = setup
    (_, pred), (model_b, pred_b) = models_and_predictions()
    node = logic.showContributionMap()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), pred.prototype_contribution)
    assert layouts.compositeNode(scene, "Red").GetForegroundVolumeID() == node.GetID()
    k = 3
    node_k = logic.showContributionMap(prototype=k)
    c = int(pred.prototype_class[k])
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node_k),
                               pred.prototype_weights[c, k] * pred.similarity[k],
                               rtol=5e-4)  # float16 similarity in compact storage
    assert logic.showContributionMap(prototype=k).GetID() == node_k.GetID()
    logic.addPrediction(volume, model_b, pred_b, slot="B")
    with pytest.raises(CalibSegError, match="only prototype models"):
        logic.showContributionMap(slot="B")


def test_export_writes_maps(setup, tmp_path):
    _, _, logic = setup
    written = logic.export(str(tmp_path))
    names = sorted(os.path.basename(p) for p in written)
    assert any(n.endswith("-confidence.nii.gz") for n in names)
    from CalibSegLib.io import read_image

    (_, pred), _ = models_and_predictions()
    conf = [p for p in written if p.endswith("-confidence.nii.gz")][0]
    array, affine = read_image(conf)
    np.testing.assert_allclose(array, pred.confidence, rtol=1e-6)
    np.testing.assert_allclose(affine, case4().affine, atol=1e-4)


def test_clear_removes_every_created_node(scene):
    case = case4()
    volume = add_volume(scene, case.image, case.affine, "mni-t1")
    before = node_ids(scene)
    logic = CalibSegLogic(scene)
    (model, pred), _ = models_and_predictions()
    logic.addPrediction(volume, model, pred, slot="A")
    logic.clear()
    left = set(node_ids(scene)) - set(before)
    assert all(scene.GetNodeByID(i).IsA("vtkMRMLColorTableNode")
               or scene.GetNodeByID(i).IsA("vtkMRMLLayoutNode")
               or scene.GetNodeByID(i).IsA("vtkMRMLSliceCompositeNode")
               for i in left), left


# ------------------------------------------------------------------------------------ helpers
def test_light_bins_are_greyed_with_their_count_and_left_out_of_mce():
    """5 voxels near confidence 0.55 among 2000 near 0.95: that bin is below the minimum mass."""
    from CalibSegLib.calibration import ReliabilityStats

    rng = np.random.default_rng(0)
    n_big, n_small = 2000, 5
    top = np.concatenate([np.full(n_big, 0.95), np.full(n_small, 0.55)])
    probs = np.stack([top, 1 - top]).astype(np.float32).reshape(2, 1, 1, -1)
    target = np.where(rng.random(top.size) < top, 0, 1).reshape(1, 1, -1)
    target[..., n_big:] = 1  # the light bin is all wrong: a large gap MCE must not see
    bins = ReliabilityStats.from_probs(probs, target, n_bins=20).diagram_bins()
    light = int(np.flatnonzero(bins.sparse)[0])
    heavy = int(np.flatnonzero(bins.reliable)[0])
    assert bins.count[light] == n_small and bins.count[heavy] == n_big
    cols = plots.diagramArrays(bins)
    assert np.isnan(cols[plots.OBSERVED][light]) and cols[plots.OBSERVED_LIGHT][light] == 0.0
    assert np.isnan(cols[plots.OBSERVED_LIGHT][heavy])
    assert cols[plots.OBSERVED][heavy] == pytest.approx(bins.accuracy[heavy])
    assert cols[plots.RELIABLE][light] == 0.0 and cols[plots.RELIABLE][heavy] == 1.0
    np.testing.assert_allclose(cols[plots.FRACTION].sum(), 1.0)
    labels = plots.pointLabels(bins)
    assert labels[light] == f"n={n_small} (< {bins.min_count}: not in MCE)"
    assert labels[heavy] == f"n={n_big}"
    assert bins.mce < 0.5 < bins.mce_raw  # the light bin's gap of 0.55 only in the raw MCE


def test_metric_rows():
    rows = dict(plots.metricRows({"ace": 0.1, "ece": 0.2, "mce": 0.3,
                                  "dice": {"a": 0.9, "b": 0.8}}, ["a", "b"]))
    assert rows == {"ACE": 0.1, "ECE": 0.2, "MCE": 0.3, "Dice a": 0.9, "Dice b": 0.8}
    rows = dict(plots.metricRows({"ece": 0.2, "mce_raw": 0.4, "dice": {"b": 0.6}},
                                 ["a", "b"]))
    assert rows == {"ECE": 0.2, "MCE (all bins)": 0.4, "Dice b": 0.6}


def test_prototype_colours_are_shades_of_the_class_colour():
    table = colors.prototypeColors([0, 1, 1, 1], [(0, 0, 0), (1.0, 0.2, 0.2)])
    assert table.shape == (5, 4)
    assert table[0, 3] == 0.0 and np.all(table[1:, 3] == 1.0)
    reds = table[2:5, :3]
    assert len({tuple(np.round(r, 3)) for r in reds}) == 3  # distinct shades
    assert np.all(reds[:, 0] >= reds[:, 1])  # still red-ish
    assert np.allclose(table[1, 0], table[1, 1])  # black class: grey
