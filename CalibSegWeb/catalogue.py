"""The models the page may offer: shipped model folders plus the configured ones.

The page chooses a model by its catalogue id only; no path typed or sent by the page is
ever opened. A configured folder is either a model folder (with ``model.json``) or a
folder of model folders (one level deep).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import CARD_FILE, ModelCard

#: Environment variable with more model folders (``os.pathsep``-separated).
MODEL_DIRS_ENV = "CALIBSEG_MODEL_DIRS"


@dataclass(frozen=True)
class CatalogueEntry:
    """One model folder the page can offer, with its card summary (or why it cannot be used)."""

    id: str
    folder: str
    shipped: bool
    card: ModelCard | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        name = self.card.name if self.card is not None else os.path.basename(self.folder)
        origin = "shipped" if self.shipped else "configured"
        return f"{name} ({origin})" if self.error is None else f"{name} (not usable)"

    def summary(self) -> dict:
        """The card as the page shows it: plain JSON values."""
        if self.card is None:
            return {"id": self.id, "label": self.label, "error": self.error}
        card = self.card
        training = card.training or {}
        return {
            "id": self.id, "label": self.label, "error": self.error,
            "name": card.name, "version": card.version, "description": card.description,
            "classes": list(card.class_names), "temperature": round(card.temperature, 4),
            "loss": " + ".join(str(v) for v in (training.get("loss"),
                                                training.get("calibration_loss"))
                               if v and v != "none"),
            "prototypes": card.num_prototypes if card.is_prototype else 0,
            "intended_use": card.intended_use, "limitations": card.limitations,
        }


@dataclass
class ModelCatalogue:
    """The ordered list of model folders offered to the page."""

    entries: list[CatalogueEntry] = field(default_factory=list)

    @classmethod
    def build(cls, shipped: list[str], configured: list[str]) -> ModelCatalogue:
        """Catalogue of ``shipped`` model folders, then ``configured`` ones (and the env's)."""
        extra = [p for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p]
        seen: set[str] = set()
        entries: list[CatalogueEntry] = []
        for folders, isShipped in ((shipped, True), (list(configured) + extra, False)):
            for folder in _expand(folders):
                key = os.path.realpath(folder)
                if key in seen:
                    continue
                seen.add(key)
                entries.append(_entry(f"m{len(entries)}", folder, isShipped))
        return cls(entries)

    def get(self, entryId: str) -> CatalogueEntry:
        """The entry with id ``entryId``; a :class:`CalibSegError` for any other value."""
        for entry in self.entries:
            if entry.id == entryId:
                return entry
        raise CalibSegError(f"Unknown model {entryId!r}: choose a model from the list.")

    def summaries(self) -> list[dict]:
        return [e.summary() for e in self.entries]


def _expand(folders: list[str]) -> list[str]:
    """Model folders: each folder itself when it has a card, else its sub-folders with one."""
    out = []
    for folder in folders:
        folder = os.path.abspath(os.path.expanduser(folder))
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, CARD_FILE)):
            subs = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
            subs = [s for s in subs if os.path.isfile(os.path.join(s, CARD_FILE))]
            if subs:
                out.extend(subs)
                continue
        out.append(folder)
    return out


def _entry(entryId: str, folder: str, shipped: bool) -> CatalogueEntry:
    card_path = os.path.join(folder, CARD_FILE)
    if not os.path.isfile(card_path):
        return CatalogueEntry(entryId, folder, shipped, error=(
            f"{folder} is not a model folder (no {CARD_FILE}); configure a folder made by "
            "'calibseg train' or 'calibseg import-model'."))
    try:
        return CatalogueEntry(entryId, folder, shipped, card=ModelCard.from_file(card_path))
    except CalibSegError as exc:
        return CatalogueEntry(entryId, folder, shipped, error=str(exc))
