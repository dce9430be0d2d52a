"""``predict``: one volume, one model -> a :class:`Prediction` on the input grid.

Steps: validate the input; normalise intensities per the card (on the input
grid); resample to the model grid (card spacing and orientation; skipped when
the input is already on it); Gaussian-blended sliding-window inference; back to
the input grid (logits, or prototype similarities, trilinearly); softmax at the
card's temperature, confidence, normalised entropy and the prototype maps.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference.prediction import Prediction, label_dtype, probability_maps
from CalibSegLib.inference.resample import model_grid, resample, same_grid
from CalibSegLib.inference.sliding import _is_cuda_oom, sliding_window
from CalibSegLib.models.normalization import normalize_intensity
from CalibSegLib.progress import (
    CancelCallback,
    ProgressCallback,
    check_cancel,
    report,
    scaled,
)

log = logging.getLogger(__name__)


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


def _postprocess(out: torch.Tensor, network: torch.nn.Module, use_maps: bool,
                 temperature: float, num_classes: int) -> dict[str, np.ndarray]:
    """Logits, probabilities and maps (numpy) from network output on the input grid."""
    result: dict[str, np.ndarray] = {}
    if use_maps:
        maps = network.maps_from_similarity(out)
        logits = maps["logits"][0]
        result["similarity"] = out[0]
        result["top_similarity"] = maps["top_similarity"][0]
        result["nearest_prototype"] = maps["nearest_prototype"][0].to(torch.int16)
        result["prototype_contribution"] = maps["winning_contribution"][0]
    else:
        logits = out[0]
    if logits.shape[0] != num_classes:
        raise CalibSegError(
            f"The network gives {logits.shape[0]} output channels but the card lists "
            f"{num_classes} classes; fix the card's classes."
        )
    probs, confidence, entropy = probability_maps(logits, temperature)
    result.update(logits=logits, probs=probs, confidence=confidence, entropy=entropy,
                  labels=logits.argmax(dim=0))
    arrays = {}
    for key, value in result.items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.float()
        arrays[key] = value.numpy()
    arrays["labels"] = arrays["labels"].astype(label_dtype(num_classes))
    return arrays


def predict(volume: np.ndarray, affine: np.ndarray, model: Any, device: str = "auto",
            progress: ProgressCallback | None = None, cancel: CancelCallback | None = None, *,
            overlap: float = 0.25, sw_batch_size: int = 4, maps: bool = True,
            temperature: float | None = None) -> Prediction:
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
    overlap : float
        Sliding-window overlap in [0, 1).
    sw_batch_size : int
        Windows per network call (halved automatically on CUDA out-of-memory).
    maps : bool
        Prototype models: also compute similarity, nearest prototype, top similarity
        and contribution maps.
    temperature : float, optional
        Softmax temperature; default the card's.

    Returns
    -------
    Prediction

    Raises
    ------
    CalibSegError
        Bad input (non-3D, empty, NaN, singular affine), unknown device, out of memory.
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
    check_cancel(cancel, "prediction")
    report(progress, 0.0, "normalising")
    network = model.network
    original_device = model.device
    use_maps = bool(maps) and card.is_prototype and hasattr(network, "maps_from_similarity")
    grid_shape, grid_affine = model_grid(array.shape, matrix, card.spacing_mm, card.orientation)
    resampled = not same_grid(array.shape, matrix, grid_shape, grid_affine)
    roi = tuple(reversed(card.patch_size))
    info: dict[str, Any] = {"device": str(dev), "model_grid_shape": list(grid_shape),
                            "resampled": resampled, "overlap": float(overlap)}
    try:
        network.to(dev)
        network.eval()
        with torch.no_grad():
            x = torch.from_numpy(normalize_intensity(array, card.normalization))[None, None]
            x = x.to(dev)
            if resampled:
                x = resample(x, matrix, grid_shape, grid_affine)
            check_cancel(cancel, "prediction")
            report(progress, 0.05, "sliding window")
            predictor = network.similarity if use_maps else network
            out, run_info = sliding_window(
                x, predictor, roi, sw_batch_size=sw_batch_size, overlap=overlap,
                progress=scaled(progress, 0.05, 0.9), cancel=cancel)
            info.update(run_info)
            del x
            check_cancel(cancel, "prediction")
            report(progress, 0.9, "probabilities and maps")
            if resampled:
                out = resample(out, grid_affine, array.shape, matrix)
            arrays = _finish(out, network, use_maps, t, card.num_classes)
    finally:
        network.to(original_device)
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
        **arrays, **proto,
    )
    report(progress, 1.0, "done")
    return prediction


def _finish(out: torch.Tensor, network: torch.nn.Module, use_maps: bool, temperature: float,
            num_classes: int) -> dict[str, np.ndarray]:
    """Post-process, falling back to the CPU when CUDA runs out of memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return _postprocess(out, network, use_maps, temperature, num_classes)
        except Exception as exc:
            if not (out.is_cuda and _is_cuda_oom(exc)):
                raise
            log.warning("CUDA out of memory computing probabilities; finishing on the CPU.")
            torch.cuda.empty_cache()
            network.to("cpu")
            return _postprocess(out.cpu(), network, use_maps, temperature, num_classes)
