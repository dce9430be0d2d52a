"""The module's parameter node (Slicer's ``parameterNodeWrapper``).

Widgets whose ``SlicerParameterName`` property names a field here are kept in
sync with it by ``connectGui``; the model folders are plain strings set by the
widget (path line edits have no string connector).
"""

from __future__ import annotations

from typing import Annotated

import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from CalibSegSlicer.logic import OVERLAYS


@parameterNodeWrapper
class CalibSegParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    reference: slicer.vtkMRMLNode
    modelA: str = ""
    modelB: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    temperature: Annotated[float, WithinRange(0.05, 10.0)] = 1.0
    overlay: Annotated[str, Choice(list(OVERLAYS))] = "confidence"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    showPrototypes: bool = False
    compare: bool = False
