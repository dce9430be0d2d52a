"""Model folders on disk: loading (validated, never unpickling) and atomic saving.

A model folder holds ``model.json`` (the card), ``model.safetensors`` (weights;
``model.ts`` for TorchScript models), an optional ``gallery/`` of prototype
crops and any free files (training log ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import refuse_overwrite, uniform_file_modes
from CalibSegLib.models.card import CARD_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE, ModelCard
from CalibSegLib.models.networks import build_network

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Model:
    """A loaded model: its card and its network (in eval mode).

    Attributes
    ----------
    card : ModelCard
    network : torch.nn.Module
        ``(B, 1, Z, Y, X) -> (B, C, Z, Y, X)`` logits; eval mode.
    folder : str or None
        Where it was loaded from (None for an in-memory model).
    """

    card: ModelCard
    network: nn.Module = field(repr=False)
    folder: str | None = None
    _device: torch.device = field(default=torch.device("cpu"), repr=False)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The card's class names, background first."""
        return self.card.class_names

    @property
    def class_colors(self) -> tuple[tuple[float, float, float], ...]:
        """The card's RGB colour per class, components in [0, 1]."""
        return self.card.class_colors

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes (background included)."""
        return self.card.num_classes

    @property
    def temperature(self) -> float:
        """The card's calibration temperature."""
        return self.card.temperature

    @property
    def is_prototype(self) -> bool:
        """Whether the network has a prototype head."""
        return self.card.is_prototype

    @property
    def name(self) -> str:
        """The card's model name."""
        return self.card.name

    @property
    def version(self) -> str:
        """The card's model version."""
        return self.card.version

    @property
    def device(self) -> torch.device:
        """Device of the network's parameters (CPU for a parameter-free network)."""
        for tensor in (*self.network.parameters(), *self.network.buffers()):
            return tensor.device
        return self._device

    def gallery_path(self, name: str) -> str | None:
        """Absolute path of a file named in the card (e.g. a prototype's ``gallery``)."""
        if self.folder is None or not name:
            return None
        path = os.path.normpath(os.path.join(self.folder, name))
        if not path.startswith(os.path.normpath(self.folder) + os.sep):
            raise CalibSegError(f"Gallery path {name!r} points outside the model folder.")
        return path


def _read_safetensors(path: str, device: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CalibSegError(f"{path} is missing; the model folder needs its weights file.")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CalibSegError(f"{path}: not a readable safetensors file ({exc}).") from exc


def check_state_dict(network: nn.Module, tensors: Mapping[str, torch.Tensor],
                     source: str) -> None:
    """Raise :class:`CalibSegError` naming missing, unexpected or mis-shaped tensors.

    Each tensor must have the shape of the network's own, e.g. a 3D convolution's
    weight of shape (C_out, C_in, kZ, kY, kX).
    """
    expected = network.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    shapes = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in sorted(set(expected) & set(tensors))
              if tuple(tensors[k].shape) != tuple(expected[k].shape)]

    def some(names: list[str]) -> str:
        return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")

    problems = []
    if missing:
        problems.append(f"missing tensors: {some(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {some(extra)}")
    if shapes:
        problems.append(f"shape mismatches: {some(shapes)}")
    if problems:
        raise CalibSegError(
            f"{source}: the weights do not fit the network the card describes ("
            + "; ".join(problems) + "). Check the card's network/head fields or the weights file."
        )


def load_model(folder: str, device: str | torch.device = "cpu") -> Model:
    """Load a model folder: validate the card, build the network and load its weights.

    Parameters
    ----------
    folder : str
        A folder with ``model.json`` and ``model.safetensors`` (or ``model.ts``).
    device : str or torch.device
        Where the network goes (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).

    Returns
    -------
    Model
        With the network in eval mode.

    Raises
    ------
    CalibSegError
        Missing folder or files, invalid card (naming the field), weights that do
        not match the card (naming the tensors). Nothing is ever unpickled.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise CalibSegError(f"Model folder {folder} does not exist.")
    card_path = os.path.join(folder, CARD_FILE)
    if not os.path.isfile(card_path):
        raise CalibSegError(
            f"{folder} is not a CalibSeg model folder (no {CARD_FILE}); import foreign models "
            "with 'calibseg import-model'."
        )
    card = ModelCard.from_file(card_path)
    device = torch.device(device)
    if card.architecture == "torchscript":
        path = os.path.join(folder, card.network["file"])
        network = load_torchscript(path, device)
    else:
        network = build_network(card)
        weights_path = os.path.join(folder, WEIGHTS_FILE)
        tensors = _read_safetensors(weights_path, "cpu")
        check_state_dict(network, tensors, weights_path)
        network.load_state_dict(tensors, strict=True)
        network.to(device)
    network.eval()
    return Model(card=card, network=network, folder=folder, _device=device)


def load_torchscript(path: str, device: str | torch.device = "cpu") -> nn.Module:
    """Load a TorchScript archive (``torch.jit.load``; no Python pickle is run)."""
    if not os.path.isfile(path):
        raise CalibSegError(f"{path} is missing; the TorchScript model file is needed.")
    try:
        return torch.jit.load(path, map_location=torch.device(device))
    except Exception as exc:  # torch raises RuntimeError/ValueError variants
        raise CalibSegError(
            f"{path}: not a TorchScript archive ({str(exc).strip().splitlines()[0][:200]}). "
            "Export the model with torch.jit.script/trace and torch.jit.save."
        ) from exc


def save_model(folder: str, card: ModelCard | Mapping, network: nn.Module, *,
               overwrite: bool = False, extra_files: Mapping[str, str | bytes] | None = None
               ) -> str:
    """Write a model folder atomically (temporary folder, then rename).

    Parameters
    ----------
    folder : str
        Target folder; must not exist unless ``overwrite``.
    card : ModelCard or mapping
        Validated; for ``monai.UNet``/``BasicUNet``/``bundle`` networks the weights
        must fit the network the card describes.
    network : torch.nn.Module
        Its ``state_dict`` goes to ``model.safetensors``; a TorchScript module (card
        architecture ``torchscript``) is saved as ``model.ts`` instead (safetensors
        cannot hold TorchScript code).
    overwrite : bool
        Replace an existing folder.
    extra_files : mapping, optional
        ``{relative path: source file path or bytes}`` copied in (training log,
        ``gallery/proto_000.nii.gz`` ...).

    Returns
    -------
    str
        The folder's absolute path.
    """
    if not isinstance(card, ModelCard):
        card = ModelCard(card)
    folder = os.path.abspath(os.fspath(folder))
    refuse_overwrite([folder], overwrite)
    parent = os.path.dirname(folder)
    if not os.path.isdir(parent):
        raise CalibSegError(f"Folder {parent} does not exist; create it first.")
    tmp = tempfile.mkdtemp(prefix=".calibseg-model-", dir=parent)
    try:
        _write_weights(tmp, card, network)
        with open(os.path.join(tmp, CARD_FILE), "w", encoding="utf-8") as fh:
            fh.write(card.to_json())
        for name, source in (extra_files or {}).items():
            target = os.path.normpath(os.path.join(tmp, name))
            if not target.startswith(tmp + os.sep) or name in (CARD_FILE, WEIGHTS_FILE):
                raise CalibSegError(f"Extra file name {name!r} is not allowed in a model folder.")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if isinstance(source, bytes):
                with open(target, "wb") as fh:
                    fh.write(source)
            else:
                shutil.copyfile(source, target)
        uniform_file_modes(tmp)  # one mode for card, weights and copies, whatever wrote them
        os.chmod(tmp, 0o755 & ~_umask())
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_weights(tmp: str, card: ModelCard, network: nn.Module) -> None:
    if card.architecture == "torchscript":
        if not isinstance(network, torch.jit.ScriptModule):
            raise TypeError(
                "a card with architecture 'torchscript' needs a torch.jit.ScriptModule"
            )
        torch.jit.save(network, os.path.join(tmp, card.network["file"]))
        return

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}
    check_state_dict(build_network(card), state, "save_model")
    save_file(state, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "calibseg-model/1"})


def _move_into_place(tmp: str, folder: str) -> None:
    if not os.path.exists(folder):
        os.rename(tmp, folder)
        return
    old = tempfile.mkdtemp(prefix=".calibseg-old-", dir=os.path.dirname(folder))
    os.rmdir(old)
    os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)


__all__ = ["Model", "TORCHSCRIPT_FILE", "check_state_dict", "load_model", "load_torchscript",
           "save_model"]
