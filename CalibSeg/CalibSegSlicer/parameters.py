"""The module's parameter node (Slicer's ``parameterNodeWrapper``).

Widgets whose ``SlicerParameterName`` property names a field here are kept in
sync with it by ``connectGui``. Node fields are concrete MRML classes: for a node
combo box ``connectGui`` instantiates each annotated class to learn the node types,
and an abstract class (``vtkMRMLNode``) raises ``TypeError``. The model folders and
the two temperatures are plain values set by the panel (one temperature per model).

Annotations use ``typing.Union``/``Optional`` (not ``X | Y``): Slicer 5.8 runs
Python 3.9, where ``get_type_hints`` cannot evaluate ``X | Y``.
"""

from __future__ import annotations

from typing import Annotated, Union

import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from CalibSegSlicer.display import OVERLAYS
from CalibSegSlicer.results import SLOTS

#: Node classes accepted as the reference segmentation.
ReferenceNode = Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]  # noqa: UP007


@parameterNodeWrapper
class CalibSegParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    reference: ReferenceNode
    modelA: str = ""
    modelB: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    temperatureSlot: Annotated[str, Choice(list(SLOTS))] = "A"
    temperatureA: Annotated[float, WithinRange(0.05, 10.0)] = 1.0
    temperatureB: Annotated[float, WithinRange(0.05, 10.0)] = 1.0
    overlay: Annotated[str, Choice(list(OVERLAYS))] = "confidence"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    showPrototypes: bool = False
    compare: bool = False
