"""Import adapters: wrap a MONAI bundle or a TorchScript file into a CalibSeg model folder.

Both write a folder with a generated ``model.json`` the user should review
(spacing, preprocessing, class names, intended use); the card's
``limitations`` says so and its ``review_notes`` list what was read, guessed or
left out. Imported networks take arrays in MONAI's ``(X, Y, Z)`` order (card
``axis_order`` ``"XYZ"``) unless told otherwise. The importer runs the network
once on a sample input and records what its output channels are (card
``output_kind``: logits, probabilities or log-probabilities). Weights are read
with ``torch.load(..., weights_only=True)``, which refuses pickles that carry
code; TorchScript is read with ``torch.jit.load`` and stored as ``model.ts``
(TorchScript holds code, so it cannot be stored as safetensors).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models.bundle import build_bundle_network, network_config
from CalibSegLib.models.bundle_transforms import read_bundle_inference
from CalibSegLib.models.card import (
    CARD_FILE,
    DEFAULT_COLORS,
    FORMAT_VERSION,
    TORCHSCRIPT_FILE,
    ModelCard,
)
from CalibSegLib.models.nnunet_import import import_nnunet
from CalibSegLib.models.output_kind import OUTPUT_KINDS, check_output, detect_output_kind
from CalibSegLib.models.preprocessing import check_preprocessing, legacy_to_transforms
from CalibSegLib.models.store import check_state_dict, load_torchscript, save_model
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

log = logging.getLogger(__name__)

_REVIEW = ("Generated on import from {source}: review spacing_mm, orientation, preprocessing, "
           "patch_size, axis_order, output_kind and class names (see review_notes) before "
           "clinical or research use; calibration and prototype explanations are not available "
           "for imported networks until recalibrated.")

#: Seed of the sample input an import runs the network on.
PROBE_SEED = 20240617


def safe_torch_load(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt``/``.pth`` file, loaded with ``weights_only=True``.

    Accepts a bare state dict or a dict holding one under ``model``,
    ``state_dict`` or ``network``. Tensors keep their stored shapes, e.g. a 3D
    convolution's weight of shape (C_out, C_in, kZ, kY, kX).

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


def probe_network(network: nn.Module, patch_size: Sequence[int], axis_order: str = "XYZ",
                  output_kind: str | None = None) -> tuple[int, str]:
    """Run ``network`` once on a seeded random window; return ``(channels, output_kind)``.

    The window is ``patch_size`` (X, Y, Z) in the network's ``axis_order``. With
    ``output_kind`` given, the output is checked against it instead of detected.

    Raises
    ------
    CalibSegError
        The output is not a ``(B, C, *window)`` tensor of the window's spatial size, holds
        NaN, or does not fit the given output kind.
    """
    x_, y_, z_ = (int(s) for s in patch_size)
    shape = (x_, y_, z_) if axis_order == "XYZ" else (z_, y_, x_)
    sample = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(PROBE_SEED))
    try:
        with torch.no_grad():
            out = network.eval()(sample)
    except Exception as exc:  # any failure of foreign code on a valid window
        text = str(exc).strip()
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        raise CalibSegError(
            f"The network fails on a (1, 1, {', '.join(map(str, shape))}) sample window "
            f"({first}); check --patch-size and --axis-order.") from exc
    if isinstance(out, Mapping):
        out = next(iter(out.values()))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out) or out.dim() != 5:
        raise CalibSegError("The network does not return a (B, C, X, Y, Z) tensor.")
    if tuple(out.shape[2:]) != shape:
        raise CalibSegError(
            f"The network gives output of spatial size {tuple(out.shape[2:])} for a window of "
            f"{shape}; CalibSeg needs one value per input voxel (a segmentation network).")
    if output_kind is None:
        return int(out.shape[1]), detect_output_kind(out)
    if output_kind not in OUTPUT_KINDS:
        raise CalibSegError(
            f"Unknown output kind {output_kind!r}; use {', '.join(OUTPUT_KINDS)}.")
    check_output(out, output_kind, tolerance=1e-4)
    return int(out.shape[1]), output_kind


def _card_data(name: str, class_names: Sequence[str], network: dict[str, Any], source: str,
               spacing_mm: Sequence[float], patch_size: Sequence[int],
               preprocessing: Sequence[Mapping[str, Any]], kind: str, *,
               axis_order: str, output_kind: str, orientation: str = "RAS",
               sliding_window: Mapping[str, Any] | None = None,
               model_grid: str = "input_direction", preprocessing_grid: str = "model",
               output_resampling: str = "probabilities",
               notes: Sequence[str] = ()) -> dict[str, Any]:
    data = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": "imported",
        "description": f"Imported {kind} from {os.path.basename(os.path.normpath(source))}.",
        "classes": [{"name": n, "color": list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)])}
                    for i, n in enumerate(class_names)],
        "spacing_mm": [float(v) for v in spacing_mm],
        "orientation": orientation,
        "axis_order": axis_order,
        "model_grid": model_grid,
        "preprocessing_grid": preprocessing_grid,
        "output_kind": output_kind,
        "output_resampling": output_resampling,
        "preprocessing": [dict(item) for item in preprocessing],
        "patch_size": [int(v) for v in patch_size],
        "network": network,
        "head": {"type": "linear"},
        "temperature": 1.0,
        "training": {"source": os.path.abspath(source), "imported_as": kind},
        "intended_use": "",
        "limitations": _REVIEW.format(source=os.path.abspath(source)),
        "review_notes": [str(n) for n in notes],
    }
    if sliding_window:
        data["sliding_window"] = dict(sliding_window)
    return data


def _preprocessing_option(preprocessing: Sequence[Mapping[str, Any]] | None,
                          normalization: Mapping[str, Any] | None) -> list[dict] | None:
    """An explicit preprocessing list from the options (``normalization``: format-1 form)."""
    if preprocessing is not None and normalization is not None:
        raise CalibSegError("Give preprocessing or normalization, not both.")
    if normalization is not None:
        return legacy_to_transforms(normalization)
    if preprocessing is None:
        return None
    items = [dict(item) for item in preprocessing]
    check_preprocessing(items)
    return items


def _step(progress: ProgressCallback | None, cancel: CancelCallback | None, fraction: float,
          message: str) -> None:
    check_cancel(cancel, "import")
    report(progress, fraction, message)


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
                  preprocessing: Sequence[Mapping[str, Any]] | None = None,
                  normalization: Mapping[str, Any] | None = None,
                  axis_order: str = "XYZ", output_kind: str | None = None,
                  overwrite: bool = False, progress: ProgressCallback | None = None,
                  cancel: CancelCallback | None = None) -> str:
    """Wrap a MONAI bundle folder into a CalibSeg model folder.

    The network comes from the bundle config's ``network_def`` (only that item and
    the items it refers to are kept in the card; expressions are refused), the
    weights from ``models/model.pt`` (``weights_only=True``), stored as safetensors.
    Preprocessing, orientation, spacing, window size and blending are read from the
    config's ``preprocessing`` and ``inferer`` items
    (:func:`~CalibSegLib.models.bundle_transforms.read_bundle_inference`); explicit
    arguments replace what was read. ``output_kind=None`` probes the network.

    Returns
    -------
    str
        The new model folder (written only when everything succeeded).
    """
    source = os.fspath(source)
    if not os.path.isdir(source):
        raise CalibSegError(f"{source} is not a folder; a MONAI bundle is a folder.")
    _step(progress, cancel, 0.0, "reading the bundle config")
    config, key, config_path = _read_bundle_config(source)
    items = network_config(config, key)
    explicit = _preprocessing_option(preprocessing, normalization)
    bundle = read_bundle_inference(config)
    _step(progress, cancel, 0.2, "building the network")
    network = build_bundle_network(items, key)
    weights_path = os.path.join(source, "models", "model.pt")
    if not os.path.isfile(weights_path):
        hint = (" It has models/model.ts: import that with --kind torchscript."
                if os.path.isfile(os.path.join(source, "models", "model.ts")) else "")
        raise CalibSegError(f"{weights_path} is missing.{hint}")
    _step(progress, cancel, 0.4, "loading the weights")
    state = safe_torch_load(weights_path)
    check_state_dict(network, state, weights_path)
    network.load_state_dict(state, strict=True)
    notes = list(bundle.notes)
    patch = list(patch_size or bundle.patch_size or [96, 96, 96])
    if not (patch_size or bundle.patch_size):
        notes.append("patch_size 96, 96, 96 is a guess (no roi_size in the bundle).")
    spacing = list(spacing_mm or bundle.spacing_mm or [1.0, 1.0, 1.0])
    if not (spacing_mm or bundle.spacing_mm):
        notes.append("spacing_mm 1, 1, 1 is a guess (no Spacingd in the bundle).")
    if bundle.orientation is None:
        notes.append("orientation RAS is a guess (no Orientationd in the bundle: the bundle "
                     "runs on each file's stored voxel order).")
    if explicit is not None:
        notes.append("preprocessing given on import; the bundle's intensity transforms were "
                     "not used.")
    meta_channels, meta_names = _bundle_metadata(source)
    if class_names is None and meta_names:
        class_names = meta_names
    _step(progress, cancel, 0.6, "probing the network's output")
    count, kind = probe_network(network, patch, axis_order, output_kind)
    notes.append(f"output_kind {kind} "
                 f"{'given on import' if output_kind else 'detected on a sample input'}.")
    if meta_channels is not None and meta_channels != count:
        log.warning("Bundle metadata says %d output channels; the network gives %d.",
                    meta_channels, count)
    data = _card_data(
        name or os.path.basename(os.path.normpath(source)), _class_names(class_names, count),
        {"architecture": "monai.bundle", "config": items, "network_key": key}, source,
        spacing, patch, bundle.preprocessing if explicit is None else explicit, "MONAI bundle",
        axis_order=axis_order, output_kind=kind, orientation=bundle.orientation or "RAS",
        sliding_window=bundle.sliding_window, model_grid=bundle.model_grid,
        preprocessing_grid=bundle.preprocessing_grid if explicit is None else "model",
        output_resampling=bundle.output_resampling, notes=notes,
    )
    data["training"]["config_file"] = os.path.relpath(config_path, source)
    card = ModelCard(data, source=f"card generated from {source}")
    _step(progress, cancel, 0.8, "writing the model folder")
    return save_model(folder, card, network, overwrite=overwrite)


def import_torchscript(source: str, folder: str, *, name: str | None = None,
                       class_names: Sequence[str] | None = None,
                       spacing_mm: Sequence[float] | None = None,
                       patch_size: Sequence[int] | None = None,
                       preprocessing: Sequence[Mapping[str, Any]] | None = None,
                       normalization: Mapping[str, Any] | None = None,
                       axis_order: str = "XYZ", output_kind: str | None = None,
                       overwrite: bool = False, progress: ProgressCallback | None = None,
                       cancel: CancelCallback | None = None) -> str:
    """Wrap a TorchScript file into a CalibSeg model folder (stored as ``model.ts``).

    The card's network is ``{"architecture": "torchscript", "file": "model.ts"}``;
    the weights stay inside the TorchScript archive (safetensors cannot hold the
    scripted code). A TorchScript file says nothing about its preprocessing or
    geometry: give them, or review the guesses the card's ``review_notes`` list
    (z-score, 1 mm, 96³ windows, RAS, ``(X, Y, Z)`` arrays).

    Returns
    -------
    str
        The new model folder (written only when everything succeeded).
    """
    source = os.fspath(source)
    _step(progress, cancel, 0.0, "loading the TorchScript file")
    explicit = _preprocessing_option(preprocessing, normalization)
    network = load_torchscript(source, "cpu")
    notes = []
    for given, text in ((spacing_mm, "spacing_mm 1, 1, 1"), (patch_size, "patch_size 96, 96, 96"),
                        (explicit, "preprocessing NormalizeIntensity (z-score)")):
        if given is None:
            notes.append(f"{text} is a guess (a TorchScript file does not record it).")
    notes.append(f"axis_order {axis_order}, orientation RAS, the model grid of Orientationd + "
                 "Spacingd, preprocessing after resampling and probabilities resampled back "
                 "are assumed (a MONAI pipeline's conventions).")
    patch = list(patch_size or [96, 96, 96])
    _step(progress, cancel, 0.3, "probing the network's output")
    count, kind = probe_network(network, patch, axis_order, output_kind)
    notes.append(f"output_kind {kind} "
                 f"{'given on import' if output_kind else 'detected on a sample input'}.")
    stem = os.path.basename(source).split(".")[0] or "imported"
    data = _card_data(
        name or stem, _class_names(class_names, count),
        {"architecture": "torchscript", "file": TORCHSCRIPT_FILE}, source,
        spacing_mm or [1.0, 1.0, 1.0], patch,
        explicit if explicit is not None else legacy_to_transforms({"type": "zscore"}),
        "TorchScript", axis_order=axis_order, output_kind=kind, notes=notes,
    )
    card = ModelCard(data, source=f"card generated from {source}")
    _step(progress, cancel, 0.8, "writing the model folder")
    return save_model(folder, card, network, overwrite=overwrite)


def detect_kind(source: str) -> str:
    """``"bundle"`` for a folder with ``configs/``, ``"torchscript"`` for a file."""
    if os.path.isdir(source):
        if os.path.isdir(os.path.join(source, "configs")):
            return "bundle"
        if os.path.isfile(os.path.join(source, "plans.json")):
            return "nnunet"
        raise CalibSegError(f"{source} is a folder without configs/ or plans.json: neither a "
                            "MONAI bundle nor an nnU-Net results folder.")
    if os.path.isfile(source):
        return "torchscript"
    raise CalibSegError(f"{source}: no such file or folder.")


def import_model(source: str, destination: str, kind: str | None = None, *,
                 progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                 **options: Any) -> ModelCard:
    """Import a MONAI bundle, TorchScript file or nnU-Net v2 results folder; return its card.

    Safe to call from a background process: ``progress(fraction, message)`` is
    called per step and ``cancel() -> bool`` checked between steps (raising
    :class:`~CalibSegLib.errors.Cancelled`); the model folder appears only when the
    import succeeded (written to a temporary folder and renamed).

    Parameters
    ----------
    source : str
        Bundle folder, TorchScript file or nnU-Net results folder.
    destination : str
        The new model folder (must not exist unless ``overwrite=True``).
    kind : str, optional
        ``"bundle"``, ``"torchscript"`` or ``"nnunet"``; ``None`` detects it
        (:func:`detect_kind`).
    **options
        For bundles and TorchScript: ``name``, ``class_names``, ``spacing_mm``,
        ``patch_size``, ``preprocessing``, ``normalization``, ``axis_order``,
        ``output_kind``, ``overwrite`` (see :func:`import_bundle`,
        :func:`import_torchscript`).

    Returns
    -------
    ModelCard
        The card written to ``destination/model.json``.
    """
    source = os.fspath(source)
    kind = kind or detect_kind(source)
    check_cancel(cancel, "import")
    if kind == "bundle":
        folder = import_bundle(source, destination, progress=progress, cancel=cancel, **options)
    elif kind == "torchscript":
        folder = import_torchscript(source, destination, progress=progress, cancel=cancel,
                                    **options)
    elif kind == "nnunet":
        folder = import_nnunet(source, destination, progress=progress, cancel=cancel,
                               **options)
    else:
        raise CalibSegError(f"Unknown import kind {kind!r}; use bundle, torchscript or nnunet.")
    report(progress, 1.0, "imported")
    return ModelCard.from_file(os.path.join(os.fspath(folder), CARD_FILE))
