"""``predict``: one volume, one model -> a :class:`Prediction` on the input grid.

Steps: validate the input; resample to the model grid (card spacing,
orientation and ``model_grid``; skipped when the input is already on it) with
the card's preprocessing transforms before or after (``preprocessing_grid``);
the array in the network's axis order (card ``axis_order``); sliding-window
inference with the card's window size and blending; the output checked against
the card's ``output_kind``; back to CalibSeg's axis order and the input grid
(logits or probabilities per ``output_resampling``, or prototype similarities,
trilinearly); logits from the output kind; softmax at the card's temperature,
confidence, normalised entropy and the prototype maps.

Every convention of a model from another framework is applied in
:func:`network_output` and :func:`output_logits` (and, for the compact form, in
:mod:`CalibSegLib.inference.predict_compact` by the same helpers), nowhere else.

Two result forms (``form``): **full** precision (``C`` float32 logits and
probabilities per voxel, 8·C bytes) and **compact** (top-k scores, at most 16 bytes
per voxel for any class count; error bounds in ``docs/bench/compact.md``).
``"auto"`` takes the full form while its logits and probabilities fit in
:data:`FULL_PRECISION_BUDGET_BYTES` (1 GiB: e.g. 3 classes up to 44 M voxels,
25 classes up to 5.4 M), the compact form beyond.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any, Literal, cast

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
from CalibSegLib.inference.predict_compact import network_topk
from CalibSegLib.inference.prediction import (
    Prediction,
    label_dtype,
    probability_maps,
    topk_maps,
)
from CalibSegLib.inference.resample import resample
from CalibSegLib.inference.sliding import _is_cuda_oom, sliding_window
from CalibSegLib.models.output_kind import check_output, to_logits, to_probabilities
from CalibSegLib.progress import (
    CancelCallback,
    ProgressCallback,
    check_cancel,
    report,
    scaled,
)

log = logging.getLogger(__name__)

#: ``form="auto"`` keeps full precision while logits and probabilities (8·C bytes per
#: voxel) fit in this many bytes, and predicts the compact top-k form beyond.
FULL_PRECISION_BUDGET_BYTES = 1 << 30

#: The result forms of :func:`predict`.
PredictionForm = Literal["auto", "full", "compact"]


def choose_form(form: str, num_classes: int, num_voxels: int, prototype_maps: bool = False
                ) -> Literal["full", "compact"]:
    """``"full"`` or ``"compact"`` for a requested ``form`` (see :func:`predict`).

    Prototype models with their maps always take the full form.
    """
    if form not in ("auto", "full", "compact"):
        raise CalibSegError(f"Unknown prediction form {form!r}; use auto, full or compact.")
    if prototype_maps or form == "full":
        return "full"
    if form == "compact":
        return "compact"
    full_bytes = 8 * int(num_classes) * int(num_voxels)
    return "full" if full_bytes <= FULL_PRECISION_BUDGET_BYTES else "compact"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; checks that a named CUDA device exists."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CalibSegError(f"Unknown device {device!r}; use auto, cpu or cuda.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CalibSegError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
    return dev


def validate_input(volume: Any, affine: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check a ``(Z, Y, X)`` volume and its 4×4 affine; return them as numpy arrays.

    Raises
    ------
    CalibSegError
        Non-3D or empty volume, non-numeric or non-finite values, an affine that is
        not a finite, invertible 4×4 matrix.
    """
    array = np.asarray(volume)
    if array.ndim != 3:
        raise CalibSegError(
            f"Expected a 3D (Z, Y, X) volume, got shape {array.shape}; pass one channel of "
            "one 3D image."
        )
    if array.size == 0:
        raise CalibSegError(f"The volume is empty (shape {array.shape}).")
    if array.dtype.kind not in "biuf":
        raise CalibSegError(f"The volume has non-numeric type {array.dtype}.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CalibSegError(
            "The volume holds NaN or infinite values; fill or mask them before predicting."
        )
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise CalibSegError(f"The affine must be a finite 4×4 matrix, got shape {matrix.shape}.")
    if not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise CalibSegError("The affine's last row must be (0, 0, 0, 1).")
    scale = float(np.prod(np.linalg.norm(matrix[:3, :3], axis=0)))
    if scale == 0 or abs(np.linalg.det(matrix[:3, :3])) < 1e-9 * scale:
        raise CalibSegError("The affine is singular (a zero-length or repeated voxel axis).")
    return array, matrix


def network_output(array: np.ndarray, matrix: np.ndarray, model: Any, dev: torch.device,
                   window: dict[str, Any], sw_batch_size: int, use_maps: bool,
                   progress: ProgressCallback | None, cancel: CancelCallback | None
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The network's output ``(1, K, Z, Y, X)`` on the input grid, in CalibSeg's axis order.

    Applies the card's conventions: preprocessing (``preprocessing``, on the grid
    ``preprocessing_grid`` names), resampling to the model grid (``spacing_mm``,
    ``orientation``, ``model_grid``), the network's axis order (``axis_order``), the
    window (``patch_size``) and blending (``sliding_window``), the check of the
    output against ``output_kind``, and the way back (``output_resampling``). ``K`` is
    the class count, or the prototype count with ``use_maps``. Called under
    ``torch.no_grad()`` with the network on ``dev``.

    Returns
    -------
    (output, info)
        ``info["returned_as"]`` says what the returned channels are: the card's
        ``output_kind``, or ``"probabilities"`` when they were resampled as
        probabilities (absent: the card's ``output_kind``).
    """
    card = model.card
    if card.architecture == "nnunet":  # nnU-Net's own preprocessing, window, folds, resampling
        return nnunet_logits(array, matrix, model, dev, progress, cancel)
    network = model.network
    x, grid_shape, grid_affine, resampled = model_input(array, matrix, card, dev)
    check_cancel(cancel, "prediction")
    report(progress, 0.05, "sliding window")
    predictor = network.similarity if use_maps else network
    channels = card.num_prototypes if use_maps else card.num_classes
    checked = CheckedNetwork(predictor, channels, "prototypes" if use_maps else "classes")
    out, info = sliding_window(
        to_network_axes(x, card.axis_order), checked, window_in_network_axes(card),
        **window_options(window, sw_batch_size), progress=scaled(progress, 0.05, 0.9),
        cancel=cancel)
    del x
    out = from_network_axes(out, card.axis_order)
    check_cancel(cancel, "prediction")
    kind = card.output_kind
    if not use_maps:
        check_output(out, kind)
    if resampled:
        if card.output_resampling == "probabilities" and not use_maps:
            out, kind = to_probabilities(out, kind), "probabilities"
        out = resample(out.contiguous(), grid_affine, array.shape, matrix)
    info.update(model_grid_shape=list(grid_shape), resampled=resampled,
                axis_order=card.axis_order, output_kind=card.output_kind, returned_as=kind)
    return out.contiguous(), info


def output_logits(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits from ``(1, C, Z, Y, X)`` output of ``kind`` on the input grid (checked by
    :func:`network_output`): probabilities and log-probabilities become ``log p``."""
    return to_logits(out, kind)


def _postprocess(out: torch.Tensor, network: Any, use_maps: bool,
                 temperature: float, num_classes: int, output_kind: str = "logits"
                 ) -> dict[str, np.ndarray]:
    """Logits, probabilities and maps (numpy) from network output on the input grid."""
    result: dict[str, torch.Tensor] = {}
    if use_maps:
        if not torch.isfinite(out).all():
            raise CalibSegError(
                "The network gave NaN or infinite prototype similarities; check the model's "
                "weights and the input intensities.")
        maps = network.maps_from_similarity(out)
        logits = maps["logits"][0]
        result["similarity"] = out[0]
        result["top_similarity"] = maps["top_similarity"][0]
        result["nearest_prototype"] = maps["nearest_prototype"][0].to(torch.int16)
        result["prototype_contribution"] = maps["winning_contribution"][0]
    else:
        logits = output_logits(out, output_kind)[0]
    if logits.shape[0] != num_classes:
        raise CalibSegError(
            f"The network gives {logits.shape[0]} output channels but the card lists "
            f"{num_classes} classes; fix the card's classes."
        )
    probs, confidence, entropy = probability_maps(logits, temperature)
    result.update(logits=logits, probs=probs, confidence=confidence, entropy=entropy,
                  labels=logits.argmax(dim=0))
    arrays: dict[str, np.ndarray] = {}
    for key, value in result.items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.float()
        arrays[key] = value.numpy()
    arrays["labels"] = arrays["labels"].astype(label_dtype(num_classes))
    return arrays


def predict(volume: np.ndarray, affine: np.ndarray, model: Any, device: str = "auto",
            progress: ProgressCallback | None = None, cancel: CancelCallback | None = None, *,
            overlap: float | None = None, sw_batch_size: int = 4, maps: bool = True,
            temperature: float | None = None, form: PredictionForm = "auto") -> Prediction:
    """Segment ``volume`` with ``model``; return a :class:`Prediction` on the input grid.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(Z, Y, X)`` image; not modified.
    affine : numpy.ndarray
        Its 4×4 IJK-to-RAS matrix (voxel index order ``i, j, k`` = ``X, Y, Z``);
        anisotropic and oblique affines are fine.
    model : Model
        From :func:`CalibSegLib.models.load_model`.
    device : str
        ``"auto"`` (CUDA when available, with float16 autocast), ``"cpu"``, ``"cuda"``.
        The network is moved there for the call and moved back afterwards.
    progress, cancel : callable, optional
        ``progress(fraction, message)`` per window batch; ``cancel() -> bool`` checked
        per window batch (raises :class:`~CalibSegLib.errors.Cancelled`, nothing kept).
    overlap : float, optional
        Sliding-window overlap in [0, 1); default the card's ``sliding_window``
        overlap (0.25 unless the card says otherwise).
    sw_batch_size : int
        Windows per network call (halved automatically on CUDA out-of-memory).
    maps : bool
        Prototype models: also compute similarity, nearest prototype, top similarity
        and contribution maps.
    temperature : float, optional
        Softmax temperature; default the card's.
    form : {"auto", "full", "compact"}
        ``"full"``: logits and probabilities in float32. ``"compact"``: the top-k form
        (``Prediction.scores``), streamed window by window without ``C × N`` float32 on
        the input grid (:mod:`CalibSegLib.inference.predict_compact` gives the memory
        of each case). ``"auto"`` (default): full while ``8·C·N`` bytes fit in
        :data:`FULL_PRECISION_BUDGET_BYTES`, else compact. Prototype models with
        ``maps`` always take the full form. ``info["form"]`` tells which was taken.

    Returns
    -------
    Prediction

    Raises
    ------
    CalibSegError
        Bad input (non-3D, empty, NaN, singular affine), unknown device, out of memory,
        a network whose output does not fit the card (spatial size, channel count, NaN,
        probabilities that do not sum to one).
    Cancelled
        When ``cancel()`` returned true.
    """
    started = time.perf_counter()
    array, matrix = validate_input(volume, affine)
    dev = resolve_device(device)
    card = model.card
    t = float(card.temperature if temperature is None else temperature)
    if not np.isfinite(t) or t <= 0:
        raise CalibSegError(f"Temperature must be a positive number, got {temperature!r}.")
    window = card.sliding_window
    if overlap is not None:
        window["overlap"] = float(overlap)
    check_cancel(cancel, "prediction")
    report(progress, 0.0, "preprocessing")
    network = model.network
    use_maps = bool(maps) and card.is_prototype and hasattr(network, "maps_from_similarity")
    taken = choose_form(form, card.num_classes, array.size, use_maps)
    info: dict[str, Any] = {"device": str(dev), "overlap": float(window["overlap"]),
                            "form": taken}
    if taken == "compact":
        return _predict_compact(array, matrix, model, dev, window, sw_batch_size, t, info,
                                started, progress, cancel)
    with _evaluating_on(model, dev):
        out, run_info = network_output(array, matrix, model, dev, window, sw_batch_size,
                                       use_maps, progress, cancel)
        info.update(run_info)
        kind = str(info.pop("returned_as", card.output_kind))
        check_cancel(cancel, "prediction")
        report(progress, 0.9, "probabilities and maps")
        arrays = _finish(out, network, use_maps, t, card.num_classes, kind)
    check_cancel(cancel, "prediction")
    proto: dict[str, Any] = {}
    if use_maps:
        proto = {
            "prototype_class": network.prototype_class.detach().cpu().numpy().astype(np.int64),
            "prototype_weights": network.class_weights.detach().cpu().float().numpy().copy(),
        }
    info["seconds"] = time.perf_counter() - started
    prediction = Prediction(
        affine=matrix.copy(), class_names=card.class_names, class_colors=card.class_colors,
        temperature=t, model_name=card.name, model_version=card.version, info=info,
        **cast(dict[str, Any], arrays), **proto,
    )
    report(progress, 1.0, "done")
    return prediction


@contextlib.contextmanager
def _evaluating_on(model: Any, dev: torch.device) -> Iterator[None]:
    """Within this block ``model.network`` is in eval mode on ``dev``, without gradients;
    afterwards it is back on the model's device."""
    original_device = model.device
    try:
        model.network.to(dev)
        model.network.eval()
        with torch.no_grad():
            yield
    finally:
        model.network.to(original_device)


def _predict_compact(array: np.ndarray, matrix: np.ndarray, model: Any, dev: torch.device,
                     window: dict[str, Any], sw_batch_size: int, temperature: float,
                     info: dict[str, Any], started: float,
                     progress: ProgressCallback | None, cancel: CancelCallback | None
                     ) -> Prediction:
    """:func:`predict` into the compact form (``Prediction.scores``)."""
    card = model.card
    with _evaluating_on(model, dev):
        scores, run_info = network_topk(array, matrix, model, dev, window, sw_batch_size,
                                        scaled(progress, 0.0, 0.9), cancel)
    info.update(run_info)
    check_cancel(cancel, "prediction")
    scores = dataclasses.replace(scores, temperature=temperature, affine=matrix.copy(),
                                 class_names=tuple(card.class_names))
    confidence, entropy = topk_maps(scores, scaled(progress, 0.9, 1.0), cancel)
    info["seconds"] = time.perf_counter() - started
    prediction = Prediction(
        logits=None, probs=None, labels=scores.labels(), confidence=confidence,
        entropy=entropy, affine=matrix.copy(), class_names=card.class_names,
        class_colors=card.class_colors, temperature=temperature, model_name=card.name,
        model_version=card.version, info=info, scores=scores)
    report(progress, 1.0, "done")
    return prediction


def _finish(out: torch.Tensor, network: Any, use_maps: bool, temperature: float,
            num_classes: int, output_kind: str = "logits") -> dict[str, np.ndarray]:
    """Post-process, falling back to the CPU when CUDA runs out of memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return _postprocess(out, network, use_maps, temperature, num_classes, output_kind)
        except Exception as exc:
            if not (out.is_cuda and _is_cuda_oom(exc)):
                raise
            log.warning("CUDA out of memory computing probabilities; finishing on the CPU.")
            torch.cuda.empty_cache()
            network.to("cpu")
            return _postprocess(out.cpu(), network, use_maps, temperature, num_classes,
                                output_kind)
