"""The models the page may offer: the Slicer module's model list on the configured folders.

The list is :class:`CalibSegSlicer.catalog.ModelCatalog` (the shipped models, then the
folders given with ``--model`` or in ``CALIBSEG_MODEL_DIRS``, held in memory instead of
Slicer's settings). The page chooses a model by its catalogue id only; no path typed or
sent by the page is ever opened. A configured folder without a readable model stays in
the list as an entry that cannot run, so choosing it shows why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from CalibSegSlicer.catalog import MemorySettings, ModelCatalog, cardText

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import ModelCard

#: Environment variable with more model folders (``os.pathsep``-separated).
MODEL_DIRS_ENV = "CALIBSEG_MODEL_DIRS"


@dataclass(frozen=True)
class CatalogueEntry:
    """One model folder the page can offer, with its card (or why it cannot be used)."""

    id: str
    folder: str
    shipped: bool
    card: ModelCard | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        if self.card is None:
            return f"{os.path.basename(self.folder)} (not usable)"
        return f"{self.card.name} ({'shipped' if self.shipped else 'configured'})"

    def summary(self) -> dict:
        """What the page shows before a run: plain JSON values."""
        if self.card is None:
            return {"id": self.id, "label": self.label, "error": self.error}
        card = self.card
        return {"id": self.id, "label": self.label, "error": None, "name": card.name,
                "version": card.version, "classes": list(card.class_names),
                "temperature": round(card.temperature, 4), "text": cardText(card)}


@dataclass
class ModelCatalogue:
    """The ordered list of models offered to the page (ids ``m0``, ``m1`` …)."""

    entries: list[CatalogueEntry] = field(default_factory=list)

    @classmethod
    def build(cls, shipped: list[str], configured: list[str]) -> ModelCatalogue:
        """Shipped model folders, then ``configured`` ones and those of the environment."""
        extra = [p for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p]
        catalog = ModelCatalog(MemorySettings(), shippedFolders=shipped)
        unusable: dict[str, str] = {}
        for folder in list(configured) + extra:
            folder = os.path.abspath(os.path.expanduser(folder))
            try:
                catalog.addFolder(folder)
            except CalibSegError as exc:
                unusable[folder] = str(exc)
        models = catalog.entries(reread=True)
        unusable.update(catalog.problems)
        entries = [CatalogueEntry(f"m{i}", e.folder, e.shipped, card=e.card)
                   for i, e in enumerate(models)]
        entries += [CatalogueEntry(f"m{len(entries) + i}", folder, False, error=message)
                    for i, (folder, message) in enumerate(unusable.items())]
        return cls(entries)

    def get(self, entryId: str) -> CatalogueEntry:
        """The entry with id ``entryId``; a :class:`CalibSegError` for any other value."""
        for entry in self.entries:
            if entry.id == entryId:
                return entry
        raise CalibSegError(f"Unknown model {entryId!r}: choose a model from the list.")
