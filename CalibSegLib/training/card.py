"""From a training configuration to a model card and folder (via :mod:`CalibSegLib.models`).

The card is the one place where the training settings meet the model format:
:func:`initial_card` describes the untrained network (so
:func:`CalibSegLib.models.build_network` builds exactly what is trained),
:func:`final_card` adds the fitted temperature, the prototype catalogue and
the training record, and :func:`save` writes the folder atomically with its
gallery, full training log and command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch

from CalibSegLib.calibration import ReliabilityStats, fit_temperature
from CalibSegLib.models import build_network, save_model
from CalibSegLib.models.card import new_card
from CalibSegLib.models.normalization import normalizer
from CalibSegLib.training.config import TrainConfig

INTENDED_USE = (
    "Demonstration and research on calibration and prototype explanations: brain tissue "
    "(background/CSF, grey matter, white matter) on T1-weighted MRI resampled to the card's "
    "spacing. Not for clinical use."
)
LIMITATIONS = (
    "Trained on synthetic variants (random affine deformation, bias field, gamma, lower "
    "resolution, noise) of a single template image, so it has seen one anatomy only; expect "
    "errors on real scans, other contrasts, pathology, skull-stripped or differently oriented "
    "images. Small network and short CPU training budget."
)
TRAINING_LOG_FILE = "training_log.json"
COMMAND_FILE = "training_command.txt"


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter RAS-style code of the direction of increasing ``i, j, k``.

    ``affine`` is the voxel-to-RAS matrix, an array of shape (4, 4).
    """
    letters = (("L", "R"), ("P", "A"), ("I", "S"))
    code = ""
    for column in np.asarray(affine, dtype=np.float64)[:3, :3].T:
        axis = int(np.argmax(np.abs(column)))
        code += letters[axis][int(column[axis] > 0)]
    return code if sorted(code.replace("L", "R").replace("P", "A").replace("I", "S")) == [
        "A", "R", "S"] else "RAS"


def initial_card(config: TrainConfig, name: str = "model", command: str | None = None,
                 data: dict | None = None, affine: np.ndarray | None = None,
                 class_colors: Sequence[Sequence[float]] | None = None):
    """The :class:`~CalibSegLib.models.ModelCard` of the untrained network.

    ``affine`` (voxel-to-RAS, array of shape (4, 4)) gives the spacing and orientation.
    """
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    spacing = [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)]
    return new_card(
        name, list(config.class_names), class_colors=class_colors, head=config.head,
        spacing_mm=spacing, orientation=orientation_code(affine),
        normalization={"type": "zscore"},
        patch_size=list(reversed(config.patch_size)),  # card: (X, Y, Z)
        channels=config.channels, strides=config.strides, num_res_units=config.num_res_units,
        feature_size=config.feature_dim, prototypes_per_class=config.prototypes_per_class,
        description=(f"MONAI UNet {list(config.channels)} with a {config.head} head, trained "
                     f"with Dice+CE" + ("" if config.calibration_loss == "none" else
                                        f" + {config.calibration_loss}-binned mL1-ACE "
                                        f"(weight {config.calibration_weight:g})") + "."),
        training={"command": command, "data": data or {}, "config": config.to_dict()},
        intended_use=INTENDED_USE, limitations=LIMITATIONS,
    )


def build(card) -> torch.nn.Module:
    """The untrained network of ``card``."""
    return build_network(card)


def normaliser(card):
    """``raw image -> network input`` as the card (and so inference) defines it."""
    return normalizer(card)


def loss_description(config: TrainConfig) -> dict:
    """The card's ``training.loss`` / ``training.weights`` entries."""
    terms = ["DiceCELoss (MONAI, softmax, one-hot labels, background included)"]
    weights = {"dice": 1.0, "ce": 1.0}
    if config.calibration_loss != "none":
        terms.append(f"{config.calibration_loss}-binned mL1-ACE ({config.bins} bins)")
        weights["ace"] = float(config.calibration_weight)
    if config.head == "prototype":
        terms.append("cluster cost (feature to nearest own-class prototype)")
        weights["cluster"] = float(config.cluster_weight)
        weights["last_layer_l1"] = float(config.last_layer_l1)
    return {"loss": " + ".join(terms), "calibration_loss": config.calibration_loss,
            "weights": weights}


def fit_validation_temperature(logits: Sequence[torch.Tensor],
                               labels: Sequence[np.ndarray]) -> float:
    """Temperature fitted on all validation voxels (``CalibSegLib.calibration``).

    ``logits`` are tensors of shape (C, Z, Y, X), ``labels`` arrays of shape (Z, Y, X).
    """
    flat = torch.cat([lg.reshape(lg.shape[0], -1) for lg in logits], dim=1)
    target = torch.cat([torch.from_numpy(np.asarray(lb, dtype=np.int64).reshape(-1))
                        for lb in labels])
    # all validation voxels as one (C, N, 1, 1) volume
    return float(fit_temperature(flat[:, :, None, None].numpy(), target[:, None, None].numpy()))


def validation_metrics(logits: Sequence[torch.Tensor], cases, temperature: float,
                       config: TrainConfig) -> dict:
    """Dice / ECE / ACE / NLL on the validation cases at T = 1 and at the fitted T.

    ``logits`` are tensors of shape (C, Z, Y, X), one per case of ``cases``.
    """
    out = {}
    for label, t in (("T=1", 1.0), ("fitted", float(temperature))):
        stats = None
        for lg, case in zip(logits, cases):
            probs = torch.softmax(lg.float() / t, dim=0)
            s = ReliabilityStats.from_probs(probs.numpy(), case.labels.astype(np.int64),
                                            n_bins=config.bins, image_id=case.case_id)
            stats = s if stats is None else stats.merge(s)
        assert stats is not None, "validation needs at least one case"
        metrics = stats.metrics().to_dict()
        out[label] = {k: v for k, v in metrics.items()
                      if k in ("ece", "ace", "mce", "marginal_ace", "marginal_ece",
                               "marginal_mce", "dice", "mean_dice", "nll", "brier")}
        out[label]["temperature"] = float(t)
    return out


def final_card(card, config: TrainConfig, temperature: float, catalogue: list[dict],
               history: list[dict], summary: dict):
    """``card`` with the temperature, prototype catalogue and training record filled in."""
    training = card.training
    training.update(loss_description(config))
    training.update({
        "budget": {"steps_by_stage": dict(config.stages()), "total_steps": config.total_steps,
                   "batch_size": config.batch_size,
                   "patch_size_xyz": list(reversed(config.patch_size)),
                   "learning_rate": config.learning_rate, "seed": config.seed},
        "log_summary": summary,
        "log_file": TRAINING_LOG_FILE,
        "temperature_fitted_on": "validation cases (all voxels), by NLL",
    })
    fields = {"temperature": float(temperature), "training": training}
    if config.head == "prototype":
        fields["prototypes"] = catalogue
    return card.replace(**fields)


def save(output: str, card, network: torch.nn.Module, history: list[dict],
         keep: Sequence[str] = ()) -> str:
    """Write the model folder (replacing ``output``) with gallery, log and command line."""
    extra: dict[str, str | bytes] = {
        TRAINING_LOG_FILE: json.dumps({"history": history,
                                       "summary": card.training.get("log_summary", {})},
                                      indent=1).encode(),
        COMMAND_FILE: ((card.training.get("command") or "") + "\n").encode(),
    }
    for entry in card.prototypes:
        if entry.get("gallery"):
            extra[entry["gallery"]] = os.path.join(output, entry["gallery"])
    for sub in keep:
        root = os.path.join(output, sub)
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            if not name.startswith("."):
                extra[f"{sub}/{name}"] = os.path.join(root, name)
    return save_model(output, card, network.cpu(), overwrite=True, extra_files=extra)
