"""CalibSeg's own colour tables, so overlays look the same in every Slicer.

Slicer's file-based tables (Viridis, Inferno, ...) are not always loaded, so the
tables are built here from a few anchor colours. Each table is a
``vtkMRMLColorTableNode`` found in the scene by name and created on first use.

- ``CalibSeg confidence``: low confidence stands out (opaque red), middling is
  yellow, high confidence fades to transparent.
- ``CalibSeg entropy``: low entropy is transparent, higher entropy goes
  purple -> orange -> pale yellow.
- ``CalibSeg similarity``: dark blue -> teal -> yellow, opaque.
- ``CalibSeg prototypes <model>``: one entry per prototype (label value =
  prototype index + 1; 0 is transparent), shaded from its class colour so that
  prototypes of one class read as one family.
"""

from __future__ import annotations

import numpy as np
import slicer

CONFIDENCE_TABLE = "CalibSeg confidence"
ENTROPY_TABLE = "CalibSeg entropy"
SIMILARITY_TABLE = "CalibSeg similarity"
TABLE_SIZE = 256

#: (position, r, g, b, alpha) anchors, linearly interpolated.
_CONFIDENCE_ANCHORS = [
    (0.00, 0.85, 0.05, 0.05, 0.95),
    (0.25, 1.00, 0.40, 0.05, 0.85),
    (0.50, 1.00, 0.85, 0.10, 0.55),
    (0.75, 1.00, 0.95, 0.40, 0.15),
    (0.90, 1.00, 1.00, 0.60, 0.00),
    (1.00, 1.00, 1.00, 0.60, 0.00),
]
_ENTROPY_ANCHORS = [
    (0.00, 0.05, 0.02, 0.15, 0.00),
    (0.15, 0.30, 0.05, 0.45, 0.45),
    (0.45, 0.75, 0.15, 0.45, 0.80),
    (0.75, 0.98, 0.55, 0.10, 0.92),
    (1.00, 0.99, 0.98, 0.65, 1.00),
]
_SIMILARITY_ANCHORS = [
    (0.00, 0.10, 0.05, 0.35, 1.00),
    (0.35, 0.15, 0.40, 0.60, 1.00),
    (0.65, 0.20, 0.70, 0.50, 1.00),
    (1.00, 0.98, 0.90, 0.15, 1.00),
]


def rampColors(anchors, size: int = TABLE_SIZE) -> np.ndarray:
    """``(size, 4)`` RGBA colours interpolated between ``(position, r, g, b, a)`` anchors."""
    anchors = np.asarray(anchors, dtype=np.float64)
    t = np.linspace(0.0, 1.0, size)
    return np.stack([np.interp(t, anchors[:, 0], anchors[:, c]) for c in range(1, 5)], axis=1)


def shade(color, factor: float) -> tuple[float, float, float]:
    """``color`` darkened (factor < 1, towards black) or lightened (> 1, towards white)."""
    rgb = np.clip(np.asarray(color[:3], dtype=np.float64), 0.0, 1.0)
    if factor <= 1.0:
        out = rgb * factor
    else:
        out = rgb + (1.0 - rgb) * min(factor - 1.0, 1.0)
    if float(np.max(rgb)) < 0.05:  # black (background) classes: shades of grey instead
        out = np.full(3, 0.25 + 0.5 * min(max(factor - 0.5, 0.0), 1.0))
    return tuple(float(v) for v in out)


def prototypeColors(prototypeClasses, classColors) -> np.ndarray:
    """``(P + 1, 4)`` RGBA: entry 0 transparent, entry ``k + 1`` prototype ``k`` shaded by class."""
    prototypeClasses = [int(c) for c in prototypeClasses]
    colors = np.zeros((len(prototypeClasses) + 1, 4))
    for cls in sorted(set(prototypeClasses)):
        members = [k for k, c in enumerate(prototypeClasses) if c == cls]
        base = classColors[cls] if cls < len(classColors) else (0.5, 0.5, 0.5)
        for rank, k in enumerate(members):
            factor = 1.0 if len(members) == 1 else 0.6 + 0.8 * rank / (len(members) - 1)
            colors[k + 1, :3] = shade(base, factor)
            colors[k + 1, 3] = 1.0
    return colors


def buildTable(name: str, colors: np.ndarray, names=None):
    """A new user colour table node (not in a scene) with the given RGBA rows."""
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    fillTable(node, colors, names)
    return node


def fillTable(node, colors: np.ndarray, names=None) -> None:
    """Replace the entries of a colour table node."""
    colors = np.asarray(colors, dtype=np.float64)
    node.SetNumberOfColors(len(colors))
    for index, (r, g, b, a) in enumerate(colors):
        label = names[index] if names is not None else f"{index}"
        node.SetColor(index, str(label), float(r), float(g), float(b), float(a))
    node.Modified()


def getOrCreateTable(scene, name: str, colors: np.ndarray, names=None):
    """The scene's colour table called ``name``; created (and added) on first use."""
    for node in _nodesByName(scene, "vtkMRMLColorTableNode", name):
        return node
    node = buildTable(name, colors, names)
    node.SetAttribute("CalibSeg.ColorTable", "1")
    scene.AddNode(node)
    return node


def confidenceTable(scene):
    return getOrCreateTable(scene, CONFIDENCE_TABLE, rampColors(_CONFIDENCE_ANCHORS))


def entropyTable(scene):
    return getOrCreateTable(scene, ENTROPY_TABLE, rampColors(_ENTROPY_ANCHORS))


def similarityTable(scene):
    return getOrCreateTable(scene, SIMILARITY_TABLE, rampColors(_SIMILARITY_ANCHORS))


def _nodesByName(scene, className: str, name: str):
    nodes = scene.GetNodesByClassByName(className, name)
    found = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
    return found
