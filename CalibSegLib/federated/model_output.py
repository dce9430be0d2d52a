"""Writing the model a federated task produced: a complete folder with a new name and version.

A recalibrated or fine-tuned model is a new model. Its folder keeps everything of the
base model's folder that still describes it (``gallery/`` prototype crops, the training
command and log, any other free files), gets a new name (``<name>-calibrated``,
``<name>-fed``) and a bumped version, and records in the card's ``training`` section what
was changed, from which model, by which federation.
"""

from __future__ import annotations

import datetime
import os
import re

from CalibSegLib.io import refuse_overwrite
from CalibSegLib.models import save_model

#: Files of a model folder that are rewritten, never copied from the base model.
_REWRITTEN = ("model.json", "model.safetensors", "model.ts")


def bump_version(version: str) -> str:
    """``"0.1"`` -> ``"0.2"``, ``"1.4.9"`` -> ``"1.4.10"``; other forms gain ``".1"``."""
    match = re.fullmatch(r"(.*?)(\d+)", version.strip())
    if not match:
        return f"{version}.1"
    return f"{match.group(1)}{int(match.group(2)) + 1}"


def base_files(folder: str | None) -> dict[str, str]:
    """Relative path -> source path of every file of ``folder`` carried into a derived model."""
    if not folder or not os.path.isdir(folder):
        return {}
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel in _REWRITTEN or name.startswith("."):
                continue
            out[rel] = os.path.join(root, name)
    return out


def save_derived_model(output: str, model, network, *, suffix: str, record_key: str,
                       change: str, details: dict, name: str | None = None,
                       overwrite: bool = False, **card_changes) -> str:
    """Write ``network`` as a new model derived from ``model`` (a loaded base model).

    Parameters
    ----------
    output
        The new folder (must not exist unless ``overwrite``).
    model
        The base :class:`~CalibSegLib.models.Model`; its folder's free files are copied.
    network
        The new weights (the base network when only the card changes).
    suffix, name
        The new name is ``name`` or ``<base name>-<suffix>``.
    record_key, change, details
        What was done (one line, in ``training.derived_from``) and its full record
        (``training.<record_key>``).
    card_changes
        Further card fields to set (e.g. ``temperature``).
    """
    refuse_overwrite([output], overwrite)
    base = model.card
    training = dict(base.training or {})
    training["derived_from"] = {
        "name": base.name, "version": base.version, "change": change,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    training[record_key] = details
    card = base.replace(name=name or f"{base.name}-{suffix}",
                        version=bump_version(base.version), training=training, **card_changes)
    return save_model(output, card, network, overwrite=overwrite,
                      extra_files=base_files(model.folder))
