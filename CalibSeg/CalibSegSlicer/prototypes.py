"""Prototype explanations of a result: catalogue look-up, probe, source crops, contributions.

Source crops and contribution maps become volume nodes of the result (in its
``nodeIDs``, so they leave with it).

The catalogue is the card's ``prototypes`` list (``index``, ``class``, ``case``,
``voxel``, ``bbox``, ``gallery``; see the model-card schema); entries are found by
their ``index``, not their position. Maps come from the library's ``Prediction``
(``similarity``, ``nearest_prototype``, ``prototype_contribution``,
``prototype_class``, ``prototype_weights``).
"""

from __future__ import annotations

import math
import os

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import Prediction
from CalibSegLib.models import Model
from CalibSegSlicer import arrays, colors, layouts
from CalibSegSlicer.results import ModelResult, removeNode


def catalogueEntry(model: Model, k: int) -> dict | None:
    """The card's catalogue entry of prototype ``k`` (None when the card has none)."""
    for entry in model.card.prototypes:
        if int(entry["index"]) == int(k):
            return entry
    return None


def probePrototypes(prediction: Prediction, model: Model, index, topK: int = 3) -> list[dict]:
    """The ``topK`` most similar prototypes at voxel ``index`` (z, y, x), with their source."""
    if prediction.similarity is not None:
        values = np.asarray(prediction.similarity[(slice(None), *index)], dtype=np.float32)
        candidates = [(int(k), float(values[k])) for k in np.argsort(-values)[:topK]]
    elif prediction.nearest_prototype is not None:
        similarity = prediction.top_similarity
        candidates = [(int(prediction.nearest_prototype[index]),
                       float(similarity[index]) if similarity is not None else math.nan)]
    else:
        return []
    classes = prediction.prototype_class
    rows = []
    for k, similarity in candidates:
        rows.append({"prototype": k, "similarity": similarity,
                     "class_index": int(classes[k]) if classes is not None else None,
                     "source": catalogueEntry(model, k) or {}})
    return rows


def sourceEntry(result: ModelResult, k: int) -> dict:
    """Catalogue entry of prototype ``k`` of ``result``'s model; a clear error when absent."""
    count = result.model.card.num_prototypes
    entry = catalogueEntry(result.model, k) if 0 <= int(k) < count else None
    if entry is None:
        raise CalibSegError(
            f"Model {result.name} has no prototype {k} in its card "
            f"({len(result.model.card.prototypes)} catalogued).")
    return entry


def galleryPath(result: ModelResult, k: int) -> str:
    """Absolute path of prototype ``k``'s gallery crop (inside the model folder)."""
    entry = sourceEntry(result, k)
    if not entry.get("gallery"):
        raise CalibSegError(f"Prototype {k} of {result.name} has no gallery crop in its card.")
    path = result.model.gallery_path(entry["gallery"])
    if path is None:
        raise CalibSegError(f"Model {result.name} was not loaded from a folder; "
                            "its gallery crops cannot be found.")
    return path


def readCrop(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A gallery crop ``(image (Z, Y, X), affine)`` from its image file."""
    if not os.path.exists(path):
        raise CalibSegError(f"Prototype gallery crop {path} is missing; reinstall the model.")
    from CalibSegLib.io import read_image

    return read_image(path)


def contributionValues(result: ModelResult, prototype: int | None = None) -> np.ndarray:
    """A ``(Z, Y, X)`` float32 contribution map of ``result`` at its current temperature.

    Without ``prototype``: the part of the winning class's logit given by its own
    prototypes (``prototype_contribution``). With ``k``: ``w[c, k] * similarity[k]``
    for prototype ``k`` of class ``c``.
    """
    current = result.current
    if not current.is_prototype:
        raise CalibSegError(f"Model {result.name} gives no contribution maps "
                            "(only prototype models do).")
    if prototype is None:
        return np.asarray(current.prototype_contribution, dtype=np.float32)
    k = int(prototype)
    count = current.similarity.shape[0]
    if not 0 <= k < count:
        raise CalibSegError(f"Model {result.name} has no prototype {k} ({count} prototypes).")
    c = int(current.prototype_class[k])
    return np.float32(current.prototype_weights[c, k]) * current.similarity[k].astype(np.float32)


def showSource(scene, result: ModelResult, k: int):
    """Prototype ``k``'s gallery crop as a new volume node; the slice views centred on it."""
    image, affine = readCrop(galleryPath(result, k))
    key = f"prototypeSource{int(k)}"
    removeNode(scene, scene.GetNodeByID(result.nodeIDs.get(key, "")))
    node = arrays.newVolumeNode(image.astype(np.float32), affine,
                                f"CalibSeg prototype {k} source ({result.name})")
    node.SetAttribute("CalibSeg.Slot", result.slot)
    node.SetAttribute("CalibSeg.Role", "prototypeSource")
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    result.nodeIDs[key] = node.GetID()
    centre = arrays.indexToRas(affine, [(s - 1) / 2.0 for s in image.shape])
    for composite in layouts.compositeNodes(scene):
        sliceNode = layouts.sliceNodeIfPresent(scene, composite.GetLayoutName())
        if sliceNode is not None:
            sliceNode.JumpSliceByCentering(*centre)
    return node


def contributionNode(scene, result: ModelResult, affine: np.ndarray,
                     prototype: int | None = None):
    """The result's contribution map node (created, or refreshed in place)."""
    values = contributionValues(result, prototype)
    key = "contribution" if prototype is None else f"contribution{int(prototype)}"
    title = "contribution" if prototype is None else f"prototype {int(prototype)} contribution"
    node = scene.GetNodeByID(result.nodeIDs.get(key, ""))
    if node is not None:
        arrays.fillNode(node, values, affine)
        return node
    node = arrays.newVolumeNode(values, affine, f"{result.name} ({result.slot}) {title}")
    node.SetAttribute("CalibSeg.Slot", result.slot)
    node.SetAttribute("CalibSeg.Role", key)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAndObserveColorNodeID(colors.similarityTable(scene).GetID())
    result.nodeIDs[key] = node.GetID()
    return node
