"""Models: the model card, networks (U-Net + linear or prototype head), model folders, imports.

A model is a folder with ``model.json`` (the :class:`ModelCard`) and
``model.safetensors`` (weights); see ``docs/models.md``.
"""

from CalibSegLib.models.card import (
    CARD_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    ModelCard,
    card_schema,
    new_card,
    validate_card,
)
from CalibSegLib.models.networks import LinearSegNet, PrototypeSegNet, build_network
from CalibSegLib.models.normalization import normalize_intensity, normalizer
from CalibSegLib.models.store import Model, load_model, save_model

__all__ = [
    "CARD_FILE", "TORCHSCRIPT_FILE", "WEIGHTS_FILE", "LinearSegNet", "Model", "ModelCard",
    "PrototypeSegNet", "build_network", "card_schema", "load_model", "new_card",
    "normalize_intensity", "normalizer", "save_model", "validate_card",
]
