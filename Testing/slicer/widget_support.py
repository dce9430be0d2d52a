"""A stand-in for the panel's Qt widgets, built from ``CalibSeg.ui`` (no tests here).

Every widget named in the .ui file becomes a small object with the properties and
calls the panel uses (``enabled``, ``text``, ``value``, ``currentNode()``, combo-box
items ...), so the panel can only touch widgets that exist in the real panel. Signals
are not emitted: a test calls the panel method that :data:`CalibSegPanel.SIGNALS`
connects, as Qt would.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UI_FILE = os.path.join(ROOT, "CalibSeg", "Resources", "UI", "CalibSeg.ui")


class FakeWidget:
    def __init__(self, name: str) -> None:
        self.objectName = name
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.text = ""
        self.value = 0.0
        self.checked = False
        self.directory = ""
        self.currentPath = ""
        self._blocked = False

    def blockSignals(self, block: bool) -> bool:
        old, self._blocked = self._blocked, bool(block)
        return old


class FakeNodeComboBox(FakeWidget):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.node = None

    def currentNode(self):
        return self.node


class FakeComboBox(FakeWidget):
    def __init__(self, name: str, texts=()) -> None:
        super().__init__(name)
        self.items = [(t, None) for t in texts]
        self.currentIndex = 0 if self.items else -1

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def currentText(self) -> str:
        return self.items[self.currentIndex][0] if 0 <= self.currentIndex < self.count else ""

    def addItem(self, text, data=None) -> None:
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def clear(self) -> None:
        self.items, self.currentIndex = [], -1

    def itemData(self, index: int):
        return self.items[index][1]

    def findData(self, data) -> int:
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def findText(self, text) -> int:
        return next((i for i, (t, _) in enumerate(self.items) if t == text), -1)

    def select(self, text: str) -> None:
        index = self.findText(text)
        assert index >= 0, (text, self.items)
        self.currentIndex = index


def fake_ui() -> SimpleNamespace:
    """One fake per widget of CalibSeg.ui, named as in the file."""
    widgets = {}
    for widget in ET.parse(UI_FILE).iter("widget"):
        name, cls = widget.get("name"), widget.get("class")
        if cls == "qMRMLNodeComboBox":
            widgets[name] = FakeNodeComboBox(name)
        elif cls == "QComboBox":
            texts = [item.find("property/string").text for item in widget.findall("item")]
            widgets[name] = FakeComboBox(name, texts)
        else:
            widgets[name] = FakeWidget(name)
    ui = SimpleNamespace(**widgets)
    ui.opacitySlider.value = 0.6
    ui.temperatureSlider.value = 1.0
    return ui


class ManualDebounce:
    """The slider's pause, under the test's control: :meth:`fire` is the pause."""

    def __init__(self) -> None:
        self.callback = None
        self.scheduled = 0

    def schedule(self, callback) -> None:
        self.callback = callback
        self.scheduled += 1

    def fire(self) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


def model_with_temperature(source: str, folder: str, name: str, temperature: float,
                           **fields) -> str:
    """A copy of model folder ``source`` whose card has another name and fitted temperature."""
    if not os.path.isdir(folder):
        shutil.copytree(source, folder)
        path = os.path.join(folder, "model.json")
        with open(path, encoding="utf-8") as fh:
            card = json.load(fh)
        card.update(name=name, temperature=temperature, **fields)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(card, fh, indent=2)
    return folder


def count_by_class(scene) -> dict[str, int]:
    """Number of nodes of each MRML class in ``scene``."""
    counts: dict[str, int] = {}
    for i in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(i).GetClassName()
        counts[name] = counts.get(name, 0) + 1
    return counts


def run_until_idle(panel, limit: int = 50) -> None:
    """Poll the panel as its timer would until no job remains."""
    for _ in range(limit):
        if not panel.poll():
            return
    raise AssertionError("jobs still running")
