"""Import an nnU-Net v2 results folder into a CalibSeg model folder.

The new folder holds ``model.json`` (the card: classes from ``dataset.json``,
spacing and window from the configuration, the network from the plans, an
``nnunet`` section with the configuration, folds, trainer, reader, transposes,
normalisation schemes, the mirroring setting, and the whole ``plans.json`` and
``dataset.json`` that nnU-Net's preprocessing and resampling read at prediction
time) and ``model.safetensors`` (every fold's weights, as one
:class:`~CalibSegLib.models.nnunet.NNUNetEnsemble`). Card and weights alone
describe the model, so it travels as any other (federated transport, background
process).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models.card import DEFAULT_COLORS, FORMAT_VERSION, ModelCard
from CalibSegLib.models.nnunet import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIGURATION,
    SUPPORTED_READERS,
    NNUNetEnsemble,
    ResultsFolder,
    network_spec,
    read_results_folder,
    require_nnunetv2,
)
from CalibSegLib.models.store import check_state_dict, save_model
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report, scaled

_REVIEW = ("Imported from the nnU-Net v2 results folder {source} (configuration {configuration}, "
           "folds {folds}); preprocessing, sliding window, fold ensemble and resampling are "
           "nnU-Net's own. Calibration and prototype explanations are not available until "
           "recalibrated.")


def _class_names(results: ResultsFolder, count: int) -> list[str]:
    """Label names ordered by value (nnU-Net's output channel order), without ``ignore``."""
    labels = results.dataset.get("labels", {})
    ordered = sorted(((int(v), str(k)) for k, v in labels.items() if str(k) != "ignore"),
                     key=lambda item: item[0])
    names = [name for _, name in ordered]
    if len(names) != count or [v for v, _ in ordered] != list(range(count)):
        raise CalibSegError(
            f"{results.source}/dataset.json: labels {labels} do not give {count} consecutive "
            "classes from 0; fix dataset.json.")
    return names


def _xyz(values_transposed: Sequence[float], transpose_forward: Sequence[int]) -> list[float]:
    """Configuration values (axes in ``transpose_forward`` order) as ``(X, Y, Z)``.

    The reader's array order is SimpleITK's ``(Z, Y, X)``; ``transpose_forward[i]``
    is the array axis that became axis ``i``.
    """
    original = [0.0, 0.0, 0.0]
    for i, axis in enumerate(transpose_forward):
        original[int(axis)] = values_transposed[i]
    return original[::-1]


def _check_supported(results: ResultsFolder) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(results.plans)
    config = manager.get_configuration(results.configuration)
    labels = manager.get_label_manager(results.dataset)
    source = results.source
    if labels.has_regions:
        raise CalibSegError(
            f"{source}: region-based nnU-Net models (sigmoid outputs for overlapping regions) are "
            "not supported; CalibSeg calibrates one softmax over exclusive classes.")
    if len(config.patch_size) != 3:
        raise CalibSegError(
            f"{source}: configuration {results.configuration!r} is 2D; import a 3D configuration "
            "(3d_fullres or 3d_lowres).")
    if config.previous_stage_name is not None:
        raise CalibSegError(
            f"{source}: configuration {results.configuration!r} is a cascade stage that needs "
            f"the segmentation of {config.previous_stage_name!r}; import a single-stage "
            "configuration.")
    channels = results.dataset.get("channel_names") or results.dataset.get("modality") or {}
    if len(channels) != 1:
        raise CalibSegError(
            f"{source}: the model takes {len(channels)} input channels "
            f"({', '.join(str(v) for v in channels.values())}); CalibSeg predicts from one image.")
    reader = str(results.plans.get("image_reader_writer"))
    if reader not in SUPPORTED_READERS:
        raise CalibSegError(
            f"{source}: image reader {reader!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_READERS)}).")


def nnunet_card(results: ResultsFolder, network: dict[str, Any], *, name: str | None = None,
                mirroring: bool = False) -> ModelCard:
    """The card of an imported nnU-Net model (see the module docstring)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(results.plans)
    config = manager.get_configuration(results.configuration)
    transpose = [int(a) for a in manager.transpose_forward]
    names = _class_names(results, int(network["output_channels"]))
    folds = ", ".join(str(f) for f in results.folds)
    channel_names = results.dataset.get("channel_names") or results.dataset.get("modality") or {}
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name or str(results.plans.get("dataset_name") or
                            os.path.basename(results.source)),
        "version": "imported",
        "description": (f"nnU-Net v2 {results.trainer_name} {results.configuration}, "
                        f"folds {folds}, imported from {os.path.basename(results.source)}."),
        "classes": [{"name": n, "color": list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)])}
                    for i, n in enumerate(names)],
        "spacing_mm": _xyz([float(s) for s in config.spacing], transpose),
        "orientation": "RAS",
        "axis_order": "ZYX",
        "output_kind": "logits",
        "preprocessing": [],
        "patch_size": [int(round(v)) for v in _xyz(list(config.patch_size), transpose)],
        "network": network,
        "head": {"type": "linear"},
        "temperature": 1.0,
        "nnunet": {
            "configuration": results.configuration,
            "trainer": results.trainer_name,
            "checkpoint": results.checkpoint,
            "plans": copy.deepcopy(results.plans),
            "dataset": copy.deepcopy(results.dataset),
            "image_reader_writer": str(results.plans.get("image_reader_writer")),
            "channels": [str(v) for v in channel_names.values()],
            "transpose_forward": transpose,
            "transpose_backward": [int(a) for a in manager.transpose_backward],
            "normalization_schemes": [str(s) for s in config.normalization_schemes],
            "mirroring": bool(mirroring),
            "mirroring_axes": (list(results.mirroring_axes)
                               if results.mirroring_axes is not None else None),
            "tile_step_size": 0.5,
        },
        "training": {"source": results.source, "imported_as": "nnU-Net v2",
                     "trainer": results.trainer_name},
        "intended_use": "",
        "limitations": _REVIEW.format(source=results.source,
                                      configuration=results.configuration, folds=folds),
        "review_notes": [
            "spacing_mm and patch_size are the nnU-Net configuration's, in (X, Y, Z) order; "
            "images are read as the plans' image_reader_writer reads them (SimpleITKIO and "
            "NibabelIO keep the voxel order and resample voxel sizes only; the WithReorient "
            "readers reorient to RAS first) and predictions come back on the input grid.",
            "preprocessing is nnU-Net's own (normalization_schemes in the nnunet section), "
            "run by nnunetv2 at prediction time.",
        ],
    }
    return ModelCard(data, source=f"card generated from {results.source}")


def import_nnunet(source: str, folder: str, *, configuration: str = DEFAULT_CONFIGURATION,
                  folds: Sequence[int | str] | None = None,
                  checkpoint: str = DEFAULT_CHECKPOINT, name: str | None = None,
                  mirroring: bool = False, overwrite: bool = False,
                  progress: ProgressCallback | None = None,
                  cancel: CancelCallback | None = None) -> str:
    """Wrap an nnU-Net v2 results folder into a CalibSeg model folder.

    Parameters
    ----------
    source : str
        The results folder (``.../nnUNetTrainer__nnUNetPlans__3d_fullres``).
    folder : str
        The new model folder (written atomically; nothing is written on error).
    configuration : str
        The plans configuration the folds were trained with.
    folds : sequence, optional
        Fold ids; default every ``fold_N`` holding ``checkpoint``.
    checkpoint : str
        Checkpoint file name in each fold folder.
    name : str, optional
        Model name (default the dataset name).
    mirroring : bool
        Mirroring test-time augmentation at prediction (off by default).
    overwrite : bool
        Replace an existing ``folder``.
    progress, cancel : callable, optional
        ``progress(fraction, message)`` per step; ``cancel() -> bool`` checked between
        steps (raises :class:`~CalibSegLib.errors.Cancelled`; nothing is written).

    Returns
    -------
    str
        The new model folder.

    Raises
    ------
    CalibSegError
        Missing nnunetv2, fold, checkpoint or JSON file; a checkpoint that is not plain
        data; a region-based, 2D, cascade or multi-channel model; weights that do not fit
        the plans' network.
    """
    require_nnunetv2()
    results = read_results_folder(source, configuration, folds, checkpoint,
                                  progress=scaled(progress, 0.0, 0.7), cancel=cancel)
    _check_supported(results)
    check_cancel(cancel, "import")
    report(progress, 0.7, "building the network")
    spec = network_spec(results.plans, configuration, results.dataset, results.folds)
    ensemble = NNUNetEnsemble(spec)
    for fold, network, weights in zip(results.folds, ensemble.folds, results.weights):
        where = os.path.join(results.source, f"fold_{fold}", checkpoint)
        check_state_dict(network, weights, where)
        network.load_state_dict(weights, strict=True)
    card = nnunet_card(results, spec, name=name, mirroring=mirroring)
    check_cancel(cancel, "import")
    report(progress, 0.9, "writing the model folder")
    return save_model(folder, card, ensemble, overwrite=overwrite)


__all__ = ["import_nnunet", "nnunet_card"]
