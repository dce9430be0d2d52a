"""The network's class scores on the input grid, straight into the top-k form.

The compact counterpart of :func:`~CalibSegLib.inference.predict.network_output`,
applying the same card conventions, without ever holding ``C × N`` float32 on the
input grid:

- **input on the model grid** (the common case): the sliding window streams the
  blended output window by window into a
  :class:`~CalibSegLib.inference.topk.TopKPrediction`
  (:func:`~CalibSegLib.inference.streaming.sliding_window_topk`); each finished
  slab is checked against the card's ``output_kind`` and turned into logits
  before it is compacted. Networks in ``XYZ`` axis order stream along their own
  first axis; the small top-k arrays are transposed afterwards. Peak extra memory:
  about three slabs of ``C × roi_depth × plane`` float32, plus 16 bytes per voxel.
  When CUDA runs out of memory the window batch is halved and the stream goes on
  from the first window not yet blended (``info["retries"]``), as on the full path.
- **resampled grid** (card spacing or orientation differ from the input's): the
  network output is held on the model grid (``C × N_model`` float32, as the full
  path holds it), then resampled to the input grid a few planes at a time straight
  into the top-k writer (``C × compaction chunk`` float32 at a time). The input
  grid never holds ``C × N`` float32; the model grid does, so memory is bounded by
  the model grid's size, which the card's spacing fixes (a 1.5 mm model on a
  0.7 mm CT: about a tenth of the input voxels).
- **nnU-Net** runs its own pipeline (folds, mirroring, resampling) to full
  ``C × N`` logits on the input grid, which are then compacted chunk by chunk:
  the result is compact, the peak during inference is the full path's.

Prototype models with their maps stay on the full path (their ``P`` similarity
maps are per voxel anyway).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference.network_input import (
    CheckedNetwork,
    from_network_axes,
    model_input,
    to_network_axes,
    window_in_network_axes,
    window_options,
)
from CalibSegLib.inference.nnunet import nnunet_logits
from CalibSegLib.inference.resample import resample
from CalibSegLib.inference.sliding import sliding_window
from CalibSegLib.inference.streaming import sliding_window_topk
from CalibSegLib.inference.topk import TopKPrediction, TopKWriter, compact_logits, compaction_chunk
from CalibSegLib.models.output_kind import (
    DETECT_TOLERANCE,
    _probability_error,
    check_output,
    to_logits,
    to_probabilities,
)
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report, scaled


class SlabLogits:
    """Checks each slab ``(C, planes, Y, X)`` of network output of ``kind`` and returns logits.

    The check is :func:`~CalibSegLib.models.output_kind.check_output`, plane by plane
    (temporaries of one plane, not of the slab); probabilities and log-probabilities
    become logits in place. For ``logits`` the "already probabilities" test needs the
    whole volume, so it is decided by :meth:`finish` (every plane looked like
    probabilities; the test stops at the first plane that does not).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.all_probabilities = True

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        for z in range(int(block.shape[1])):
            plane = block[:, z:z + 1][None]  # (1, C, 1, Y, X)
            if self.kind == "logits":
                _check_finite(plane)
                if self.all_probabilities and (
                        plane.shape[1] < 2
                        or _probability_error(plane.float()) > DETECT_TOLERANCE):
                    self.all_probabilities = False
                continue
            check_output(plane, self.kind)
            block[:, z:z + 1] = to_logits(plane, self.kind)[0]
        return block

    def finish(self) -> None:
        """One CalibSegError when every block looked like probabilities under a logits card."""
        if self.kind == "logits" and self.all_probabilities:
            raise CalibSegError(
                "The card says output_kind 'logits' but the network's outputs are already "
                "probabilities (non-negative, summing to 1 over channels); set output_kind to "
                "'probabilities' in model.json so the softmax is not applied twice.")


def _check_finite(batch: torch.Tensor) -> None:
    if not bool(torch.isfinite(batch).all()):
        raise CalibSegError(
            "The network gave NaN or infinite outputs; check the model's weights and the input "
            "intensities (the card's preprocessing), and try --device cpu.")


def transposed(scores: TopKPrediction) -> TopKPrediction:
    """The top-k form with its spatial axes reversed (network ``X, Y, Z`` -> ``Z, Y, X``)."""
    def flip(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array.transpose(0, 3, 2, 1))

    return TopKPrediction(indices=flip(scores.indices), gaps=flip(scores.gaps),
                          tail=flip(scores.tail), num_classes=scores.num_classes,
                          temperature=scores.temperature, affine=scores.affine,
                          class_names=scores.class_names)


def resampled_topk(out: torch.Tensor, kind: str, grid_affine: np.ndarray,
                   shape: tuple[int, int, int], matrix: np.ndarray,
                   cancel: CancelCallback | None = None) -> TopKPrediction:
    """Top-k form on the input grid ``(shape, matrix)`` of ``(1, C, ...)`` output of ``kind``
    on the model grid, resampled (trilinear) a few planes at a time."""
    num_classes = int(out.shape[1])
    writer = TopKWriter(num_classes, shape)
    plane = int(shape[1]) * int(shape[2])
    step = max(1, compaction_chunk(num_classes) // max(plane, 1))
    for z0 in range(0, int(shape[0]), step):
        check_cancel(cancel, "prediction")
        z1 = min(int(shape[0]), z0 + step)
        shift = np.eye(4)
        shift[2, 3] = z0  # voxel index k of the slab's first plane
        part = resample(out, grid_affine, (z1 - z0, int(shape[1]), int(shape[2])),
                        matrix @ shift)
        writer.write_planes(z0, to_logits(part, kind)[0].float().cpu())
    return writer.finish()


def network_topk(array: np.ndarray, matrix: np.ndarray, model: Any, dev: torch.device,
                 window: dict[str, Any], sw_batch_size: int,
                 progress: ProgressCallback | None, cancel: CancelCallback | None
                 ) -> tuple[TopKPrediction, dict[str, Any]]:
    """The model's class scores on the input grid as a :class:`TopKPrediction` (temperature
    1, no affine or names yet) and run information. ``array`` is the image, shape
    (Z, Y, X), ``matrix`` its affine of shape (4, 4). Called under ``torch.no_grad()``
    with the network on ``dev``."""
    card = model.card
    num_classes = int(card.num_classes)
    if card.architecture == "nnunet":
        out, info = nnunet_logits(array, matrix, model, dev, progress, cancel)
        kind = str(info.pop("returned_as", card.output_kind))
        logits = to_logits(out, kind)[0]
        del out
        info["streamed"] = False
        return compact_logits(logits, cancel=cancel), info
    x, grid_shape, grid_affine, resampled = model_input(array, matrix, card, dev)
    check_cancel(cancel, "prediction")
    report(progress, 0.05, "sliding window")
    checked = CheckedNetwork(model.network, num_classes, "classes")
    options = dict(window_options(window, sw_batch_size),
                   progress=scaled(progress, 0.05, 0.9), cancel=cancel)
    kind = card.output_kind
    if not resampled:
        slab = SlabLogits(kind)
        scores, info = sliding_window_topk(
            to_network_axes(x, card.axis_order), checked, window_in_network_axes(card),
            num_classes, planes=slab, **options)
        slab.finish()
        if card.axis_order == "XYZ":
            scores = transposed(scores)
        info["streamed"] = True
    else:
        out, info = sliding_window(to_network_axes(x, card.axis_order), checked,
                                   window_in_network_axes(card), **options)
        del x
        out = from_network_axes(out, card.axis_order)
        check_output(out, kind)
        if card.output_resampling == "probabilities":
            out, kind = to_probabilities(out, kind), "probabilities"
        scores = resampled_topk(out.contiguous(), kind, grid_affine, array.shape, matrix,
                                cancel)
        info["streamed"] = False
    info.update(model_grid_shape=list(grid_shape), resampled=resampled,
                axis_order=card.axis_order, output_kind=card.output_kind)
    return scores, info
