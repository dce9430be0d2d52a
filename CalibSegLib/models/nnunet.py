"""nnU-Net v2 models: reading a trained-model folder safely and building its network.

An nnU-Net v2 results folder (``.../nnUNetTrainer__nnUNetPlans__3d_fullres``)
holds ``dataset.json`` (labels, channels), ``plans.json`` (spacing, patch size,
axis transposition, normalisation, network) and one ``fold_N/`` folder per
cross-validation fold with a checkpoint (``checkpoint_final.pth``): a pickled
dict with ``network_weights`` (a state dict), ``init_args``, ``trainer_name``,
``inference_allowed_mirroring_axes`` and training bookkeeping.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (numpy scalars
and dtypes, which nnU-Net's training log holds, are the only extra types
allowed); anything else in the pickle is refused before it runs. The network
is built by nnU-Net's own ``get_network_from_plans`` from
``dynamic_network_architectures`` (class names outside that package, or layer
types outside ``torch.nn``, are refused). The folds become one
:class:`NNUNetEnsemble`, stored as ``model.safetensors`` in a CalibSeg model
folder; ``plans.json`` and ``dataset.json`` go into the card's ``nnunet``
section, so the card and weights alone describe the model.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy._core import multiarray
from torch import nn

from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import read_json
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

INSTALL_HINT = ('nnU-Net v2 models need the nnunetv2 package: pip install "CalibSegLib[nnunet]" '
                '(or ./run setup, which installs it).')
DEFAULT_CONFIGURATION = "3d_fullres"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
#: nnU-Net's 3D image readers CalibSeg stands in for (see ``CalibSegLib.inference.nnunet_io``).
SUPPORTED_READERS = ("SimpleITKIO", "NibabelIO", "SimpleITKIOWithReorient",
                     "NibabelIOWithReorient")

_ARCH_PREFIX = "dynamic_network_architectures.architectures."
_LAYER_PREFIX = "torch.nn."
_PLAIN_LEAVES = (str, int, float, bool, type(None), torch.Tensor, torch.device, torch.dtype,
                 np.generic, np.ndarray)


def require_nnunetv2() -> None:
    """Import ``nnunetv2`` or raise one clear :class:`CalibSegError` saying how to install it."""
    try:
        import dynamic_network_architectures  # noqa: F401
        import nnunetv2  # noqa: F401
    except ImportError as exc:
        raise CalibSegError(INSTALL_HINT) from exc


# -- safe checkpoint loading -----------------------------------------------------------------

def _numpy_safe_globals() -> list[Any]:
    """numpy scalar reconstruction and dtypes: what nnU-Net's training log pickles."""
    items: list[Any] = [np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):
        # numpy 2 pickles them from numpy._core, numpy 1 (most trained models) from numpy.core
        items += [getattr(multiarray, name), (getattr(multiarray, name),
                                              f"numpy.core.multiarray.{name}")]
    items += [getattr(np.dtypes, name) for name in dir(np.dtypes)
              if name.endswith("DType") and name[:-5] in _NUMERIC_DTYPES]
    return items


_NUMERIC_DTYPES = {"Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
                   "UInt64", "Float16", "Float32", "Float64", "LongDouble", "Complex64",
                   "Complex128", "Byte", "UByte", "Short", "UShort", "Int", "UInt", "Long",
                   "ULong", "LongLong", "ULongLong"}


def _check_plain(value: Any, path: str, source: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_plain(item, f"{path}.{key}", source)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]", source)
    elif not isinstance(value, _PLAIN_LEAVES):
        raise CalibSegError(
            f"{source}: refused: field {path} holds a {type(value).__name__}, not tensors or plain "
            "data."
        )


def load_checkpoint(path: str) -> dict[str, Any]:
    """An nnU-Net checkpoint dict, read without running pickled code.

    Raises
    ------
    CalibSegError
        Missing file; a pickle that names anything but tensors, containers, numbers
        and strings (refused before any of it runs); a dict without
        ``network_weights``.
    """
    if not os.path.isfile(path):
        raise CalibSegError(f"{path} is missing; pick existing folds with --folds or another "
                            "--checkpoint.")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError) as exc:
        detail = _first_line(exc)
        raise CalibSegError(
            f"{path}: refused to load: the checkpoint holds Python objects other than tensors "
            f"and plain data (it could run code when unpickled) or is not a PyTorch file "
            f"({detail})."
        ) from exc
    if not isinstance(obj, Mapping) or not isinstance(obj.get("network_weights"), Mapping):
        raise CalibSegError(f"{path}: not an nnU-Net checkpoint (no 'network_weights' dict).")
    _check_plain(obj, "checkpoint", path)
    weights = obj["network_weights"]
    if not all(torch.is_tensor(v) for v in weights.values()):
        raise CalibSegError(f"{path}: 'network_weights' holds values that are not tensors.")
    return dict(obj)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return f"it names {match.group(1)}"
    return text.splitlines()[0][:200]


# -- the results folder ------------------------------------------------------------------------

def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CalibSegError(f"{path} is missing; an nnU-Net results folder holds plans.json and "
                            "dataset.json next to its fold_N folders.")
    return read_json(path, dict, "nnU-Net " + os.path.basename(path))


def available_folds(source: str, checkpoint: str = DEFAULT_CHECKPOINT) -> list[int | str]:
    """Folds ``N`` with ``fold_N/<checkpoint>`` in ``source`` (numbers first, then ``all``)."""
    found: list[int | str] = []
    for name in sorted(os.listdir(source)):
        match = re.fullmatch(r"fold_(\d+|all)", name)
        if match and os.path.isfile(os.path.join(source, name, checkpoint)):
            fold = match.group(1)
            found.append(int(fold) if fold.isdigit() else fold)
    return sorted(found, key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0))


@dataclass(frozen=True)
class ResultsFolder:
    """What CalibSeg reads from an nnU-Net v2 results folder.

    Attributes
    ----------
    source : str
    plans, dataset : dict
        ``plans.json`` and ``dataset.json``.
    configuration : str
    folds : tuple
        Fold ids (ints, or ``"all"``).
    checkpoint : str
        Checkpoint file name inside each ``fold_N``.
    weights : tuple of dict
        One state dict per fold.
    trainer_name : str
    mirroring_axes : tuple of int or None
        ``inference_allowed_mirroring_axes`` of the first fold.
    """

    source: str
    plans: dict[str, Any]
    dataset: dict[str, Any]
    configuration: str
    folds: tuple[int | str, ...]
    checkpoint: str
    weights: tuple[dict[str, torch.Tensor], ...]
    trainer_name: str
    mirroring_axes: tuple[int, ...] | None


def read_results_folder(source: str, configuration: str = DEFAULT_CONFIGURATION,
                        folds: Sequence[int | str] | None = None,
                        checkpoint: str = DEFAULT_CHECKPOINT,
                        progress: ProgressCallback | None = None,
                        cancel: CancelCallback | None = None) -> ResultsFolder:
    """Read and check an nnU-Net v2 results folder (no pickled code runs).

    ``progress`` is told each fold read; ``cancel`` is checked before each.

    Raises
    ------
    CalibSegError
        Not a folder, missing plans/dataset JSON, unknown configuration, a missing
        fold or checkpoint, a refused checkpoint, folds trained with another
        configuration.
    """
    source = os.path.abspath(os.fspath(source))
    if not os.path.isdir(source):
        raise CalibSegError(f"{source} is not a folder; an nnU-Net results folder is one.")
    plans = _read_json(os.path.join(source, "plans.json"))
    dataset = _read_json(os.path.join(source, "dataset.json"))
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping) or configuration not in configurations:
        names = ", ".join(sorted(configurations)) if isinstance(configurations, Mapping) else ""
        raise CalibSegError(f"{source}/plans.json has no configuration {configuration!r} "
                            f"(it has: {names or 'none'}); pick one with --configuration.")
    if folds is None or len(folds) == 0:
        folds = available_folds(source, checkpoint)
        if not folds:
            raise CalibSegError(f"{source} has no fold_N/{checkpoint}; train a fold or pick "
                                "another --checkpoint.")
    fold_ids = tuple(int(f) if str(f).isdigit() else str(f) for f in folds)
    missing = [f for f in fold_ids if not os.path.isdir(os.path.join(source, f"fold_{f}"))]
    if missing:
        found = ", ".join(str(f) for f in available_folds(source, checkpoint)) or "none"
        raise CalibSegError(
            f"{source}: fold(s) {', '.join(str(f) for f in missing)} missing (no fold_N folder); "
            f"available: {found}."
        )
    weights, trainer_name, mirroring = [], "", None
    for i, fold in enumerate(fold_ids):
        check_cancel(cancel, "import")
        report(progress, i / len(fold_ids), f"reading fold {fold}")
        ckpt = load_checkpoint(os.path.join(source, f"fold_{fold}", checkpoint))
        init_args = ckpt.get("init_args")
        init = init_args if isinstance(init_args, Mapping) else {}
        trained = init.get("configuration")
        if trained is not None and trained != configuration:
            raise CalibSegError(
                f"{source}/fold_{fold}/{checkpoint} was trained with configuration {trained!r}, "
                f"not {configuration!r}; pick the results folder of {configuration!r}."
            )
        if i == 0:
            trainer_name = str(ckpt.get("trainer_name", "nnUNetTrainer"))
            axes = ckpt.get("inference_allowed_mirroring_axes")
            mirroring = tuple(int(a) for a in axes) if axes is not None else None
        weights.append(dict(ckpt["network_weights"]))
    return ResultsFolder(source=source, plans=plans, dataset=dataset,
                         configuration=configuration, folds=fold_ids, checkpoint=checkpoint,
                         weights=tuple(weights), trainer_name=trainer_name,
                         mirroring_axes=mirroring)


# -- network ----------------------------------------------------------------------------------

def network_spec(plans: Mapping[str, Any], configuration: str, dataset: Mapping[str, Any],
                 folds: Sequence[int | str]) -> dict[str, Any]:
    """The card's ``network`` object for an nnU-Net configuration (checked allow-list).

    ``class_name`` must be in ``dynamic_network_architectures.architectures`` and
    each imported layer type in ``torch.nn``.
    """
    require_nnunetv2()
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(copy.deepcopy(dict(plans)))
    config = manager.get_configuration(configuration)
    spec = {
        "architecture": "nnunet",
        "class_name": str(config.network_arch_class_name),
        "arch_kwargs": copy.deepcopy(dict(config.network_arch_init_kwargs)),
        "kw_requires_import": [str(k) for k in config.network_arch_init_kwargs_req_import],
        "input_channels": int(determine_num_input_channels(manager, config, dict(dataset))),
        "output_channels": int(manager.get_label_manager(dict(dataset)).num_segmentation_heads),
        "folds": [f if isinstance(f, int) else str(f) for f in folds],
    }
    check_network_spec(spec)
    return spec


def check_network_spec(spec: Mapping[str, Any]) -> None:
    """Refuse classes outside ``dynamic_network_architectures`` and layers outside ``torch.nn``."""
    name = str(spec.get("class_name", ""))
    if not name.startswith(_ARCH_PREFIX):
        raise CalibSegError(
            f"nnU-Net network class {name!r} is not from {_ARCH_PREFIX[:-1]}; CalibSeg builds only "
            "nnU-Net's own architectures."
        )
    kwargs = spec.get("arch_kwargs") or {}
    for key in spec.get("kw_requires_import") or []:
        value = kwargs.get(key)
        if value is not None and not str(value).startswith(_LAYER_PREFIX):
            raise CalibSegError(
                f"nnU-Net network argument {key}={value!r} is not a torch.nn layer; refused."
            )


def build_fold_network(spec: Mapping[str, Any]) -> nn.Module:
    """One fold's network, built by nnU-Net's ``get_network_from_plans`` (no deep supervision)."""
    require_nnunetv2()
    check_network_spec(spec)
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        spec["class_name"], copy.deepcopy(dict(spec["arch_kwargs"])),
        list(spec["kw_requires_import"]), int(spec["input_channels"]),
        int(spec["output_channels"]), allow_init=False, deep_supervision=False)


class NNUNetEnsemble(nn.Module):
    """The folds of an nnU-Net model; ``forward`` averages their logits.

    Input is nnU-Net's preprocessed data ``(B, channels, *spatial)`` (axes in the
    plans' ``transpose_forward`` order); output ``(B, C, *spatial)`` logits, the
    mean over folds (the full inference, with nnU-Net's preprocessing, sliding
    window and resampling, is :func:`CalibSegLib.inference.nnunet.nnunet_logits`).

    Attributes
    ----------
    folds : torch.nn.ModuleList
        One network per fold, in the card's fold order.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(build_fold_network(spec) for _ in spec["folds"])
        strides = spec["arch_kwargs"].get("strides") or []
        self.divisor = tuple(int(np.prod([s[axis] if isinstance(s, (list, tuple)) else s
                                          for s in strides]))
                             for axis in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the folds' logits, shape (B, C, Z, Y, X), for windows of shape (B, 1, Z, Y, X).
        """
        if x.dim() != 5 or any(size % d for size, d in zip(x.shape[2:], self.divisor)):
            raise CalibSegError(
                f"An nnU-Net network takes nnU-Net-preprocessed windows (spatial sizes multiples "
                f"of {self.divisor}), not an input of shape {tuple(x.shape)}; predict with "
                "calibseg predict, and explain it with --method occlusion.")
        total: torch.Tensor | None = None
        for network in self.folds:
            out = network(x)
            total = out if total is None else total + out
        assert total is not None, "an ensemble has at least one fold"
        return total / len(self.folds)


def build_nnunet_network(card: Any) -> NNUNetEnsemble:
    """The (untrained) :class:`NNUNetEnsemble` a card with architecture ``nnunet`` describes."""
    return NNUNetEnsemble(card.network if hasattr(card, "network") else card["network"])


__all__ = ["DEFAULT_CHECKPOINT", "DEFAULT_CONFIGURATION", "INSTALL_HINT",
           "NNUNetEnsemble", "ResultsFolder", "SUPPORTED_READERS",
           "available_folds", "build_fold_network", "build_nnunet_network",
           "check_network_spec", "load_checkpoint", "network_spec", "read_results_folder",
           "require_nnunetv2"]
