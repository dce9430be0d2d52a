"""A MONAI bundle's preprocessing and inferer, read into card fields without running config code.

The bundle's ``preprocessing`` item (a ``Compose`` of transforms, or a list) is
read in order. Each item falls in one of three groups:

* an allowed intensity transform (:data:`~CalibSegLib.models.preprocessing.ALLOWED_TRANSFORMS`,
  array or dictionary form): it becomes a card ``preprocessing`` entry with its
  plain arguments;
* a transform whose job the card's conventions do (``Orientation`` -> the card's
  ``orientation``, ``Spacing`` -> ``spacing_mm``) or that cannot change voxel
  values (``LoadImage``, ``EnsureChannelFirst``, ``EnsureType`` ...): recorded in
  the card's ``review_notes``;
* anything else: refused with an error naming the item.

Values are read as plain JSON; references (``"@id"``) to plain values are
followed, and Python expressions (``"$..."``) and macros (``"%..."``) in anything
CalibSeg reads are refused, never evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models.preprocessing import ALLOWED_TRANSFORMS, check_preprocessing

#: Transforms that cannot change voxel values, with what CalibSeg does instead.
NEUTRAL_TRANSFORMS = {
    "LoadImage": "CalibSeg reads the image file itself",
    "EnsureChannelFirst": "CalibSeg adds the channel axis itself",
    "AddChannel": "CalibSeg adds the channel axis itself",
    "EnsureType": "a type conversion; CalibSeg computes in float32",
    "CastToType": "a type conversion; CalibSeg computes in float32",
    "ToTensor": "a type conversion",
    "ToNumpy": "a type conversion",
    "ToDevice": "CalibSeg chooses the device",
    "Identity": "no effect",
    "FromMetaTensor": "a type conversion",
    "ToMetaTensor": "a type conversion",
}

#: Transforms whose effect the card's conventions reproduce.
CONVENTION_TRANSFORMS = {"Orientation", "Spacing"}

_DICT_KEYS = ("keys", "allow_missing_keys")


def _base_name(target: str) -> str:
    """``monai.transforms.NormalizeIntensityd`` -> ``NormalizeIntensity`` (array form)."""
    name = target.rsplit(".", 1)[-1]
    known = set(ALLOWED_TRANSFORMS) | set(NEUTRAL_TRANSFORMS) | CONVENTION_TRANSFORMS
    for suffix in ("Dict", "d", "D"):
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name


@dataclass
class BundleInference:
    """What a bundle's inference config says about preprocessing and windows.

    Attributes
    ----------
    preprocessing : list of dict
        Card ``preprocessing`` entries, in the bundle's order.
    spacing_mm : list of float or None
        ``Spacingd``'s ``pixdim`` (X, Y, Z).
    orientation : str or None
        ``Orientationd``'s ``axcodes``.
    model_grid : str
        ``"input_direction"`` (``Spacingd``'s default ``diagonal=False``) or
        ``"axis_aligned"`` (``diagonal=True``).
    preprocessing_grid : str
        ``"model"`` when the intensity transforms follow ``Spacingd`` (or there is
        none), ``"input"`` when they all precede it.
    output_resampling : str
        ``"probabilities"`` unless the postprocessing inverts the spatial transforms
        (``Invertd``) before its softmax (``Activationsd``): then ``"logits"``.
    patch_size : list of int or None
        ``SlidingWindowInferer``'s ``roi_size`` (in the bundle's (X, Y, Z) array order).
    sliding_window : dict
        ``overlap``, ``mode``, ``sigma_scale``, ``padding_mode``, ``cval`` of the inferer
        (MONAI's defaults where it leaves them out).
    notes : list of str
        For the card's ``review_notes``.
    """

    preprocessing: list[dict[str, Any]] = field(default_factory=list)
    spacing_mm: list[float] | None = None
    orientation: str | None = None
    patch_size: list[int] | None = None
    model_grid: str = "input_direction"
    preprocessing_grid: str = "model"
    output_resampling: str = "probabilities"
    sliding_window: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Reader:
    """Resolves plain values in a bundle config, refusing expressions and macros."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def value(self, value: Any, where: str, depth: int = 0) -> Any:
        if depth > 20:
            raise CalibSegError(f"Bundle item {where}: references loop; inline the value.")
        if isinstance(value, str):
            if value.startswith("$"):
                raise CalibSegError(
                    f"Bundle item {where} is a Python expression ({value[:60]!r}); CalibSeg does "
                    "not run config code. Replace it with a plain value in the bundle config.")
            if value.startswith("%"):
                raise CalibSegError(
                    f"Bundle item {where} is a file macro ({value[:60]!r}); inline the value.")
            if value.startswith("@"):
                ref = value[1:]
                for sep in ("::", "#"):
                    ref = ref.replace(sep, "\0")
                parts = ref.split("\0")
                target: Any = self.config
                for part in parts:
                    if isinstance(target, Mapping) and part in target:
                        target = target[part]
                    elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                        target = target[int(part)]
                    else:
                        raise CalibSegError(
                            f"Bundle item {where} refers to {value!r}, which the config lacks.")
                return self.value(target, value[1:], depth + 1)
            return value
        if isinstance(value, list):
            return [self.value(v, f"{where}#{n}", depth) for n, v in enumerate(value)]
        if isinstance(value, Mapping):
            return {k: self.value(v, f"{where}#{k}", depth) for k, v in value.items()}
        return value


def _transform_list(reader: _Reader, item: Any, where: str) -> list[tuple[str, Any]]:
    """Flatten a ``Compose`` / list of transforms into ``[(where, item), ...]``."""
    if isinstance(item, str) and item.startswith("@"):
        return _transform_list(reader, reader.value(item, where), item[1:])
    if isinstance(item, str) and item.startswith("$"):
        reader.value(item, where)  # raises: an expression
    if isinstance(item, list):
        out = []
        for n, sub in enumerate(item):
            out.extend(_transform_list(reader, sub, f"{where}#{n}"))
        return out
    if isinstance(item, Mapping):
        target = reader.value(item.get("_target_", ""), f"{where}#_target_")
        if str(target).rsplit(".", 1)[-1] == "Compose":
            return _transform_list(reader, item.get("transforms", []), f"{where}#transforms")
        return [(where, item)]
    raise CalibSegError(f"Bundle item {where} is not a transform ({item!r:.60}).")


def _applies_to(reader: _Reader, item: Mapping[str, Any], where: str, image_key: str) -> bool:
    if "keys" not in item:
        return True
    keys = reader.value(item["keys"], f"{where}#keys")
    keys = [keys] if isinstance(keys, str) else list(keys)
    return image_key in keys


def _image_key(reader: _Reader, items: list[tuple[str, Any]]) -> str:
    for where, item in items:
        target = str(reader.value(item.get("_target_", ""), f"{where}#_target_"))
        if _base_name(target) == "LoadImage" and "keys" in item:
            keys = reader.value(item["keys"], f"{where}#keys")
            keys = [keys] if isinstance(keys, str) else list(keys)
            if keys:
                return str(keys[0])
    return "image"


def _three(value: Any, where: str, what: str) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                       for v in value)):
        raise CalibSegError(
            f"Bundle item {where}: {what} {value!r} is not three positive numbers; CalibSeg "
            "needs the spacing of all three axes. Give --spacing X Y Z.")
    return [float(v) for v in value]


def read_bundle_inference(config: Mapping[str, Any], preprocessing_key: str = "preprocessing",
                          inferer_key: str = "inferer") -> BundleInference:
    """Read the preprocessing and inferer of a parsed bundle config (``inference.json``).

    Raises
    ------
    CalibSegError
        Naming the item (as ``preprocessing#transforms#3``) for a transform outside the
        allow-list, an expression or macro, or an argument CalibSeg does not accept.
    """
    reader = _Reader(config)
    result = BundleInference()
    if preprocessing_key not in config:
        result.notes.append(
            f"The bundle config has no '{preprocessing_key}' item: no intensity preprocessing "
            "was read; add transforms to 'preprocessing' if the network expects them.")
        items: list[tuple[str, Any]] = []
    else:
        items = _transform_list(reader, config[preprocessing_key], preprocessing_key)
    image_key = _image_key(reader, items)
    spacing_at: int | None = None  # how many intensity transforms precede Spacingd
    for where, item in items:
        if "_disabled_" in item and reader.value(item["_disabled_"], f"{where}#_disabled_"):
            continue
        unknown = sorted(k for k in item if k.startswith("_") and k not in (
            "_target_", "_disabled_", "_desc_"))
        if unknown:
            raise CalibSegError(f"Bundle item {where}: {unknown[0]} is not supported; remove it.")
        target = str(reader.value(item.get("_target_", ""), f"{where}#_target_"))
        if "." in target and not target.startswith("monai.transforms."):
            raise CalibSegError(
                f"Bundle item {where}: _target_ {target!r} is not a MONAI transform; CalibSeg "
                "reads only MONAI intensity transforms from a bundle's preprocessing.")
        name = _base_name(target)
        label = f"{where} ({target.rsplit('.', 1)[-1]})"
        if name in NEUTRAL_TRANSFORMS:
            result.notes.append(f"{label}: not applied ({NEUTRAL_TRANSFORMS[name]}).")
            continue
        if not _applies_to(reader, item, where, image_key):
            result.notes.append(f"{label}: not applied (not for the '{image_key}' key).")
            continue
        args = {k: v for k, v in item.items() if not k.startswith("_") and k not in _DICT_KEYS}
        if name == "Orientation":
            codes = reader.value(args.get("axcodes"), f"{where}#axcodes")
            if not isinstance(codes, str) or len(codes) != 3:
                raise CalibSegError(
                    f"Bundle item {label}: axcodes {codes!r} is not a three-letter code.")
            result.orientation = codes.upper()
            result.notes.append(f"{label}: the card's orientation {codes.upper()}.")
            continue
        if name == "Spacing":
            pixdim = reader.value(args.get("pixdim"), f"{where}#pixdim")
            result.spacing_mm = _three(pixdim, label, "pixdim")
            spacing_at = len(result.preprocessing)
            diagonal = reader.value(args.get("diagonal", False), f"{where}#diagonal")
            result.model_grid = "axis_aligned" if diagonal is True else "input_direction"
            mode = args.get("mode", "bilinear")
            mode = reader.value(mode, f"{where}#mode") if isinstance(mode, str) else mode
            result.notes.append(
                f"{label}: the card's spacing_mm {result.spacing_mm}; CalibSeg resamples "
                f"trilinearly onto a grid covering the input (the bundle: mode {mode!r}).")
            continue
        if name not in ALLOWED_TRANSFORMS:
            raise CalibSegError(
                f"Bundle preprocessing item {label} is not supported: CalibSeg applies only the "
                f"intensity transforms {', '.join(ALLOWED_TRANSFORMS)} (and handles "
                "Orientationd, Spacingd, LoadImaged, EnsureChannelFirstd, EnsureTyped itself). "
                "Remove it from the bundle's preprocessing or pass the preprocessing explicitly.")
        plain = {k: reader.value(v, f"{where}#{k}") for k, v in args.items()}
        entry = {"transform": name, "args": plain}
        try:
            check_preprocessing([entry])
        except CalibSegError as exc:
            raise CalibSegError(f"Bundle item {label}: {exc}") from exc
        result.preprocessing.append(entry)
    if spacing_at:
        if spacing_at == len(result.preprocessing):
            result.preprocessing_grid = "input"
        else:
            result.notes.append(
                "Some intensity transforms precede Spacingd and some follow it; CalibSeg runs "
                "them all on the model grid, after resampling.")
    _read_inferer(reader, config, inferer_key, result)
    _read_postprocessing(reader, config, result)
    return result


def _read_postprocessing(reader: _Reader, config: Mapping[str, Any],
                         result: BundleInference) -> None:
    """Whether the bundle resamples probabilities (softmax, then Invertd) or logits back."""
    if "postprocessing" not in config:
        return
    try:
        items = _transform_list(reader, config["postprocessing"], "postprocessing")
        names = [_base_name(str(reader.value(item.get("_target_", ""), f"{where}#_target_")))
                 .rstrip("d") for where, item in items]
    except CalibSegError:
        result.notes.append("postprocessing not read (it holds expressions); CalibSeg resamples "
                            "probabilities back to the input grid, as Activationsd + Invertd do.")
        return
    if "Invert" in names and "Activations" in names and (
            names.index("Invert") < names.index("Activations")):
        result.output_resampling = "logits"
    result.notes.append(
        f"postprocessing ({', '.join(names)}): CalibSeg resamples "
        f"{result.output_resampling} back to the input grid and keeps class probabilities "
        "(AsDiscreted, SaveImaged and the like are CalibSeg's own outputs).")


def _read_inferer(reader: _Reader, config: Mapping[str, Any], key: str,
                  result: BundleInference) -> None:
    item = config.get(key)
    if not isinstance(item, Mapping):
        result.notes.append(f"No '{key}' item: window size and blending are CalibSeg's defaults.")
        return
    target = str(reader.value(item.get("_target_", ""), f"{key}#_target_")).rsplit(".", 1)[-1]
    if target != "SlidingWindowInferer":
        result.notes.append(
            f"{key} ({target}): CalibSeg runs sliding windows of the card's patch_size; "
            "review patch_size.")
        return
    roi = reader.value(item.get("roi_size"), f"{key}#roi_size")
    if isinstance(roi, int) and not isinstance(roi, bool):
        roi = [roi] * 3
    if (isinstance(roi, list) and len(roi) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in roi)):
        result.patch_size = [int(v) for v in roi]
    window = {"overlap": 0.25, "mode": "constant", "sigma_scale": 0.125,
              "padding_mode": "constant", "cval": 0.0}  # MONAI's SlidingWindowInferer defaults
    for name in window:
        if name in item:
            value = reader.value(item[name], f"{key}#{name}")
            if isinstance(window[name], str) != isinstance(value, str) or isinstance(
                    value, (list, dict, bool)):
                raise CalibSegError(
                    f"Bundle item {key}#{name} is {value!r}; CalibSeg takes one "
                    f"{'name' if isinstance(window[name], str) else 'number'} there.")
            window[name] = value if isinstance(value, str) else float(value)
    result.sliding_window = window
    result.notes.append(f"{key} (SlidingWindowInferer): window {result.patch_size}, {window}.")
