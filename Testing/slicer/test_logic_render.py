"""The overlays are visible: the Red slice view is composited headless by vtkMRMLSliceLogic."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "CalibSeg"))

from CalibSegSlicer.logic import CalibSegLogic  # noqa: E402
from logic_support import add_volume, case4, models_and_predictions, new_scene  # noqa: E402

pytestmark = pytest.mark.mrml


def slice_logic(scene, name="Red", size=96):
    """A slice logic for view ``name`` (no OpenGL: the blend is computed by VTK filters)."""
    app = slicer.vtkMRMLApplicationLogic()
    app.SetMRMLScene(scene)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app)
    logic.SetMRMLScene(scene)
    node = logic.AddSliceNode(name)
    node.SetDimensions(size, size, 1)
    logic._keep = app
    return logic


def render(logic) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    logic.FitSliceToAll()
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    dims = image.GetDimensions()
    rgba = vtk_to_numpy(image.GetPointData().GetScalars())
    return rgba.reshape(dims[1], dims[0], -1)[..., :3].astype(np.float64)


@pytest.fixture
def rendered_scene():
    scene = new_scene()
    case = case4()
    red = slice_logic(scene)
    volume = add_volume(scene, case.image, case.affine, "mni-t1")
    logic = CalibSegLogic(scene)
    (model, pred), _ = models_and_predictions()
    logic.addPrediction(volume, model, pred, slot="A")
    return scene, red, logic


def test_confidence_overlay_is_visible_and_follows_opacity(rendered_scene):
    scene, red, logic = rendered_scene
    logic.showOverlay("none")
    background = render(red)
    assert background.max() > 50  # the brain is there
    differences = []
    for opacity in (0.0, 0.3, 0.6, 1.0):
        logic.showOverlay("confidence", opacity)
        image = render(red)
        differences.append(np.abs(image - background).mean())
    assert differences[0] < 1e-6  # opacity 0: background only
    assert differences[1] > 1.0  # the overlay shows
    assert differences[1] < differences[2] < differences[3]  # and follows the opacity
    # Low confidence is drawn red: in overlay-covered pixels red dominates blue.
    logic.showOverlay("confidence", 1.0)
    image = render(red)
    changed = np.abs(image - background).sum(-1) > 30
    assert changed.any()
    assert (image[changed, 0] - image[changed, 2]).mean() > 20


def test_entropy_overlay_differs_from_confidence(rendered_scene):
    scene, red, logic = rendered_scene
    logic.showOverlay("confidence", 0.8)
    confidence = render(red)
    logic.showOverlay("entropy", 0.8)
    entropy = render(red)
    assert np.abs(confidence - entropy).mean() > 1.0


def test_temperature_change_shows_in_the_view(rendered_scene):
    scene, red, logic = rendered_scene
    logic.showOverlay("confidence", 0.8)
    before = render(red)
    logic.setTemperature(5.0, "A")  # flatter probabilities: lower confidence, redder overlay
    after = render(red)
    assert np.abs(after - before).mean() > 0.5
