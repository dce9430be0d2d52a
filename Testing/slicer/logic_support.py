"""Shared set-up of the MRML logic tests (imported by Testing/slicer/test_logic*.py; no tests here).

Predictions of two tiny untrained models on the 4 mm sample case are computed once
per test process and shared.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_DIR = os.path.join(ROOT, "CalibSeg")
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)


def new_scene():
    """A fresh MRML scene with Slicer's default colour tables, set as ``slicer.mrmlScene``."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    colorLogic = slicer.vtkMRMLColorLogic()
    colorLogic.SetMRMLScene(scene)
    _KEEP.append(colorLogic)
    return scene


_KEEP: list = []


def add_volume(scene, array, affine, name, className="vtkMRMLScalarVolumeNode"):
    from CalibSegSlicer import arrays

    node = arrays.newVolumeNode(np.asarray(array), affine, name, className)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def node_ids(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


@functools.cache
def case4():
    from CalibSegLib.data import sample_case

    return sample_case("mni-t1", resolution_mm=4.0)


@functools.cache
def model_folders() -> tuple[str, str]:
    """Two tiny models (prototype and linear head) with the sample case's classes.

    The prototype model's card gets a prototype catalogue with a gallery crop, as
    training writes it.
    """
    import json

    from CalibSegLib.io import write_image
    from CalibSegLib.models.testing import tiny_model

    case = case4()
    base = tempfile.mkdtemp(prefix="calibseg-logic-")
    names = list(case.class_names)
    proto = tiny_model(os.path.join(base, "proto"), head="prototype", class_names=names, seed=1)
    linear = tiny_model(os.path.join(base, "linear"), head="linear", class_names=names, seed=2)
    card_path = os.path.join(proto, "model.json")
    with open(card_path, encoding="utf-8") as fh:
        card = json.load(fh)
    os.makedirs(os.path.join(proto, "gallery"), exist_ok=True)
    crop = np.ascontiguousarray(case.image[10:22, 20:32, 14:26])
    crop_affine = case.affine.copy()
    crop_affine[:3, 3] = (case.affine @ np.array([14, 20, 10, 1.0]))[:3]
    write_image(os.path.join(proto, "gallery", "proto_000.nii.gz"), crop, crop_affine)
    per_class = int(card.get("head", {}).get("prototypes_per_class", 2))
    card["prototypes"] = [
        {"index": k, "class": k // per_class, "case": "mni-t1",
         "voxel": [20, 26, 16], "bbox": [[14, 26], [20, 32], [10, 22]],
         "gallery": "gallery/proto_000.nii.gz" if k == 0 else None}
        for k in range(per_class * len(names))
    ]
    with open(card_path, "w", encoding="utf-8") as fh:
        json.dump(card, fh, indent=2)
    return proto, linear


@functools.cache
def models_and_predictions():
    """``((model A, prediction A), (model B, prediction B))`` on the 4 mm case."""
    from CalibSegLib.inference import predict
    from CalibSegLib.models import load_model

    case = case4()
    out = []
    for folder in model_folders():
        model = load_model(folder)
        out.append((model, predict(case.image, case.affine, model, device="cpu")))
    return tuple(out)
