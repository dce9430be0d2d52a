"""The shipped demo models: load through load_model, valid cards, galleries, same budget."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS_DIR = os.path.join(ROOT, "Resources", "Models")
DEMO = {"dicece": "none", "dicece-hardace": "hard", "dicece-softace": "soft"}


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder)
               for f in files)


@pytest.mark.parametrize("name", sorted(DEMO))
def test_demo_model_loads_and_validates(name):
    from CalibSegLib.io import read_image
    from CalibSegLib.models import load_model, validate_card

    folder = os.path.join(MODELS_DIR, name)
    model = load_model(folder)
    with open(os.path.join(folder, "model.json"), encoding="utf-8") as fh:
        validate_card(json.load(fh), source=name)
    card = model.card
    assert card.name == name
    assert card.class_names == ("background", "grey matter", "white matter")
    assert card.is_prototype and card.temperature > 0
    training = card.training
    assert training["calibration_loss"] == DEMO[name]
    assert training["command"].startswith("calibseg train ")
    assert f"--calibration-loss {DEMO[name]}" in training["command"]
    assert training["data"]["train_seeds"] == "1-40" and training["data"]["val_seeds"] == "41-44"
    assert training["log_summary"]["steps"] == training["budget"]["total_steps"]
    for extra in ("training_log.json", "training_command.txt"):
        assert os.path.isfile(os.path.join(folder, extra))
    assert _folder_bytes(folder) <= 5 * 1024 * 1024
    catalogue = card.prototypes
    assert len(catalogue) == card.num_prototypes
    for entry in catalogue:
        assert entry["case"].startswith("mni-t1-shift")
        seed = int(entry["case"].rsplit("shift", 1)[1])
        assert 1 <= seed <= 40  # a training case, never an evaluation one
        crop, affine = read_image(os.path.join(folder, entry["gallery"]))
        (i0, i1), (j0, j1), (k0, k1) = entry["bbox"]
        assert crop.shape == (k1 - k0, j1 - j0, i1 - i0)
        i, j, k = entry["voxel"]
        assert i0 <= i < i1 and j0 <= j < j1 and k0 <= k < k1
        np.testing.assert_allclose((affine @ [i - i0, j - j0, k - k0, 1.0])[:3],
                                   entry["voxel_ras"], atol=1e-3)


def test_demo_models_differ_only_in_the_loss():
    from CalibSegLib.models.card import ModelCard

    configs = {}
    for name in DEMO:
        card = ModelCard.from_file(os.path.join(MODELS_DIR, name, "model.json"))
        config = dict(card.training["config"])
        for key in ("calibration_loss", "calibration_weight", "dice_checks"):
            config.pop(key, None)
        configs[name] = (config, card.network, card.head, card.patch_size, card.normalization)
    first = configs["dicece"]
    for name, value in configs.items():
        assert value == first, name


def test_a_gallery_voxel_has_the_prototype_class():
    """The recorded voxel of each prototype lies in its class in the regenerated case."""
    from CalibSegLib.data import sample_case
    from CalibSegLib.models.card import ModelCard

    card = ModelCard.from_file(os.path.join(MODELS_DIR, "dicece", "model.json"))
    cache: dict[str, np.ndarray] = {}
    for entry in card.prototypes[:: max(1, card.num_prototypes // 4)]:
        seed = int(entry["case"].rsplit("shift", 1)[1])
        if entry["case"] not in cache:
            cache[entry["case"]] = sample_case("mni-t1", 2.0, shift_seed=seed).labels
        i, j, k = entry["voxel"]
        assert int(cache[entry["case"]][k, j, i]) == entry["class"]
