"""Intensity preprocessing as the card describes it: an ordered list of MONAI transforms.

A card's ``preprocessing`` is a list of ``{"transform": NAME, "args": {...}}``
items. ``NAME`` must be one of :data:`ALLOWED_TRANSFORMS` (MONAI intensity
transforms that change voxel values only, never the grid) and ``args`` may hold
only the plain-JSON arguments listed for it. Each item is built with MONAI's own
class (``monai.transforms.<NAME>(**args)``); nothing in a card is evaluated as
code. The transforms run in order on a channel-first ``(1, *spatial)`` float32
tensor, as in a MONAI pipeline after ``LoadImage`` and ``EnsureChannelFirst``.

Version-1 cards had one ``normalization`` object; :func:`legacy_to_transforms`
turns it into the equivalent list (``zscore`` -> ``NormalizeIntensity``,
``percentile`` -> ``ScaleIntensityRangePercentiles``, ``range`` ->
``ScaleIntensityRange``, ``none`` -> no transform).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import monai.transforms
import numpy as np
import torch

from CalibSegLib.errors import CalibSegError

# Argument kinds: "number", "number?" (number or null), "percent", "percent?", "bool".
ALLOWED_TRANSFORMS: dict[str, dict[str, str]] = {
    "NormalizeIntensity": {"subtrahend": "number?", "divisor": "number?", "nonzero": "bool",
                           "channel_wise": "bool"},
    "ScaleIntensityRange": {"a_min": "number", "a_max": "number", "b_min": "number?",
                            "b_max": "number?", "clip": "bool"},
    "ScaleIntensityRangePercentiles": {"lower": "percent", "upper": "percent",
                                       "b_min": "number?", "b_max": "number?", "clip": "bool",
                                       "relative": "bool", "channel_wise": "bool"},
    "ClipIntensityPercentiles": {"lower": "percent?", "upper": "percent?",
                                 "sharpness_factor": "number?", "channel_wise": "bool"},
    "ScaleIntensity": {"minv": "number?", "maxv": "number?", "factor": "number?",
                       "channel_wise": "bool"},
    "ShiftIntensity": {"offset": "number"},
    "StdShiftIntensity": {"factor": "number", "nonzero": "bool", "channel_wise": "bool"},
    "ThresholdIntensity": {"threshold": "number", "above": "bool", "cval": "number"},
    "ScaleIntensityFixedMean": {"factor": "number", "preserve_range": "bool",
                                "fixed_mean": "bool", "channel_wise": "bool"},
}

#: Arguments without a MONAI default.
REQUIRED_ARGS: dict[str, tuple[str, ...]] = {
    "ScaleIntensityRange": ("a_min", "a_max"),
    "ScaleIntensityRangePercentiles": ("lower", "upper", "b_min", "b_max"),
    "ClipIntensityPercentiles": ("lower", "upper"),
    "ShiftIntensity": ("offset",),
    "StdShiftIntensity": ("factor",),
    "ThresholdIntensity": ("threshold",),
}

_KIND_TEXT = {"number": "a number", "number?": "a number or null",
              "percent": "a percentile in [0, 100]",
              "percent?": "a percentile in [0, 100] or null", "bool": "true or false"}


def _fits(value: Any, kind: str) -> bool:
    if kind.endswith("?"):
        if value is None:
            return True
        kind = kind[:-1]
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not np.isfinite(float(value)):
        return False
    return kind == "number" or 0.0 <= float(value) <= 100.0


def check_preprocessing(items: Any, where: str = "preprocessing") -> None:
    """Check a card's ``preprocessing`` list: allowed transforms, known plain arguments.

    Raises
    ------
    CalibSegError
        Naming the bad item as ``preprocessing[i]``, ``preprocessing[i].transform`` or
        ``preprocessing[i].args.NAME`` and what is allowed there.
    """
    if not isinstance(items, list):
        raise CalibSegError(f"field '{where}' must be a list of transforms.")
    for n, item in enumerate(items):
        here = f"{where}[{n}]"
        if not isinstance(item, Mapping) or set(item) - {"transform", "args"} or (
                "transform" not in item):
            raise CalibSegError(
                f"field '{here}' must be an object {{\"transform\": NAME, \"args\": {{...}}}}.")
        name = item["transform"]
        if name not in ALLOWED_TRANSFORMS:
            raise CalibSegError(
                f"field '{here}.transform' is {name!r}, which is not an allowed intensity "
                f"transform; use one of {', '.join(ALLOWED_TRANSFORMS)}.")
        args = item.get("args", {})
        if not isinstance(args, Mapping):
            raise CalibSegError(f"field '{here}.args' must be an object of arguments.")
        allowed = ALLOWED_TRANSFORMS[name]
        for key, value in args.items():
            if key not in allowed:
                raise CalibSegError(
                    f"field '{here}.args.{key}' is not an argument CalibSeg accepts for {name}; "
                    f"use {', '.join(allowed)}.")
            if not _fits(value, allowed[key]):
                raise CalibSegError(
                    f"field '{here}.args.{key}' is {value!r}; expected {_KIND_TEXT[allowed[key]]}.")
        missing = [k for k in REQUIRED_ARGS.get(name, ()) if k not in args]
        if missing:
            raise CalibSegError(f"field '{here}.args' lacks {', '.join(missing)} for {name}.")


def build_transforms(items: Sequence[Mapping[str, Any]]) -> list[Callable]:
    """MONAI transform objects for a checked ``preprocessing`` list, in order."""
    check_preprocessing(list(items))
    transforms = []
    for n, item in enumerate(items):
        cls = getattr(monai.transforms, item["transform"])
        try:
            transforms.append(cls(**dict(item.get("args", {}))))
        except (ValueError, TypeError) as exc:
            raise CalibSegError(
                f"field 'preprocessing[{n}]' ({item['transform']}): {str(exc).strip()[:200]}"
            ) from exc
    return transforms


def preprocessor(items: Sequence[Mapping[str, Any]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``(1, *spatial)`` tensor -> new ``(1, *spatial)`` float32 tensor.

    The input is never modified (some MONAI transforms work in place, so the
    pipeline starts from a copy). An empty list casts to float32 only.
    """
    transforms = build_transforms(items)

    def apply(x: torch.Tensor) -> torch.Tensor:
        out = x.to(torch.float32).clone()
        for transform in transforms:
            out = transform(out)
        out = torch.as_tensor(out)
        if hasattr(out, "as_tensor"):
            out = out.as_tensor()
        return out.to(torch.float32)

    return apply


def legacy_to_transforms(spec: Mapping[str, Any], where: str = "normalization"
                         ) -> list[dict[str, Any]]:
    """The ``preprocessing`` list equal to a version-1 ``normalization`` object.

    The version-1 defaults are written out (``clip`` true, percentiles 0.5 / 99.5,
    output range 0 / 1), because MONAI's defaults differ.
    """
    kind = spec.get("type")
    if kind == "none":
        return []
    if kind == "zscore":
        return [{"transform": "NormalizeIntensity",
                 "args": {"nonzero": bool(spec.get("nonzero", False))}}]
    if kind == "percentile":
        return [{"transform": "ScaleIntensityRangePercentiles", "args": {
            "lower": float(spec.get("lower", 0.5)), "upper": float(spec.get("upper", 99.5)),
            "b_min": float(spec.get("b_min", 0.0)), "b_max": float(spec.get("b_max", 1.0)),
            "clip": bool(spec.get("clip", True))}}]
    if kind == "range":
        return [{"transform": "ScaleIntensityRange", "args": {
            "a_min": float(spec["a_min"]), "a_max": float(spec["a_max"]),
            "b_min": float(spec.get("b_min", 0.0)), "b_max": float(spec.get("b_max", 1.0)),
            "clip": bool(spec.get("clip", True))}}]
    raise CalibSegError(
        f"field '{where}.type' is {kind!r}; use zscore, percentile, range or none."
    )


def legacy_view(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The version-1 ``normalization`` object a ``preprocessing`` list corresponds to.

    For lists that a single version-1 normalisation cannot express,
    ``{"type": "transforms", "transforms": [names]}``.
    """
    items = copy.deepcopy(list(items))
    if not items:
        return {"type": "none"}
    if len(items) == 1:
        name, args = items[0]["transform"], items[0].get("args", {})
        if name == "NormalizeIntensity" and set(args) <= {"nonzero"}:
            return {"type": "zscore", "nonzero": bool(args.get("nonzero", False))}
        if name == "ScaleIntensityRangePercentiles" and set(args) <= {
                "lower", "upper", "b_min", "b_max", "clip"}:
            return {"type": "percentile", **args}
        if name == "ScaleIntensityRange" and None not in (args.get("b_min"), args.get("b_max")):
            return {"type": "range", **args}
    return {"type": "transforms", "transforms": [item["transform"] for item in items]}


def describe(items: Sequence[Mapping[str, Any]]) -> str:
    """One line such as ``NormalizeIntensity(nonzero=True) -> ShiftIntensity(offset=1.0)``."""
    if not items:
        return "none (float32 only)"
    parts = []
    for item in items:
        args = ", ".join(f"{k}={v!r}" for k, v in item.get("args", {}).items())
        parts.append(f"{item['transform']}({args})")
    return " -> ".join(parts)
