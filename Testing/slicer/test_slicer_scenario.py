"""A session as a user lives it, on real MRML (slicer-core) through the panel's decisions:
A and B on patient 1, then A and B on a differently sized patient 2, compare, temperature
per model, export, Clear. Nodes are replaced, never leaked; the inputs are untouched."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "CalibSeg"))

from CalibSegSlicer import arrays, layouts  # noqa: E402
from CalibSegSlicer.catalog import MemorySettings, ModelCatalog  # noqa: E402
from CalibSegSlicer.logic import CalibSegLogic  # noqa: E402
from CalibSegSlicer.panel import CalibSegPanel  # noqa: E402
from CalibSegSlicer.process import InProcessRunner  # noqa: E402
from logic_support import add_volume, case4, model_folders, new_scene  # noqa: E402
from widget_support import (  # noqa: E402
    ManualDebounce,
    count_by_class,
    fake_ui,
    model_with_temperature,
    run_until_idle,
)

from CalibSegLib.calibration import ReliabilityStats  # noqa: E402
from CalibSegLib.io import read_image  # noqa: E402

pytestmark = pytest.mark.mrml

#: Node classes the views and colour maps need; created once per scene and kept.
SHARED = {"vtkMRMLColorTableNode", "vtkMRMLLayoutNode", "vtkMRMLPlotViewNode",
          "vtkMRMLSliceNode", "vtkMRMLSliceCompositeNode"}


def patients():
    """Patient 1 (the 4 mm case) and patient 2 (a crop of it: another size and origin)."""
    case = case4()
    crop = (slice(2, -2), slice(3, None), slice(0, -5))
    affine = case.affine.copy()
    affine[:3, 3] = (case.affine @ np.array([0, 3, 2, 1.0]))[:3]
    return ((case.image, case.labels, case.affine),
            (np.ascontiguousarray(case.image[crop]), np.ascontiguousarray(case.labels[crop]),
             affine))


def snapshot(node):
    """What 'untouched' means for an input node: voxels, geometry, modification times."""
    return (slicer.util.arrayFromVolume(node).copy(), arrays.affineFromNode(node),
            node.GetMTime(), node.GetImageData().GetMTime())


def test_two_patients_two_models_compare_temperature_export_clear(tmp_path):
    scene = new_scene()
    layouts.sliceNode(scene, "Red")
    proto, linear = model_folders()
    shipped = [model_with_temperature(proto, str(tmp_path / "m" / "proto"), "Proto", 1.2),
               model_with_temperature(linear, str(tmp_path / "m" / "linear"), "Linear", 0.9)]
    inputs = []
    for n, (image, labels, affine) in enumerate(patients(), start=1):
        volume = add_volume(scene, image, affine, f"patient {n}")
        reference = add_volume(scene, labels.astype(np.int16), affine, f"patient {n} tissues",
                               "vtkMRMLLabelMapVolumeNode")
        inputs.append((volume, reference))
    assert inputs[0][0].GetImageData().GetDimensions() != \
        inputs[1][0].GetImageData().GetDimensions()
    untouched = {node.GetID(): snapshot(node) for pair in inputs for node in pair}
    base = count_by_class(scene)

    ui = fake_ui()
    debounce = ManualDebounce()
    panel = CalibSegPanel(ui, CalibSegLogic(scene), InProcessRunner(),
                          ModelCatalog(MemorySettings(), shipped), debounce=debounce,
                          report=lambda message: pytest.fail(message))
    logic = panel.logic
    ui.modelAComboBox.select("Proto 0.1")
    ui.modelBComboBox.select("Linear 0.1")
    panel.onModelChanged()

    counts = []
    for volume, reference in inputs:
        ui.inputSelector.node, ui.referenceSelector.node = volume, reference
        panel.onInputChanged(volume)
        assert ui.applyButton.enabled, ui.applyButton.toolTip
        panel.apply()
        run_until_idle(panel)
        assert ui.statusLabel.text == "Done.", ui.statusLabel.text
        shape = slicer.util.arrayFromVolume(volume).shape
        assert logic.inputNodeID == volume.GetID() and logic.inputShape == shape
        labels = slicer.util.arrayFromVolume(reference).astype(np.int64)
        for slot in "AB":
            result = logic.results[slot]
            assert slicer.util.arrayFromVolume(logic.node(slot, "confidence")).shape == shape
            expected = ReliabilityStats.from_probs(result.current.probs, labels, n_bins=20)
            assert result.metrics["ece"] == pytest.approx(expected.metrics().ece, rel=1e-9)
        # Compare: B in the comparison view, A in the others.
        ui.compareCheckBox.checked = True
        panel.onCompare(True)
        other = layouts.compositeNode(scene, layouts.COMPARE_VIEW)
        assert other.GetForegroundVolumeID() == logic.node("B", "confidence").GetID()
        assert other.GetBackgroundVolumeID() == volume.GetID()
        counts.append(count_by_class(scene))
    # Patient 2 replaced patient 1's results: the same nodes by class, none left over.
    assert counts[1] == counts[0]
    assert all(scene.GetNodeByID(i) is not None for r in logic.results.values()
               for i in r.nodeIDs.values())

    # Temperature per model on patient 2: B moves, A keeps its card's value.
    assert logic.results["A"].temperature == pytest.approx(1.2)
    ui.temperatureSlotComboBox.select("B")
    panel.onTemperatureSlot()
    assert ui.temperatureSlider.value == pytest.approx(0.9)
    panel.onTemperatureSlider(1.7)
    # Export before the slider's pause still writes the previewed temperature everywhere.
    ui.exportDirectoryButton.directory = str(tmp_path / "export")
    written = panel.export()
    assert logic.results["B"].temperature == pytest.approx(1.7)
    assert logic.results["A"].temperature == pytest.approx(1.2)
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted(f"{slot}-{name}-{kind}" for slot, name in (("A", "Proto"),
                                                                       ("B", "Linear"))
                           for kind in ("labels.nii.gz", "confidence.nii.gz",
                                        "entropy.nii.gz", "metrics.json"))
    volume2 = inputs[1][0]
    for slot, name in (("A", "Proto"), ("B", "Linear")):
        array, affine = read_image(str(tmp_path / "export" / f"{slot}-{name}-confidence.nii.gz"))
        np.testing.assert_allclose(array, slicer.util.arrayFromVolume(logic.node(slot,
                                                                                 "confidence")))
        np.testing.assert_allclose(affine, arrays.affineFromNode(volume2), atol=1e-4)
        with open(tmp_path / "export" / f"{slot}-{name}-metrics.json", encoding="utf-8") as fh:
            document = json.load(fh)
        assert document["temperature"] == pytest.approx({"A": 1.2, "B": 1.7}[slot])

    # Clear: back to the scene before the first Apply (shared views and colour maps aside).
    panel.clear()
    after = count_by_class(scene)
    for cls in set(after) | set(base):
        if cls not in SHARED:
            assert after.get(cls, 0) == base.get(cls, 0), cls
    assert not logic.results and not ui.exportButton.enabled

    # The inputs were never modified.
    for nodeID, (array, affine, mtime, image_mtime) in untouched.items():
        node = scene.GetNodeByID(nodeID)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
        np.testing.assert_array_equal(arrays.affineFromNode(node), affine)
        assert node.GetMTime() == mtime and node.GetImageData().GetMTime() == image_mtime
