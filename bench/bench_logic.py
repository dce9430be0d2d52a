#!/usr/bin/env python
"""Benchmark of the Slicer module's MRML logic (headless, real MRML from slicer-core).

- temperature refresh: ``CalibSegLogic.setTemperature`` on the 1 mm sample case
  (3 classes): new probabilities from the stored logits, confidence and entropy
  volumes updated in place and, with a reference, the reliability diagram and
  metrics table recomputed; reported as a ratio to one softmax pass over the
  same logits (target <= 3);
- temperature preview: ``CalibSegLogic.previewTemperature`` with the three
  orthogonal slice views: confidence and entropy of the planes they show only
  (what the slider does at each tick; target <= 50 ms, a 20 Hz slider), and its
  share of a full refresh;
- MRML round trip: a (Z, Y, X) float32 array into a new volume node with its
  geometry and back (``CalibSegSlicer.arrays``), as a ratio to a plain numpy copy;
- compact (top-k) predictions in the logic: a 25-class top-k prediction of a
  512 x 512 x Z volume (Z = 48; 16 with ``--quick``) shown with a reference; bytes per
  voxel the logic holds in memory (result maps after a temperature change, VTK copies,
  segmentation labelmap) and in the mapped form; a temperature change to the visible
  planes and the estimated diagram (three orthogonal views, target <= 200 ms whatever
  the slice count) and to the whole volume (the background refresh, run to its end).

``run(quick)`` returns rows ``{name, value, target, unit}`` for ``bench/run``;
run this file directly for a table. ``--quick`` uses the 2 mm case; ``--ct`` runs the
top-k rows alone on a 512 x 512 x 300 volume (about 5 GB of memory).
"""

from __future__ import annotations

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "CalibSeg"), os.path.join(ROOT, "bench")):
    if path not in sys.path:
        sys.path.insert(0, path)

from timing import typical_time  # noqa: E402


def _prediction(case):
    """Logits of the sample case's shape with 3 classes (from its soft reference), as a
    CalibSegLib Prediction."""
    import torch

    from CalibSegLib.inference import Prediction, probability_maps

    rng = np.random.default_rng(0)
    ref = np.clip(case.reference_probs, 1e-4, 1.0)
    logits = (np.log(ref) * 2.5 + rng.normal(0.0, 0.7, ref.shape)).astype(np.float32)
    probs, confidence, entropy = probability_maps(torch.from_numpy(logits), 1.0)
    return Prediction(logits=logits, probs=probs.numpy(), labels=logits.argmax(0).astype(np.uint8),
                      confidence=confidence.numpy(), entropy=entropy.numpy(), affine=case.affine,
                      class_names=tuple(case.class_names), temperature=1.0,
                      class_colors=tuple(case.class_colors))


def _model(case):
    """A library ``Model`` with the case's classes (its network is never run here)."""
    import torch

    from CalibSegLib.models import Model, new_card

    card = new_card("synthetic", case.class_names, class_colors=case.class_colors,
                    head="linear")
    return Model(card=card, network=torch.nn.Identity())


def _topk_prediction(shape, num_classes: int, affine):
    """A top-k ``Prediction`` of smooth random logits, written plane by plane (never C x N)."""
    import torch

    from CalibSegLib.inference import Prediction
    from CalibSegLib.inference.prediction import topk_maps
    from CalibSegLib.inference.topk import TopKWriter

    rng = np.random.default_rng(0)
    writer = TopKWriter(num_classes, shape)
    centres = rng.uniform(0, 1, (num_classes, 2)) * np.array(shape[1:])
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for z in range(shape[0]):
        distance = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None,
                                                                                      None])
        logits = (-distance / 40.0 + rng.normal(0.0, 1.0, distance.shape)).astype(np.float32)
        writer.write_planes(z, torch.from_numpy(logits[:, None]))
    scores = writer.finish(temperature=1.0, affine=affine,
                           class_names=tuple(f"class {c}" for c in range(num_classes)))
    confidence, entropy = topk_maps(scores)
    return Prediction(logits=None, probs=None, labels=scores.labels(), confidence=confidence,
                      entropy=entropy, affine=affine, class_names=scores.class_names,
                      temperature=1.0, scores=scores)


def compact_rows(quick: bool, slices: int | None = None) -> list[dict]:
    """Memory and temperature latency of a 25-class top-k prediction shown by the logic
    (``slices``: the volume's slice count, default 16 quick, else 48; 300 is a CT)."""
    import time

    import slicer
    import torch
    from CalibSegSlicer import arrays, layouts
    from CalibSegSlicer.logic import CalibSegLogic

    from CalibSegLib.models import Model, new_card

    shape = (slices or (16 if quick else 48), 512, 512)
    classes = 25
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    prediction = _topk_prediction(shape, classes, affine)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    volume = arrays.newVolumeNode(np.zeros(shape, np.int16), affine, "input")
    scene.AddNode(volume)
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        layouts.sliceNode(scene, name, orientation)
    card = new_card("synthetic", list(prediction.class_names), head="linear")
    logic = CalibSegLogic(scene)
    logic.addPrediction(volume, Model(card=card, network=torch.nn.Identity()), prediction)
    reference = arrays.newVolumeNode(np.asarray(prediction.labels).astype(np.int16), affine,
                                     "reference", "vtkMRMLLabelMapVolumeNode")
    scene.AddNode(reference)
    logic.setReference(reference)
    logic.backgroundVoxels = 0
    temperatures = iter(np.linspace(0.6, 2.4, 40))
    preview = typical_time(lambda: logic.previewTemperature(float(next(temperatures)), "A"),
                           3 if quick else 5)
    start = time.perf_counter()
    logic.applyPendingTemperature()
    logic.waitForRefresh()
    full = time.perf_counter() - start
    voxels = float(np.prod(shape))
    result = logic.results["A"]
    held = result.current.confidence.nbytes + result.current.entropy.nbytes
    for key in ("confidence", "entropy"):
        image = logic.node("A", key).GetImageData()
        held += image.GetScalarSize() * image.GetNumberOfPoints()
    held += 2 * voxels  # the segmentation's one int16 labelmap layer (extent: the volume)
    size = "x".join(str(s) for s in shape)
    return [
        {"name": f"top-k prediction, class scores (25 classes, {size})",
         "value": prediction.scores.nbytes / voxels, "target": 16, "unit": "B/voxel"},
        {"name": f"logic, in memory after a temperature change (25 classes, {size})",
         "value": held / voxels, "target": None, "unit": "B/voxel"},
        {"name": f"temperature -> visible planes + estimated diagram, 3 views ({size})",
         "value": preview * 1000, "target": 200, "unit": "ms"},
        {"name": f"temperature -> whole volume and statistics, background ({size})",
         "value": full * 1000, "target": None, "unit": "ms"},
    ]


def mrml_round_trip(scene, image: np.ndarray, affine: np.ndarray) -> None:
    """Array into a new volume node in ``scene`` and back to an array; the node is removed."""
    from CalibSegSlicer import arrays

    node = arrays.newVolumeNode(image, affine, "round trip")
    scene.AddNode(node)
    back, _ = arrays.arrayFromNode(node)
    scene.RemoveNode(node)
    assert back.shape == image.shape


def logic_showing(case):
    """A headless scene and CalibSeg logic showing a 3-class prediction with a reference.

    Returns ``(scene, colour logic, logic, prediction)``; the colour logic must stay alive
    as long as the scene.
    """
    import slicer
    from CalibSegSlicer import arrays
    from CalibSegSlicer.logic import CalibSegLogic

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    volume = arrays.newVolumeNode(case.image, case.affine, "input")
    scene.AddNode(volume)
    prediction = _prediction(case)
    logic = CalibSegLogic(scene)
    logic.addPrediction(volume, _model(case), prediction, slot="A")
    reference = arrays.newVolumeNode(case.labels.astype(np.int16), case.affine, "reference",
                                     "vtkMRMLLabelMapVolumeNode")
    scene.AddNode(reference)
    logic.setReference(reference)
    return scene, colors, logic, prediction


def run(quick: bool = False) -> list[dict]:
    import torch

    from CalibSegLib.data import sample_case

    resolution = 2.0 if quick else 1.0
    repeats = 3 if quick else 5
    case = sample_case("mni-t1", resolution_mm=resolution)
    scene, _colors, logic, prediction = logic_showing(case)

    logits = torch.from_numpy(np.array(prediction.logits))  # writable copy for torch
    softmax = typical_time(lambda: torch.softmax(logits / 1.3, dim=0), repeats)
    from CalibSegLib.inference import apply_temperature

    library = typical_time(lambda: apply_temperature(prediction, 1.7), repeats)
    temperatures = iter(np.linspace(0.6, 2.4, 4 * repeats + 4))
    refresh = typical_time(lambda: logic.setTemperature(float(next(temperatures)), "A"), repeats)
    from CalibSegSlicer import layouts

    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        layouts.sliceNode(scene, name, orientation)
    planes = logic.previewTemperature(1.1, "A")
    assert planes is not None and len(planes) == 3, planes
    preview = typical_time(lambda: logic.previewTemperature(float(next(temperatures)), "A"),
                           repeats)
    logic.applyPendingTemperature()

    image = case.image.astype(np.float32)

    copy = typical_time(lambda: image.copy(), repeats)
    trip = typical_time(lambda: mrml_round_trip(scene, image, case.affine), repeats)
    shape = "x".join(str(s) for s in image.shape)
    what = "overlays + diagram"
    return compact_rows(quick) + [
        {"name": f"temperature refresh / softmax ({what}, {shape})",
         "value": refresh / softmax, "target": 3, "unit": "ratio"},
        {"name": f"temperature refresh ({shape})", "value": refresh * 1000, "target": None,
         "unit": "ms"},
        {"name": f"temperature preview, 3 orthogonal views ({shape})",
         "value": preview * 1000, "target": 50, "unit": "ms"},
        {"name": f"temperature preview / refresh ({shape})", "value": preview / refresh,
         "target": None, "unit": "ratio"},
        {"name": f"of which apply_temperature / softmax ({shape})", "value": library / softmax,
         "target": None, "unit": "ratio"},
        {"name": f"softmax pass, 3 classes ({shape})", "value": softmax * 1000, "target": None,
         "unit": "ms"},
        {"name": f"MRML round trip array->node->array / numpy copy ({shape})",
         "value": trip / copy, "target": None, "unit": "ratio"},
        {"name": f"MRML round trip array->node->array ({shape})", "value": trip * 1000,
         "target": None, "unit": "ms"},
    ]


if __name__ == "__main__":
    from timing import print_rows

    if "--ct" in sys.argv:  # the top-k rows alone on a 512 x 512 x 300 volume (about 5 GB)
        print_rows(compact_rows(False, slices=300))
    else:
        print_rows(run(quick="--quick" in sys.argv))
