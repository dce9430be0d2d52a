"""Slicer's rule for the parameter node: every MRML class annotated in it is concrete.

``connectGui`` instantiates each annotated MRML class of a node field to learn the node
types of its combo box; an abstract class (``vtkMRMLNode``) raises ``TypeError`` in
Slicer, and so does ``slicer-core``. ``slicer.parameterNodeWrapper`` is not part of
``slicer-core``, so a small stand-in module records the class as declared.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import typing

import pytest

slicer = pytest.importorskip("slicer")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "CalibSeg"))

pytestmark = pytest.mark.mrml


def _wrapper_standin() -> types.ModuleType:
    """``slicer.parameterNodeWrapper`` as far as a class declaration needs it."""
    module = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices):
            self.choices = list(choices)

    class WithinRange:
        def __init__(self, low, high):
            self.low, self.high = low, high

    module.Choice, module.WithinRange = Choice, WithinRange
    module.parameterNodeWrapper = lambda cls: cls
    return module


@pytest.fixture
def parameter_class(monkeypatch):
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", _wrapper_standin())
    monkeypatch.setattr(slicer, "parameterNodeWrapper", sys.modules["slicer.parameterNodeWrapper"],
                        raising=False)
    monkeypatch.delitem(sys.modules, "CalibSegSlicer.parameters", raising=False)
    module = importlib.import_module("CalibSegSlicer.parameters")
    yield module.CalibSegParameterNode
    sys.modules.pop("CalibSegSlicer.parameters", None)


def mrml_classes(annotation) -> list[type]:
    """MRML node classes inside an annotation (through Annotated, Union, Optional)."""
    if isinstance(annotation, type):
        return [annotation] if issubclass(annotation, slicer.vtkMRMLNode) else []
    return [c for arg in typing.get_args(annotation) for c in mrml_classes(arg)]


def test_every_annotated_mrml_class_is_concrete(parameter_class):
    hints = typing.get_type_hints(parameter_class, include_extras=True)
    node_fields = {name: mrml_classes(hint) for name, hint in hints.items()}
    node_fields = {name: classes for name, classes in node_fields.items() if classes}
    assert set(node_fields) == {"inputVolume", "reference"}
    for name, classes in node_fields.items():
        for cls in classes:
            node = cls()  # what connectGui does; an abstract class raises TypeError
            assert node.IsA(cls.__name__), (name, cls)


def test_reference_accepts_label_maps_and_segmentations(parameter_class):
    hint = typing.get_type_hints(parameter_class)["reference"]
    assert {c.__name__ for c in mrml_classes(hint)} == {
        "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"}


def test_abstract_classes_are_refused_by_slicer_core():
    """The check above can fail: slicer-core refuses an abstract class as Slicer does."""
    with pytest.raises(TypeError, match="abstract"):
        slicer.vtkMRMLNode()
    with pytest.raises(TypeError, match="abstract"):
        slicer.vtkMRMLVolumeNode()


def test_one_temperature_per_model_in_the_parameter_node(parameter_class):
    hints = typing.get_type_hints(parameter_class)
    assert {"temperatureA", "temperatureB", "temperatureSlot"} <= set(hints)
    assert "temperature" not in hints
