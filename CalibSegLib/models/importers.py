"""Import adapters: wrap a MONAI bundle or a TorchScript file into a CalibSeg model folder.

Both write a folder with a generated ``model.json`` the user should review
(spacing, normalisation, class names, intended use); the card's
``limitations`` says so. Weights are read with ``torch.load(...,
weights_only=True)``, which refuses pickles that carry code; TorchScript is
read with ``torch.jit.load`` and stored as ``model.ts`` (TorchScript holds
code, so it cannot be stored as safetensors).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models.bundle import build_bundle_network, network_config
from CalibSegLib.models.card import DEFAULT_COLORS, FORMAT_VERSION, TORCHSCRIPT_FILE, ModelCard
from CalibSegLib.models.store import check_state_dict, load_torchscript, save_model

log = logging.getLogger(__name__)

_REVIEW = ("Generated on import from {source}: review spacing_mm, orientation, normalization, "
           "patch_size and class names before clinical or research use; calibration and "
           "prototype explanations are not available for imported networks until recalibrated.")


def safe_torch_load(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt``/``.pth`` file, loaded with ``weights_only=True``.

    Accepts a bare state dict or a dict holding one under ``model``,
    ``state_dict`` or ``network``.

    Raises
    ------
    CalibSegError
        When the file holds anything but tensors and plain containers (a pickle
        with code is refused before any of it runs).
    """
    if not os.path.isfile(path):
        raise CalibSegError(f"{path} is missing.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CalibSegError(
            f"{path}: refused to load: the file holds Python objects other than tensors (it could "
            f"run code when unpickled) or is not a PyTorch file ({first}). Save a plain state "
            "dict (torch.save(model.state_dict(), path)) or export to safetensors."
        ) from exc
    for key in ("model", "state_dict", "network"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CalibSegError(f"{path}: expected a state dict of tensors.")
    return dict(obj)


def _walk(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _numbers(value: Any, n: int = 3) -> list[float] | None:
    if isinstance(value, list) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return [float(v) for v in value]
    return None


def _bundle_hints(config: Mapping[str, Any]) -> dict[str, Any]:
    """Spacing, window size and normalisation guessed from a bundle's transforms."""
    hints: dict[str, Any] = {}
    for item in _walk(config):
        target = str(item.get("_target_", ""))
        if target.endswith(("Spacingd", "Spacing")) and _numbers(item.get("pixdim")):
            hints.setdefault("spacing_mm", _numbers(item.get("pixdim")))
        if _numbers(item.get("roi_size")):
            hints.setdefault("patch_size", [int(v) for v in _numbers(item.get("roi_size"))])
        if target.endswith(("ScaleIntensityRanged", "ScaleIntensityRange")):
            spec = {"type": "range"}
            for key in ("a_min", "a_max", "b_min", "b_max", "clip"):
                if isinstance(item.get(key), (int, float)):
                    spec[key] = item[key]
            if "a_min" in spec and "a_max" in spec:
                hints.setdefault("normalization", spec)
        if target.endswith(("NormalizeIntensityd", "NormalizeIntensity")):
            hints.setdefault("normalization",
                             {"type": "zscore", "nonzero": bool(item.get("nonzero", False))})
    return hints


def _read_bundle_config(source: str) -> tuple[dict[str, Any], str, str]:
    configs = os.path.join(source, "configs")
    if not os.path.isdir(configs):
        raise CalibSegError(f"{source} is not a MONAI bundle (no configs/ folder).")
    names = sorted(os.listdir(configs))
    preferred = [n for n in ("inference.json", "inference.yaml", "inference.yml") if n in names]
    others = [n for n in names if n.endswith((".json", ".yaml", ".yml")) and n not in preferred
              and n != "metadata.json"]
    for name in preferred + others:
        path = os.path.join(configs, name)
        config = _load_config_file(path)
        for key in ("network_def", "network"):
            if isinstance(config.get(key), Mapping) and "_target_" in config[key]:
                return config, key, path
    raise CalibSegError(
        f"No network definition (a 'network_def' item with _target_) in {configs}; the bundle "
        "cannot be imported. Export the network to TorchScript and use --kind torchscript."
    )


def _load_config_file(path: str) -> dict[str, Any]:
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            import yaml

            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
    except (OSError, ValueError, ImportError) as exc:
        raise CalibSegError(f"{path}: cannot read the bundle config ({exc}).") from exc
    return data if isinstance(data, dict) else {}


def _bundle_metadata(source: str) -> tuple[int | None, list[str] | None]:
    path = os.path.join(source, "configs", "metadata.json")
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
        pred = meta["network_data_format"]["outputs"]["pred"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    channels = pred.get("num_channels")
    names = None
    channel_def = pred.get("channel_def")
    if isinstance(channel_def, Mapping) and channel_def:
        try:
            names = [str(channel_def[k]) for k in sorted(channel_def, key=lambda k: int(k))]
        except (ValueError, TypeError):
            names = None
    return (int(channels) if isinstance(channels, int) else None), names


def _output_channels(network: nn.Module, patch_size: Sequence[int]) -> int:
    x = torch.zeros(1, 1, *reversed([int(s) for s in patch_size]))
    with torch.no_grad():
        out = network.eval()(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out) or out.dim() != 5:
        raise CalibSegError("The network does not return a (B, C, Z, Y, X) tensor.")
    return int(out.shape[1])


def _card_data(name: str, class_names: Sequence[str], network: dict[str, Any], source: str,
               spacing_mm: Sequence[float], patch_size: Sequence[int],
               normalization: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": "imported",
        "description": f"Imported {kind} from {os.path.basename(os.path.normpath(source))}.",
        "classes": [{"name": n, "color": list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)])}
                    for i, n in enumerate(class_names)],
        "spacing_mm": [float(v) for v in spacing_mm],
        "orientation": "RAS",
        "normalization": dict(normalization),
        "patch_size": [int(v) for v in patch_size],
        "network": network,
        "head": {"type": "linear"},
        "temperature": 1.0,
        "training": {"source": os.path.abspath(source), "imported_as": kind},
        "intended_use": "",
        "limitations": _REVIEW.format(source=os.path.abspath(source)),
    }


def _class_names(class_names: Sequence[str] | None, count: int) -> list[str]:
    if class_names is None:
        return ["background"] + [f"class {i}" for i in range(1, count)]
    if len(class_names) != count:
        raise CalibSegError(
            f"{len(class_names)} class names given but the network has {count} output channels."
        )
    return list(class_names)


def import_bundle(source: str, folder: str, *, name: str | None = None,
                  class_names: Sequence[str] | None = None,
                  spacing_mm: Sequence[float] | None = None,
                  patch_size: Sequence[int] | None = None,
                  normalization: Mapping[str, Any] | None = None,
                  overwrite: bool = False) -> str:
    """Wrap a MONAI bundle folder into a CalibSeg model folder.

    The network comes from the bundle config's ``network_def`` (only that item and
    the items it refers to are kept in the card; expressions are refused), the
    weights from ``models/model.pt`` (``weights_only=True``), stored as safetensors.

    Returns
    -------
    str
        The new model folder.
    """
    source = os.fspath(source)
    if not os.path.isdir(source):
        raise CalibSegError(f"{source} is not a folder; a MONAI bundle is a folder.")
    config, key, config_path = _read_bundle_config(source)
    items = network_config(config, key)
    network = build_bundle_network(items, key)
    weights_path = os.path.join(source, "models", "model.pt")
    if not os.path.isfile(weights_path):
        hint = (" It has models/model.ts: import that with --kind torchscript."
                if os.path.isfile(os.path.join(source, "models", "model.ts")) else "")
        raise CalibSegError(f"{weights_path} is missing.{hint}")
    state = safe_torch_load(weights_path)
    check_state_dict(network, state, weights_path)
    network.load_state_dict(state, strict=True)
    hints = _bundle_hints(config)
    patch = list(patch_size or hints.get("patch_size") or [96, 96, 96])
    meta_channels, meta_names = _bundle_metadata(source)
    if class_names is None and meta_names:
        class_names = meta_names
    count = _output_channels(network, patch)
    if meta_channels is not None and meta_channels != count:
        log.warning("Bundle metadata says %d output channels; the network gives %d.",
                    meta_channels, count)
    data = _card_data(
        name or os.path.basename(os.path.normpath(source)), _class_names(class_names, count),
        {"architecture": "monai.bundle", "config": items, "network_key": key}, source,
        spacing_mm or hints.get("spacing_mm") or [1.0, 1.0, 1.0], patch,
        normalization or hints.get("normalization") or {"type": "zscore"}, "MONAI bundle",
    )
    data["training"]["config_file"] = os.path.relpath(config_path, source)
    card = ModelCard(data, source=f"card generated from {source}")
    return save_model(folder, card, network, overwrite=overwrite)


def import_torchscript(source: str, folder: str, *, name: str | None = None,
                       class_names: Sequence[str] | None = None,
                       spacing_mm: Sequence[float] | None = None,
                       patch_size: Sequence[int] | None = None,
                       normalization: Mapping[str, Any] | None = None,
                       overwrite: bool = False) -> str:
    """Wrap a TorchScript file into a CalibSeg model folder (stored as ``model.ts``).

    The card's network is ``{"architecture": "torchscript", "file": "model.ts"}``;
    the weights stay inside the TorchScript archive (safetensors cannot hold the
    scripted code).

    Returns
    -------
    str
        The new model folder.
    """
    source = os.fspath(source)
    network = load_torchscript(source, "cpu")
    patch = list(patch_size or [96, 96, 96])
    count = _output_channels(network, patch)
    stem = os.path.basename(source).split(".")[0] or "imported"
    data = _card_data(
        name or stem, _class_names(class_names, count),
        {"architecture": "torchscript", "file": TORCHSCRIPT_FILE}, source,
        spacing_mm or [1.0, 1.0, 1.0], patch, normalization or {"type": "zscore"}, "TorchScript",
    )
    card = ModelCard(data, source=f"card generated from {source}")
    return save_model(folder, card, network, overwrite=overwrite)


def detect_kind(source: str) -> str:
    """``"bundle"`` for a folder with ``configs/``, ``"torchscript"`` for a file."""
    if os.path.isdir(source):
        if os.path.isdir(os.path.join(source, "configs")):
            return "bundle"
        raise CalibSegError(f"{source} is a folder without configs/: not a MONAI bundle.")
    if os.path.isfile(source):
        return "torchscript"
    raise CalibSegError(f"{source}: no such file or folder.")


def import_model(source: str, folder: str, kind: str | None = None, **options: Any) -> str:
    """Import a MONAI bundle (``kind="bundle"``) or TorchScript file (``"torchscript"``).

    ``kind=None`` detects it (folder -> bundle, file -> TorchScript). ``options`` go to
    :func:`import_bundle` / :func:`import_torchscript`. Returns the new model folder.
    """
    kind = kind or detect_kind(source)
    if kind == "bundle":
        return import_bundle(source, folder, **options)
    if kind == "torchscript":
        return import_torchscript(source, folder, **options)
    raise CalibSegError(f"Unknown import kind {kind!r}; use bundle or torchscript.")
