"""The model list: models shipped with the extension plus the user's model folders.

A user's folders are remembered in the application settings (in Slicer its
``QSettings``) through the two calls of :class:`Settings`, so tests pass an
in-memory :class:`MemorySettings`. A folder is a model folder (with ``model.json``)
or a folder of model folders. Each entry carries its validated card, shown
before anything runs (:func:`cardText`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import CARD_FILE, Model, ModelCard, load_model

#: Settings key of the user's model folders (a JSON list of paths).
FOLDERS_KEY = "CalibSeg/ModelFolders"
#: Settings key of the folder imported models are written into.
IMPORT_FOLDER_KEY = "CalibSeg/ImportFolder"


class Settings(Protocol):
    """The two calls of ``QSettings`` the model list uses."""

    def value(self, key: str, defaultValue: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...


class MemorySettings:
    """Settings held in a dict (scripts without Slicer's settings, and tests)."""

    def __init__(self, values: dict | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})

    def value(self, key: str, defaultValue: Any = None) -> Any:
        return self.values.get(key, defaultValue)

    def setValue(self, key: str, value: Any) -> None:
        self.values[key] = value


@dataclass(frozen=True)
class ModelEntry:
    """One model of the list: its folder, its card, and whether it ships with the extension."""

    folder: str
    card: ModelCard
    shipped: bool

    @property
    def label(self) -> str:
        """The text shown in the model selector."""
        where = "" if self.shipped else "  [" + os.path.basename(os.path.dirname(self.folder)) + "]"
        return f"{self.card.name} {self.card.version}{where}"


def cardText(card: ModelCard) -> str:
    """What a user reads before running a model: name, classes, head, training loss, network
    output, fitted temperature, intended use, limitations (and an import's review notes)."""
    training = card.training
    lines = [f"{card.name} (version {card.version})"]
    if card.description:
        lines.append(card.description)
    lines.append("Classes: " + ", ".join(card.class_names))
    lines.append(f"Head: {card.head_type}"
                 + (f" ({card.num_prototypes} prototypes)" if card.is_prototype else ""))
    if training.get("loss"):
        lines.append(f"Training loss: {training['loss']}")
    lines.append(f"Network output: {card.output_kind.replace('_', '-')}")
    lines.append(f"Temperature (fitted): {card.temperature:.3g}")
    lines.append(f"Intended use: {card.intended_use or 'not stated in the card'}")
    lines.append(f"Limitations: {card.limitations or 'not stated in the card'}")
    if card.review_notes:
        lines.append("Imported; review before use: " + " ".join(card.review_notes))
    return "\n".join(lines)


def modelFoldersIn(folder: str) -> list[str]:
    """``folder`` itself when it is a model folder, else its model sub-folders (sorted)."""
    if os.path.isfile(os.path.join(folder, CARD_FILE)):
        return [os.path.normpath(folder)]
    if not os.path.isdir(folder):
        return []
    return [os.path.normpath(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, name, CARD_FILE))]


def loadModel(folder: str) -> Model:
    """Load a model folder with CalibSegLib; a clear error when none is chosen."""
    if not folder:
        raise CalibSegError("No model selected: choose a model in the list.")
    if not os.path.isdir(folder):
        raise CalibSegError(f"Model folder {folder} does not exist; choose another model.")
    return load_model(folder)


class ModelCatalog:
    """Shipped models plus the user's folders (remembered in ``settings``)."""

    def __init__(self, settings: Settings, shippedFolders: Sequence[str] = ()) -> None:
        self.settings = settings
        self.shippedFolders = [os.path.normpath(f) for f in shippedFolders]
        #: folders that could not be read at the last :meth:`entries` call, with the reason
        self.problems: dict[str, str] = {}
        self._entries: list[ModelEntry] | None = None

    def userFolders(self) -> list[str]:
        """The user's folders, as remembered in the settings."""
        text = self.settings.value(FOLDERS_KEY, "[]") or "[]"
        try:
            folders = json.loads(text)
        except (TypeError, ValueError):
            return []
        return [str(f) for f in folders if isinstance(f, str)]

    def _remember(self, folders: list[str]) -> None:
        self.settings.setValue(FOLDERS_KEY, json.dumps(folders))

    def entries(self, reread: bool = False) -> list[ModelEntry]:
        """Every readable model: shipped first, then the user's (each folder once).

        Cards are read once and kept; ``reread`` reads the folders again.
        """
        if self._entries is not None and not reread:
            return list(self._entries)
        seen, out = set(), []
        self.problems = {}
        sources = [(f, True) for f in self.shippedFolders] + \
            [(f, False) for f in self.userFolders()]
        for source, shipped in sources:
            for folder in modelFoldersIn(source):
                if folder in seen:
                    continue
                seen.add(folder)
                try:
                    card = ModelCard.from_file(os.path.join(folder, CARD_FILE))
                except CalibSegError as exc:
                    self.problems[folder] = str(exc)
                    continue
                out.append(ModelEntry(folder, card, shipped))
        self._entries = out
        return list(out)

    def find(self, folder: str) -> ModelEntry | None:
        """The entry of model folder ``folder`` (None when it is not in the list)."""
        target = os.path.normpath(folder) if folder else ""
        return next((e for e in self.entries() if e.folder == target), None)

    def addFolder(self, folder: str) -> list[ModelEntry]:
        """Remember ``folder`` (a model folder or a folder of them); return its models.

        Raises
        ------
        CalibSegError
            When the folder holds no readable model (nothing is remembered then).
        """
        folder = os.path.normpath(os.path.abspath(folder))
        found = modelFoldersIn(folder)
        if not found:
            raise CalibSegError(f"{folder} holds no model (no {CARD_FILE}); choose a model "
                                "folder or import a model first.")
        for model in found:
            ModelCard.from_file(os.path.join(model, CARD_FILE))  # a bad card: one clear error
        folders = self.userFolders()
        if folder not in folders and folder not in self.shippedFolders:
            self._remember(folders + [folder])
        return [e for e in self.entries(reread=True) if e.folder in found]

    def importFolder(self) -> str:
        """The folder imported models are written into (a setting; default in the home)."""
        default = os.path.join(os.path.expanduser("~"), "CalibSeg models")
        return str(self.settings.value(IMPORT_FOLDER_KEY, default) or default)

    def importDestination(self, source: str) -> str:
        """A new, not yet existing folder for importing ``source`` (its parent is created)."""
        os.makedirs(self.importFolder(), exist_ok=True)
        stem = os.path.basename(os.path.normpath(source))
        for suffix in (".ts", ".pt", ".pth", ".zip"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        base = os.path.join(self.importFolder(), stem or "model")
        path, n = base, 1
        while os.path.exists(path):
            n += 1
            path = f"{base}-{n}"
        return path
