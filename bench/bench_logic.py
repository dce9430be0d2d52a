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
- compact storage (the logic's default): memory of a prediction held compactly
  over float32 for a 12-class, 48-prototype model, and the largest change it
  makes to ECE / ACE / MCE (top-label and marginal) of the demo model on a
  held-out 2 mm case at T = 1 (target < 1e-3).

``run(quick)`` returns rows ``{name, value, target, unit}`` for ``bench/run``;
run this file directly for a table. ``--quick`` uses the 2 mm case.
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


def compact_storage_rows() -> list[dict]:
    """Memory ratio and metric error of compact storage (CalibSegLib.inference.compact)."""
    import dataclasses

    from CalibSegLib.calibration import ReliabilityStats
    from CalibSegLib.data import sample_case
    from CalibSegLib.inference import Prediction, predict
    from CalibSegLib.inference.compact import compact_prediction, prediction_nbytes
    from CalibSegLib.models import load_model

    shape, classes, prototypes = (16, 16, 16), 12, 48
    zeros = np.zeros(shape, np.float32)
    big = Prediction(
        logits=np.zeros((classes,) + shape, np.float32),
        probs=np.full((classes,) + shape, 1.0 / classes, np.float32),
        labels=np.zeros(shape, np.uint8), confidence=zeros, entropy=zeros.copy(),
        affine=np.eye(4), class_names=tuple(f"c{i}" for i in range(classes)), temperature=1.0,
        class_colors=tuple((0.5, 0.5, 0.5) for _ in range(classes)),
        similarity=np.zeros((prototypes,) + shape, np.float32), top_similarity=zeros.copy(),
        nearest_prototype=np.zeros(shape, np.int16), prototype_contribution=zeros.copy())
    ratio = prediction_nbytes(compact_prediction(big)) / prediction_nbytes(big)
    per_voxel = prediction_nbytes(compact_prediction(big)) / np.prod(shape)
    case = sample_case("mni-t1", resolution_mm=2.0, shift_seed=1003)
    model = load_model(os.path.join(ROOT, "Resources", "Models", "dicece"))
    full = predict(case.image, case.affine, model, device="cpu", temperature=1.0)
    compact = compact_prediction(full)
    assert dataclasses.is_dataclass(compact)
    a = ReliabilityStats.from_probs(full.probs, case.labels).metrics().to_dict()
    b = ReliabilityStats.from_probs(compact.probs, case.labels).metrics().to_dict()
    error = max(abs(a[k] - b[k]) for k in ("ece", "ace", "mce", "marginal_ece",
                                           "marginal_ace", "marginal_mce"))
    return [
        {"name": "compact prediction memory / float32 (12 classes, 48 prototypes)",
         "value": ratio, "target": None, "unit": "ratio"},
        {"name": "compact prediction, bytes per voxel (12 classes, 48 prototypes)",
         "value": per_voxel, "target": None, "unit": "B"},
        {"name": "compact storage: largest change of ECE/ACE/MCE (2 mm case, T=1)",
         "value": error, "target": "< 0.001", "unit": "abs"},
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
    return compact_storage_rows() + [
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

    print_rows(run(quick="--quick" in sys.argv))
