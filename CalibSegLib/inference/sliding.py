"""Sliding-window inference with progress, cancellation and a CUDA out-of-memory fallback.

MONAI's ``sliding_window_inference`` (Gaussian blending) does the tiling; the
network call is wrapped so that every window batch reports progress, checks for
cancellation and (on CUDA) runs under float16 autocast. When CUDA runs out of
memory the run is retried with half the window batch down to one window, and
then with the stitched output kept on the CPU; each retry is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import sliding_window_inference as _sliding_window_inference

from CalibSegLib.errors import CalibSegError
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

log = logging.getLogger(__name__)


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding window takes over ``shape`` with ``roi``."""
    total = 1
    for size, window in zip(shape, roi):
        size = max(int(size), int(window))
        interval = window if size == window else max(int(window * (1.0 - overlap)), 1)
        total *= int(math.ceil(max(size - window, 0) / interval)) + 1
    return total


class _Predictor:
    """The network call per window batch: cancel check, autocast, float32 output, progress."""

    def __init__(self, network: Callable[[torch.Tensor], Any], total_batches: int,
                 progress: ProgressCallback | None, cancel: CancelCallback | None,
                 autocast: bool) -> None:
        self.network = network
        self.total = max(1, int(total_batches))
        self.progress = progress
        self.cancel = cancel
        self.autocast = autocast
        self.done = 0
        self.reported = 0.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        check_cancel(self.cancel, "prediction")
        if self.autocast:
            with torch.autocast("cuda", dtype=torch.float16):
                out = self.network(batch)
        else:
            out = self.network(batch)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, (tuple, list)):
            out = out[0]
        self.done += 1
        fraction = min(1.0, self.done / self.total)
        if fraction > self.reported:  # monotone even across retries
            self.reported = fraction
            report(self.progress, fraction,
                   f"window batch {min(self.done, self.total)}/{self.total}")
        return out.float()


def _is_cuda_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc))


def _is_cpu_oom(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, (MemoryError, RuntimeError)) and (
        isinstance(exc, MemoryError) or "can't allocate memory" in text
        or "not enough memory" in text)


def sliding_window(x: torch.Tensor, network: Callable[[torch.Tensor], Any],
                   roi_size: Sequence[int], *, sw_batch_size: int = 4, overlap: float = 0.25,
                   progress: ProgressCallback | None = None,
                   cancel: CancelCallback | None = None,
                   cuda: bool | None = None, mode: str = "gaussian",
                   sigma_scale: float = 0.125, padding_mode: str = "replicate",
                   cval: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Gaussian-blended sliding-window inference of ``network`` over ``x`` (1, 1, Z, Y, X).

    Parameters
    ----------
    x : torch.Tensor
        Input batch on the device the network runs on.
    network : callable
        ``(n, 1, *roi) -> (n, K, *roi)``.
    roi_size : sequence of int
        Window ``(Z, Y, X)``.
    sw_batch_size : int
        Windows per network call (halved on CUDA out-of-memory).
    overlap : float
        Fraction of a window shared with its neighbour.
    progress, cancel
        Called per window batch; cancel raises :class:`~CalibSegLib.errors.Cancelled`.
    cuda : bool, optional
        Whether this is a CUDA run (default: ``x.is_cuda``); enables float16 autocast
        and the out-of-memory fallback.
    mode, sigma_scale, padding_mode, cval
        Window blending (``"gaussian"`` or ``"constant"``) and padding of inputs
        smaller than a window, as MONAI's ``sliding_window_inference`` takes them.

    Returns
    -------
    (output, info)
        ``(1, K, Z, Y, X)`` float32 output and ``{"sw_batch_size", "stitch_device",
        "retries"}`` describing the run that succeeded.
    """
    if not 0.0 <= float(overlap) < 1.0:
        raise CalibSegError(f"overlap must be in [0, 1), got {overlap}.")
    if int(sw_batch_size) < 1:
        raise CalibSegError(f"sw_batch_size must be at least 1, got {sw_batch_size}.")
    cuda = bool(x.is_cuda) if cuda is None else bool(cuda)
    windows = count_windows(x.shape[2:], roi_size, float(overlap))
    attempts: list[tuple[int, str | None]] = []
    size = int(sw_batch_size)
    while True:
        attempts.append((size, None))
        if size == 1 or not cuda:
            break
        size = max(1, size // 2)
    if cuda:
        attempts.append((1, "cpu"))
    predictor = _Predictor(network, 1, progress, cancel, autocast=cuda)
    for number, (batch, stitch) in enumerate(attempts):
        predictor.total = int(math.ceil(windows / batch))
        predictor.done = 0
        try:
            out = _sliding_window_inference(
                x, roi_size=tuple(int(r) for r in roi_size), sw_batch_size=batch,
                predictor=predictor, overlap=float(overlap), mode=mode,
                sigma_scale=float(sigma_scale), padding_mode=padding_mode, cval=float(cval),
                sw_device=x.device,
                device=torch.device(stitch) if stitch else None,
            )
        except Exception as exc:
            if cuda and _is_cuda_oom(exc):
                if number + 1 < len(attempts):
                    nxt = attempts[number + 1]
                    log.warning(
                        "CUDA out of memory with sw_batch_size=%d%s; retrying with "
                        "sw_batch_size=%d%s.", batch, " (stitching on CPU)" if stitch else "",
                        nxt[0], " and stitching on the CPU" if nxt[1] else "")
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                raise CalibSegError(
                    "Out of GPU memory even with one window at a time and the result kept on "
                    "the CPU; run on the CPU (--device cpu) or free GPU memory."
                ) from exc
            if _is_cpu_oom(exc):
                raise CalibSegError(
                    "Out of memory during prediction; close other programs, use a smaller "
                    "sw_batch_size, or crop the image."
                ) from exc
            raise
        assert isinstance(out, torch.Tensor)  # the wrapped network returns one tensor
        info = {"sw_batch_size": batch, "stitch_device": str(out.device), "retries": number,
                "windows": windows}
        return out, info
    raise AssertionError("unreachable")  # pragma: no cover
