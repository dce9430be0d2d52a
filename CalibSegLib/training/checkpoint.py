"""Training checkpoints without pickle: safetensors tensors plus a JSON state.

A checkpoint folder holds ``weights-<step>.safetensors`` (network),
``optimizer-<step>.safetensors`` (optimiser tensors) and ``state.json``. The
JSON is written last and atomically and names the tensor files it belongs to,
so an interruption at any moment leaves the previous checkpoint readable.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import atomic_path, read_json

FORMAT = "calibseg-checkpoint/1"
STATE_FILE = "state.json"


def _save_tensors(path: str, tensors: dict[str, torch.Tensor]) -> None:
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, tmp)


def _load_tensors(path: str) -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise CalibSegError(f"Checkpoint file {path} is missing; the checkpoint is incomplete.")
    return load_file(path)


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors (``state.<param>.<key>``) and JSON data.

    Each tensor keeps its shape, that of its parameter (e.g. Adam's ``exp_avg`` of a 3D
    convolution's weight has shape (C_out, C_in, kZ, kY, kX)).
    """
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            name = f"state.{index}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value
            else:
                scalars[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Rebuild an optimiser state dict from :func:`optimizer_to_flat` output.

    ``tensors`` keep the shapes of their parameters (a 3D convolution's weight: shape
    (C_out, C_in, kZ, kY, kX)).
    """
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: str,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict,
) -> str:
    """Write a checkpoint of ``network`` (+ ``optimizer``) and the JSON-able ``state``.

    ``state`` must hold an integer ``step``. Returns the path of ``state.json``.
    """
    os.makedirs(folder, exist_ok=True)
    step = int(state["step"])
    weights_name = f"weights-{step:07d}.safetensors"
    optim_name = f"optimizer-{step:07d}.safetensors"
    _save_tensors(os.path.join(folder, weights_name), network.state_dict())
    optim_meta = None
    if optimizer is not None:
        tensors, optim_meta = optimizer_to_flat(optimizer)
        _save_tensors(os.path.join(folder, optim_name), tensors)
    record = {
        "format": FORMAT,
        **state,
        "weights": weights_name,
        "optimizer": optim_name if optimizer is not None else None,
        "optimizer_meta": optim_meta,
    }
    path = os.path.join(folder, STATE_FILE)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
    keep = {weights_name, optim_name}
    for name in os.listdir(folder):
        if name.endswith(".safetensors") and name not in keep:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
    return path


def has_checkpoint(folder: str) -> bool:
    """Whether ``folder`` holds a checkpoint."""
    return os.path.isfile(os.path.join(folder, STATE_FILE))


def load_checkpoint(folder: str) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """Read a checkpoint: ``(state, network state dict, optimiser state dict or None)``.

    The state dict's tensors have their parameters' shapes (a 3D convolution's weight:
    shape (C_out, C_in, kZ, kY, kX)).
    """
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        raise CalibSegError(
            f"No checkpoint in {folder}; start without --resume or point at the model folder "
            "of an interrupted run."
        )
    state = read_json(path, dict, "checkpoint state")
    if state.get("format") != FORMAT:
        raise CalibSegError(f"{path}: not a CalibSeg checkpoint (format {state.get('format')!r}).")
    weights = _load_tensors(os.path.join(folder, state["weights"]))
    optim = None
    if state.get("optimizer"):
        tensors = _load_tensors(os.path.join(folder, state["optimizer"]))
        optim = optimizer_from_flat(tensors, state["optimizer_meta"])
    return state, weights, optim
