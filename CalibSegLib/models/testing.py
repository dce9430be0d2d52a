"""Tiny, untrained model folders for tests and demos (real demo models are trained)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from CalibSegLib.models.card import new_card
from CalibSegLib.models.networks import build_network
from CalibSegLib.models.store import save_model


def tiny_model(folder: str, head: str = "prototype", num_classes: int = 3, seed: int = 0, *,
               class_names: Sequence[str] | None = None,
               spacing_mm: Sequence[float] = (4.0, 4.0, 4.0),
               patch_size: Sequence[int] = (32, 32, 32), overwrite: bool = False,
               **card_fields: Any) -> str:
    """Build and save an untrained tiny model folder; return its path.

    Parameters
    ----------
    folder : str
        Target folder (must not exist unless ``overwrite``).
    head : {"prototype", "linear"}
    num_classes : int
    seed : int
        Seeds the weights, so the same arguments give the same model.
    class_names, spacing_mm, patch_size, overwrite, **card_fields
        Passed to :func:`CalibSegLib.models.card.new_card` (defaults: channels
        ``(4, 8, 16)``, 8 features, 2 prototypes per class, 4 mm, 32³ windows).
    """
    names = list(class_names) if class_names is not None else (
        ["background"] + [f"class {i}" for i in range(1, num_classes)])
    defaults: dict[str, Any] = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1,
                "feature_size": 8, "prototypes_per_class": 2}
    defaults.update(card_fields)
    card = new_card(f"tiny-{head}", names, head=head, spacing_mm=spacing_mm,
                    patch_size=patch_size,
                    description="Untrained tiny network for tests; its output is meaningless.",
                    limitations="Untrained: for software tests only.", **defaults)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        network = build_network(card)
    finally:
        torch.random.set_rng_state(state)
    return save_model(folder, card, network, overwrite=overwrite)
