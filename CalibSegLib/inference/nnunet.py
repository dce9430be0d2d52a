"""nnU-Net v2 inference with nnU-Net's own code: logits on the input grid.

Steps, each done by nnunetv2 itself:

1. the image as the plans' reader gives it
   (:func:`~CalibSegLib.inference.nnunet_io.reader_input`);
2. the plans' preprocessor: ``transpose_forward``, crop to the non-zero box,
   normalisation (CT, z-score ...), resampling to the configuration's spacing;
3. ``nnUNetPredictor``'s Gaussian-weighted sliding window per fold (mirroring
   test-time augmentation when the card asks for it); the folds' logits summed
   and divided by their count, exactly as nnU-Net does;
4. the plans' ``resampling_fn_probabilities`` back to the cropped input shape
   (nnU-Net resamples logits, then applies the softmax); the crop undone,
   ``transpose_backward``, and the reader's reorientation undone.

CalibSeg then applies the softmax at its temperature, so at temperature 1 the
probabilities are nnU-Net's. Outside the non-zero box nnU-Net reports
background with probability 1; here that is the logit vector
``(0, -OUTSIDE_LOGIT, ...)``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from CalibSegLib.errors import CalibSegError, Cancelled
from CalibSegLib.inference.nnunet_io import reader_input
from CalibSegLib.models.nnunet import require_nnunetv2
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

#: Logit gap that makes background certain outside nnU-Net's crop (exp(-1e4 / T) is 0).
OUTSIDE_LOGIT = 1.0e4


class _WatchedNetwork(nn.Module):
    """One fold's network, reporting progress per call; after a cancel, returns zeros fast."""

    def __init__(self, network: nn.Module, channels: int, calls: int, done: int,
                 progress: ProgressCallback | None, cancel: CancelCallback | None) -> None:
        super().__init__()
        self.network = network
        self.channels = channels
        self.calls = max(calls, 1)
        self.done = done
        self.progress = progress
        self.cancel = cancel
        self.cancelled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cancelled and self.cancel is not None and self.cancel():
            self.cancelled = True
        if self.cancelled:  # let nnU-Net's window loop drain; the caller raises Cancelled
            return x.new_zeros((x.shape[0], self.channels, *x.shape[2:]))
        out = self.network(x)
        self.done += 1
        report(self.progress, min(0.85, 0.05 + 0.8 * self.done / self.calls), "sliding window")
        return out


def _calls_per_fold(shape: tuple[int, ...], patch: tuple[int, ...], step: float,
                    mirror_axes: tuple[int, ...] | None) -> int:
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = [max(s, p) for s, p in zip(shape, patch)]
    steps = compute_steps_for_sliding_window(padded, patch, step)
    windows = int(np.prod([len(s) for s in steps]))
    mirrors = 2 ** len(mirror_axes) if mirror_axes else 1
    return windows * mirrors


def nnunet_logits(array: np.ndarray, affine: np.ndarray, model: Any, device: torch.device,
                  progress: ProgressCallback | None = None,
                  cancel: CancelCallback | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """nnU-Net's fold-averaged logits for one image, on the input grid.

    Parameters
    ----------
    array : numpy.ndarray
        ``(Z, Y, X)`` image as :func:`CalibSegLib.io.read_image` gives it; not modified.
    affine : numpy.ndarray
        Its 4×4 IJK-to-RAS matrix (only the voxel sizes matter to nnU-Net).
    model : Model
        A loaded model whose card has architecture ``nnunet``.
    device : torch.device
    progress, cancel : callable, optional

    Returns
    -------
    (torch.Tensor, dict)
        ``(1, C, Z, Y, X)`` float32 logits on the CPU and run information.
    """
    require_nnunetv2()
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    card = model.card
    settings: Mapping[str, Any] = card.nnunet
    plans, dataset = settings["plans"], settings["dataset"]
    manager = PlansManager(plans)
    config = manager.get_configuration(settings["configuration"])
    labels = manager.get_label_manager(dataset)
    channels = int(labels.num_segmentation_heads)
    check_cancel(cancel, "prediction")
    report(progress, 0.0, "nnU-Net preprocessing")
    data, properties, restore = reader_input(array, affine,
                                             str(plans.get("image_reader_writer")))
    preprocessor = config.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(data, None, properties, manager, config,
                                                    dataset)
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    check_cancel(cancel, "prediction")

    mirror_axes = settings.get("mirroring_axes")
    use_mirroring = bool(settings.get("mirroring", False)) and bool(mirror_axes)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about CPU devices
        predictor = nnUNetPredictor(
            tile_step_size=float(settings.get("tile_step_size", 0.5)), use_gaussian=True,
            use_mirroring=use_mirroring, perform_everything_on_device=device.type == "cuda",
            device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    folds = list(model.network.folds)
    predictor.manual_initialization(
        folds[0], manager, config, None, dataset, str(settings.get("trainer", "nnUNetTrainer")),
        tuple(mirror_axes) if mirror_axes else None)
    calls = _calls_per_fold(tuple(tensor.shape[1:]), tuple(config.patch_size),
                            predictor.tile_step_size,
                            tuple(mirror_axes) if use_mirroring and mirror_axes else None
                            ) * len(folds)
    report(progress, 0.05, "sliding window")
    summed: torch.Tensor | None = None
    done = 0
    with torch.inference_mode():
        for network in folds:
            watched = _WatchedNetwork(network, channels, calls, done, progress, cancel)
            predictor.network = watched
            try:
                logits = predictor.predict_sliding_window_return_logits(tensor).to("cpu")
            except RuntimeError as exc:
                if "Encountered inf" not in str(exc):
                    raise
                raise CalibSegError(
                    "nnU-Net's sliding window gave infinite logits (its float16 sums "
                    "overflowed); check the model's weights and the input intensities.") from exc
            done = watched.done
            if watched.cancelled:
                raise Cancelled("The prediction was cancelled; nothing was written.")
            # nnU-Net's ensemble: the folds' logits summed in their own dtype, then divided
            summed = logits if summed is None else summed.add_(logits)
        assert summed is not None  # a model has at least one fold
        if len(folds) > 1:
            summed /= len(folds)
    summed = summed.clone()  # an ordinary tensor again
    check_cancel(cancel, "prediction")
    report(progress, 0.85, "nnU-Net resampling")

    # convert_predicted_logits_to_segmentation_with_correct_shape, stopping before the softmax
    spacing_t = [properties["spacing"][i] for i in manager.transpose_forward]
    current = (config.spacing if len(config.spacing) ==
               len(properties["shape_after_cropping_and_before_resampling"])
               else [spacing_t[0], *config.spacing])
    logits = config.resampling_fn_probabilities(
        summed, properties["shape_after_cropping_and_before_resampling"], current, spacing_t)
    logits = torch.as_tensor(np.asarray(logits) if not torch.is_tensor(logits) else logits)
    logits = logits.float()
    full = torch.full((channels, *properties["shape_before_cropping"]), -OUTSIDE_LOGIT,
                      dtype=torch.float32)
    full[0] = 0.0
    full = insert_crop_into_image(full, logits, properties["bbox_used_for_cropping"])
    full = full.permute(0, *[i + 1 for i in manager.transpose_backward]).numpy()
    full = torch.from_numpy(np.ascontiguousarray(restore(full)))
    if tuple(full.shape[1:]) != tuple(np.asarray(array).shape):
        raise CalibSegError(
            f"nnU-Net returned logits of shape {tuple(full.shape[1:])} for an image of shape "
            f"{tuple(np.asarray(array).shape)}; re-import the model.")
    info = {
        "nnunet_configuration": settings["configuration"],
        "folds": len(folds),
        "overlap": 1.0 - float(predictor.tile_step_size),
        "mirroring": use_mirroring,
        "model_grid_shape": [int(s) for s in data.shape[1:]],
        "resampled": tuple(data.shape[1:]) != tuple(
            properties["shape_after_cropping_and_before_resampling"]),
        "axis_order": card.axis_order,
        "output_kind": card.output_kind,
    }
    return full[None], info


__all__ = ["OUTSIDE_LOGIT", "nnunet_logits"]
