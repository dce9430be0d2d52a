"""What a network's output channels are: logits, probabilities or log-probabilities.

CalibSeg keeps *logits* downstream (softmax at a temperature, temperature fitting,
statistics). A network that already ends in a softmax gives probabilities
``p``; one that ends in a log-softmax gives ``log p``. Both are turned into
logits as ``log p`` with ``p`` clamped below at :data:`PROBABILITY_FLOOR`, the
smallest normal float32 (``log p >= -87.3``): every probability a float32 network
can give keeps its logarithm and only exact zeros (and subnormals) are raised, so
``log p`` is never minus infinity. This is exact for the softmax
(``softmax(log p) = p`` for a normalised ``p``), and temperature scaling
``softmax(log p / T) ∝ p^(1/T)`` equals scaling the logits the probabilities came
from (``log softmax(z) = z - logsumexp(z)`` differs from ``z`` by a per-voxel
constant, which the softmax ignores).
"""

from __future__ import annotations

import math

import torch

from CalibSegLib.errors import CalibSegError

OUTPUT_KINDS = ("logits", "probabilities", "log_probabilities")

#: Smallest probability kept when probabilities become log-probabilities (float32's
#: smallest normal number, about 1.18e-38; its log is about -87.3).
PROBABILITY_FLOOR = float(torch.finfo(torch.float32).tiny)

#: Tolerance for "sums to one over channels" when an import probes the network.
DETECT_TOLERANCE = 1e-4

#: Looser tolerance when checking a prediction against its card (float16 on CUDA).
CHECK_TOLERANCE = 1e-2


def _probability_error(out: torch.Tensor) -> float:
    """Largest deviation from ``p >= 0`` and ``sum_c p = 1`` of ``(B, C, ...)`` outputs."""
    negative = float((-out).clamp_min(0.0).max())
    total = float((out.sum(dim=1) - 1.0).abs().max())
    return max(negative, total)


def _log_probability_error(out: torch.Tensor) -> float:
    """Largest deviation from ``log p <= 0`` and ``logsumexp_c log p = 0``."""
    positive = float(out.clamp_min(0.0).max())
    total = float(torch.logsumexp(out, dim=1).abs().max())
    return max(positive, total)


def detect_output_kind(out: torch.Tensor) -> str:
    """Classify probe output ``(B, C, ...)``: logits, probabilities or log-probabilities.

    Non-negative and summing to 1 over channels -> probabilities; ``exp`` summing
    to 1 -> log-probabilities; anything else -> logits.

    Raises
    ------
    CalibSegError
        NaN or infinite outputs, or outputs in [0, 1] that do not sum to 1 (a sigmoid
        or multi-label network, which CalibSeg's softmax calibration does not fit).
    """
    out = out.detach().double()
    if out.dim() < 3 or out.shape[1] < 2:
        raise CalibSegError(
            f"The network gives output of shape {tuple(out.shape)}; CalibSeg needs (B, C, ...) "
            "with at least two class channels.")
    if not torch.isfinite(out).all():
        raise CalibSegError(
            "The network gives NaN or infinite outputs on a sample input; check the weights "
            "and the network definition.")
    if _probability_error(out) <= DETECT_TOLERANCE:
        return "probabilities"
    if _log_probability_error(out) <= DETECT_TOLERANCE:
        return "log_probabilities"
    if float(out.min()) >= 0.0 and float(out.max()) <= 1.0:
        raise CalibSegError(
            "The network's outputs lie in [0, 1] but do not sum to 1 over channels (a sigmoid "
            "or multi-label output?); CalibSeg calibrates one-of-C softmax outputs. Pass "
            "--output-kind logits to treat them as logits anyway.")
    return "logits"


def check_output(out: torch.Tensor, kind: str, tolerance: float = CHECK_TOLERANCE) -> None:
    """Check network output ``(B, C, ...)`` against the card's ``output_kind``.

    Raises
    ------
    CalibSegError
        NaN (any kind) or infinite values (``-inf`` is allowed for log-probabilities),
        probabilities that are negative or do not sum to 1, log-probabilities whose
        ``exp`` does not sum to 1, or logits that are plainly probabilities already (the
        softmax would be applied twice).
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}; use {', '.join(OUTPUT_KINDS)}")
    if torch.isnan(out).any() or torch.isposinf(out).any() or (
            kind != "log_probabilities" and torch.isneginf(out).any()):
        raise CalibSegError(
            "The network gave NaN or infinite outputs; check the model's weights and the input "
            "intensities (the card's preprocessing), and try --device cpu.")
    out = out.detach().float()
    if kind == "probabilities":
        error = _probability_error(out)
        if error > tolerance:
            raise CalibSegError(
                f"The card says output_kind 'probabilities' but the network's outputs are not "
                f"non-negative values summing to 1 over channels (off by {error:.3g}); set "
                "output_kind to 'logits' in model.json or re-import the model.")
    elif kind == "log_probabilities":
        error = _log_probability_error(out.clamp_min(math.log(PROBABILITY_FLOOR) * 10))
        if error > tolerance:
            raise CalibSegError(
                f"The card says output_kind 'log_probabilities' but exp(output) does not sum to "
                f"1 over channels (off by {error:.3g}); set output_kind to 'logits' in "
                "model.json or re-import the model.")
    elif out.shape[1] >= 2 and _probability_error(out) <= DETECT_TOLERANCE:
        raise CalibSegError(
            "The card says output_kind 'logits' but the network's outputs are already "
            "probabilities (non-negative, summing to 1 over channels); set output_kind to "
            "'probabilities' in model.json so the softmax is not applied twice.")


def to_probabilities(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Probabilities ``(B, C, ...)`` from network output of ``kind`` (softmax over dim 1 for
    logits, ``exp`` for log-probabilities)."""
    if kind == "logits":
        return torch.softmax(out.float(), dim=1)
    if kind == "log_probabilities":
        return torch.exp(out.float())
    if kind == "probabilities":
        return out
    raise ValueError(f"unknown output kind {kind!r}; use {', '.join(OUTPUT_KINDS)}")


def to_logits(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits (values whose softmax is the class probabilities) from network output.

    ``logits`` pass through; probabilities become ``log(max(p, PROBABILITY_FLOOR))``;
    log-probabilities are clamped below at ``log(PROBABILITY_FLOOR)``. Shape unchanged:
    ``out`` of shape (B, C, Z, Y, X) gives logits of shape (B, C, Z, Y, X).
    """
    if kind == "logits":
        return out
    floor = math.log(PROBABILITY_FLOOR)
    if kind == "probabilities":
        return torch.log(out.clamp_min(PROBABILITY_FLOOR))
    if kind == "log_probabilities":
        return out.clamp_min(floor)
    raise ValueError(f"unknown output kind {kind!r}; use {', '.join(OUTPUT_KINDS)}")
