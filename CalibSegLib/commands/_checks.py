"""Checks a command runs before any work: options, files, model folders, class names.

Everything here reads only small files (JSON cards, file headers) and imports
neither torch nor a network, so a wrong option or path fails within a second,
before a model is loaded. The overwrite rule is the library's
(:func:`CalibSegLib.files.refuse_overwrite`); this module adds its option.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import OVERWRITE_FLAG, check_image_file, read_json

#: Card and weight file names of a model folder (as in :mod:`CalibSegLib.models.card`,
#: repeated here so that checking a folder does not import torch).
CARD_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


def add_overwrite_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The ``--overwrite`` option every writing command takes."""
    parser.add_argument(OVERWRITE_FLAG, action="store_true",
                        help="replace existing outputs (without it the command refuses to "
                             "overwrite anything)")


def model_card(folder: str) -> dict:
    """The parsed ``model.json`` of a model folder, after checking the folder's files."""
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise CalibSegError(f"{folder} is a file; --model takes a model folder "
                                f"({CARD_FILE} + {WEIGHTS_FILE}).")
        raise CalibSegError(f"Model folder {folder} does not exist.")
    card_path = os.path.join(folder, CARD_FILE)
    if not os.path.isfile(card_path):
        raise CalibSegError(f"{folder} is not a CalibSeg model folder (no {CARD_FILE}); import "
                            "foreign models with 'calibseg import-model'.")
    card = read_json(card_path, dict, "model card")
    network = card.get("network") if isinstance(card.get("network"), dict) else {}
    weights = network.get("file") if network.get("architecture") == "torchscript" \
        else WEIGHTS_FILE
    if weights and not os.path.isfile(os.path.join(folder, weights)):
        raise CalibSegError(f"{folder}: the weights file {weights} is missing; copy the whole "
                            "model folder.")
    return card


def model_class_names(folder: str) -> tuple[str, ...]:
    """Class names of a model folder, read from its card only."""
    card = model_card(folder)
    classes = card.get("classes")
    if not isinstance(classes, list) or not classes:
        raise CalibSegError(f"{os.path.join(folder, CARD_FILE)}: the card lists no classes.")
    return tuple(str(c.get("name", i)) if isinstance(c, dict) else str(c)
                 for i, c in enumerate(classes))


def class_index(value: str | None, class_names: Sequence[str], folder: str) -> int | None:
    """A class given as a name (any case) or an index, checked against the model's classes."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
        return int(text)
    lowered = [c.lower() for c in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    known = ", ".join(f"{i} {name!r}" for i, name in enumerate(class_names))
    raise CalibSegError(f"Unknown class {value!r} (--class); the model in {folder} knows "
                        f"{known}.")


def input_image(path: str) -> None:
    """Refuse a missing, empty or text input before anything is loaded."""
    check_image_file(path)


def input_file(path: str | None, option: str) -> None:
    """Refuse a missing or empty file given to ``option``."""
    if path is None:
        return
    if not os.path.exists(path):
        raise CalibSegError(f"{option} {path}: no such file or folder.")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CalibSegError(f"{option} {path}: the file is empty.")
