"""The model card (``model.json``): a validated, read-only view of a JSON document.

The card is checked against the JSON Schema shipped in
``CalibSegLib/resources/model_card.schema.json`` (draft 2020-12) and then by a
few rules a schema cannot express (one stride fewer than channels, patch size
a multiple of the network's size divisor, prototype catalogue consistent with
the head, preprocessing from the allow-list). Geometry lists (``spacing_mm``,
``patch_size``, prototype ``voxel`` and ``bbox``) are in ``(X, Y, Z)`` =
``(i, j, k)`` order.

Format 2 states the conventions the network was built with: ``axis_order``
(``"ZYX"``, CalibSeg's array order, or ``"XYZ"``, MONAI's ``LoadImage`` and
nibabel order), ``output_kind`` (``logits``, ``probabilities`` or
``log_probabilities``), ``preprocessing`` (an ordered list of MONAI intensity
transforms) and optionally ``sliding_window`` settings. Format-1 cards (one
``normalization`` object) are migrated when read (:func:`migrate_card`): they
were CalibSeg-convention models, so ``ZYX`` and ``logits``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import jsonschema

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models.preprocessing import check_preprocessing, legacy_to_transforms, legacy_view

FORMAT_VERSION = 2

#: Sliding-window settings of CalibSeg's own models (a card's ``sliding_window`` overrides).
DEFAULT_SLIDING_WINDOW: dict[str, Any] = {"overlap": 0.25, "mode": "gaussian",
                                          "sigma_scale": 0.125, "padding_mode": "replicate",
                                          "cval": 0.0}
CARD_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
TORCHSCRIPT_FILE = "model.ts"

#: Colours given to classes when a card is generated without them.
DEFAULT_COLORS = (
    (0.0, 0.0, 0.0), (0.90, 0.30, 0.25), (0.95, 0.85, 0.35), (0.30, 0.60, 0.95),
    (0.45, 0.80, 0.40), (0.75, 0.45, 0.85), (0.95, 0.60, 0.20), (0.40, 0.85, 0.85),
)


@functools.lru_cache(maxsize=1)
def card_schema() -> dict:
    """The model-card JSON Schema (draft 2020-12) as a dict."""
    text = resources.files("CalibSegLib").joinpath("resources/model_card.schema.json").read_text(
        encoding="utf-8"
    )
    return json.loads(text)


def _field_path(parts: Sequence[Any]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(the card itself)"


def _expected(error) -> str:
    """A short 'expected ...' phrase from the schema of the failing field."""
    for candidate in (error.schema, *(e.schema for e in (error.context or []))):
        if isinstance(candidate, dict) and candidate.get("description"):
            return str(candidate["description"])
    return ""


def migrate_card(data: Mapping[str, Any], source: str = "model card") -> dict[str, Any]:
    """A format-2 copy of a card: format 1 gains ``axis_order`` ``"ZYX"``, ``output_kind``
    ``"logits"`` and ``preprocessing`` equal to its ``normalization`` (which is dropped).

    Format-2 data is returned as a deep copy. Predictions are unchanged by the migration:
    the transform list computes the same values as the version-1 normalisation.
    """
    out = copy.deepcopy(dict(data))
    if out.get("format_version") != 1:
        return out
    try:
        out["preprocessing"] = legacy_to_transforms(out.pop("normalization"))
    except CalibSegError as exc:
        raise CalibSegError(f"{source}: {exc}") from exc
    out["format_version"] = FORMAT_VERSION
    out.setdefault("axis_order", "ZYX")
    out.setdefault("output_kind", "logits")
    return out


def validate_card(data: Mapping[str, Any], source: str = "model card") -> None:
    """Check ``data`` against the schema and the cross-field rules (format 1 or 2).

    Parameters
    ----------
    data : mapping
        The parsed ``model.json``.
    source : str
        Names the card in error messages (e.g. its path).

    Raises
    ------
    CalibSegError
        Naming the first bad field (as ``a.b[0].c``) and what is expected there.
    """
    if not isinstance(data, Mapping):
        raise CalibSegError(f"{source}: expected a JSON object, got {type(data).__name__}.")
    validator = jsonschema.Draft202012Validator(card_schema())
    errors = list(validator.iter_errors(data))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        field = _field_path(list(error.absolute_path))
        expected = _expected(error)
        more = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        hint = f"; expected {expected}" if expected else ""
        raise CalibSegError(
            f"{source}: field '{field}' is invalid: {error.message}{hint}{more}. "
            "Fix the card and try again."
        )
    _check_rules(data, source)


def _check_rules(data: Mapping[str, Any], source: str) -> None:
    if data["format_version"] != 1:
        if "normalization" in data:
            raise CalibSegError(
                f"{source}: field 'normalization' belongs to format 1; a format-2 card lists its "
                "intensity transforms in 'preprocessing'. Remove it.")
        try:
            check_preprocessing(data["preprocessing"])
        except CalibSegError as exc:
            raise CalibSegError(f"{source}: {exc}") from exc
    network, head = data["network"], data["head"]
    arch = network["architecture"]
    num_classes = len(data["classes"])
    if arch == "monai.UNet" and len(network["strides"]) != len(network["channels"]) - 1:
        raise CalibSegError(
            f"{source}: field 'network.strides' must have one entry fewer than "
            f"'network.channels' ({len(network['channels'])} channels, "
            f"{len(network['strides'])} strides)."
        )
    divisor = network_divisor(network)
    bad = [s for s in data["patch_size"] if s % divisor]
    if bad:
        raise CalibSegError(
            f"{source}: field 'patch_size' {list(data['patch_size'])} must be a multiple of "
            f"{divisor} (the product of the network's strides) along each axis."
        )
    if arch in ("monai.bundle", "torchscript", "nnunet") and head["type"] != "linear":
        raise CalibSegError(
            f"{source}: field 'head.type' must be 'linear' for a {arch} network (its own output "
            "layer gives the class logits)."
        )
    if head["type"] == "prototype":
        total = num_classes * int(head["prototypes_per_class"])
        for n, entry in enumerate(data.get("prototypes", [])):
            if entry["index"] >= total:
                raise CalibSegError(
                    f"{source}: field 'prototypes[{n}].index' is {entry['index']}; the head has "
                    f"{total} prototypes (0 to {total - 1})."
                )
            if entry["class"] >= num_classes:
                raise CalibSegError(
                    f"{source}: field 'prototypes[{n}].class' is {entry['class']}; the card has "
                    f"{num_classes} classes."
                )
    elif data.get("prototypes"):
        raise CalibSegError(
            f"{source}: field 'prototypes' is only allowed with a prototype head; remove it."
        )


def network_divisor(network: Mapping[str, Any]) -> int:
    """The size multiple the network needs: the product of its strides (1 if unknown)."""
    arch = network.get("architecture")
    if arch == "monai.UNet":
        return int(math.prod(int(s) for s in network.get("strides", [])))
    if arch == "monai.BasicUNet":
        return 16
    return 1


class ModelCard:
    """A validated model card; read-only (use :meth:`replace` for a changed copy).

    Parameters
    ----------
    data : mapping
        The card as parsed from ``model.json``. It is deep-copied and validated;
        a missing ``temperature`` becomes 1.0. A format-1 card is migrated to format 2
        (:func:`migrate_card`).
    source : str
        Names the card in error messages.

    Raises
    ------
    CalibSegError
        When a field is missing or invalid (the message names it).
    """

    def __init__(self, data: Mapping[str, Any], source: str = "model card") -> None:
        validate_card(data, source)
        if isinstance(data, Mapping) and data.get("format_version") == 1:
            data = migrate_card(data, source)
            validate_card(data, source)
        self._data: dict[str, Any] = copy.deepcopy(dict(data))
        self._data.setdefault("temperature", 1.0)

    # -- construction and serialisation ------------------------------------------------------
    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> ModelCard:
        """Parse and validate a card from JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CalibSegError(f"{source}: not valid JSON ({exc}); fix the file.") from exc
        return cls(data, source)

    @classmethod
    def from_file(cls, path: str) -> ModelCard:
        """Read and validate ``path`` (a ``model.json``)."""
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise CalibSegError(f"{path}: cannot read the model card ({exc.strerror}).") from exc
        return cls.from_json(text, source=path)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the card as a plain dict."""
        return copy.deepcopy(self._data)

    def to_json(self, indent: int = 2) -> str:
        """The card as JSON text."""
        return json.dumps(self._data, indent=indent) + "\n"

    def replace(self, **changes: Any) -> ModelCard:
        """A new, validated card with top-level fields replaced (e.g. ``temperature=1.4``)."""
        data = self.to_dict()
        data.update(copy.deepcopy(changes))
        return ModelCard(data)

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._data[key])

    def get(self, key: str, default: Any = None) -> Any:
        """A deep copy of field ``key`` (``default`` when absent)."""
        return copy.deepcopy(self._data.get(key, default))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelCard) and other._data == self._data

    def __repr__(self) -> str:
        return (f"ModelCard(name={self.name!r}, version={self.version!r}, "
                f"classes={list(self.class_names)}, head={self.head_type!r})")

    # -- convenient views ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The model's name."""
        return str(self._data["name"])

    @property
    def version(self) -> str:
        """The model's version string."""
        return str(self._data["version"])

    @property
    def description(self) -> str:
        """What the model segments, in a sentence or two."""
        return str(self._data.get("description", ""))

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names, background first."""
        return tuple(c["name"] for c in self._data["classes"])

    @property
    def class_colors(self) -> tuple[tuple[float, float, float], ...]:
        """Each class's RGB colour, components in [0, 1] (the schema holds three)."""
        return tuple((float(r), float(g), float(b))
                     for r, g, b in (c["color"] for c in self._data["classes"]))

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes (background included)."""
        return len(self._data["classes"])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size the network works at, ``(X, Y, Z)`` in mm."""
        x, y, z = self._data["spacing_mm"]  # the schema holds three
        return float(x), float(y), float(z)

    @property
    def orientation(self) -> str:
        """Axis code of the model grid (e.g. ``"RAS"``)."""
        return str(self._data["orientation"])

    @property
    def normalization(self) -> dict[str, Any]:
        """The preprocessing as a format-1 ``normalization`` object, for display.

        ``{"type": "transforms", "transforms": [names]}`` when one format-1
        normalisation cannot express it; use :attr:`preprocessing` for computing.
        """
        return legacy_view(self._data["preprocessing"])

    @property
    def preprocessing(self) -> list[dict[str, Any]]:
        """The ordered intensity transforms, ``[{"transform": NAME, "args": {...}}, ...]``."""
        return copy.deepcopy(self._data["preprocessing"])

    @property
    def axis_order(self) -> str:
        """``"ZYX"`` (CalibSeg arrays) or ``"XYZ"`` (MONAI/nibabel): the network's axis order."""
        return str(self._data["axis_order"])

    @property
    def output_kind(self) -> str:
        """``"logits"``, ``"probabilities"`` or ``"log_probabilities"``: the network's output."""
        return str(self._data["output_kind"])

    @property
    def model_grid(self) -> str:
        """``"axis_aligned"`` (default) or ``"input_direction"`` (MONAI ``Spacing``): the layout
        of the grid the network works on (see :mod:`CalibSegLib.inference.resample`)."""
        return str(self._data.get("model_grid", "axis_aligned"))

    @property
    def preprocessing_grid(self) -> str:
        """``"input"`` (default: preprocessing before resampling) or ``"model"`` (after, as in
        a MONAI pipeline whose intensity transforms follow ``Spacing``)."""
        return str(self._data.get("preprocessing_grid", "input"))

    @property
    def output_resampling(self) -> str:
        """``"logits"`` (default) or ``"probabilities"`` (as MONAI's ``Invertd`` after a
        softmax): what is resampled from the model grid back to the input grid."""
        return str(self._data.get("output_resampling", "logits"))

    @property
    def sliding_window(self) -> dict[str, Any]:
        """Sliding-window settings (``overlap``, ``mode``, ``sigma_scale``, ``padding_mode``,
        ``cval``): the card's, completed with CalibSeg's defaults."""
        settings = dict(DEFAULT_SLIDING_WINDOW)
        settings.update(copy.deepcopy(self._data.get("sliding_window", {})))
        return settings

    @property
    def review_notes(self) -> tuple[str, ...]:
        """What an import read, guessed or left out (empty for CalibSeg's own models)."""
        return tuple(str(n) for n in self._data.get("review_notes", []))

    @property
    def nnunet(self) -> dict[str, Any]:
        """An imported nnU-Net v2 model's settings (configuration, plans and dataset files,
        mirroring ...); empty for other models."""
        return copy.deepcopy(self._data.get("nnunet", {}))

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Sliding-window size in voxels, ``(X, Y, Z)``."""
        x, y, z = self._data["patch_size"]  # the schema holds three
        return int(x), int(y), int(z)

    @property
    def network(self) -> dict[str, Any]:
        """The network settings (a copy)."""
        return copy.deepcopy(self._data["network"])

    @property
    def architecture(self) -> str:
        """The backbone architecture's name."""
        return str(self._data["network"]["architecture"])

    @property
    def head(self) -> dict[str, Any]:
        """The head settings (a copy)."""
        return copy.deepcopy(self._data["head"])

    @property
    def head_type(self) -> str:
        """``"linear"`` or ``"prototype"``."""
        return str(self._data["head"]["type"])

    @property
    def is_prototype(self) -> bool:
        """Whether the network has a prototype head."""
        return self.head_type == "prototype"

    @property
    def num_prototypes(self) -> int:
        """``P = C * M`` for a prototype head, else 0."""
        if not self.is_prototype:
            return 0
        return self.num_classes * int(self._data["head"]["prototypes_per_class"])

    @property
    def temperature(self) -> float:
        """The calibration temperature (1.0 when uncalibrated)."""
        return float(self._data.get("temperature", 1.0))

    @property
    def training(self) -> dict[str, Any]:
        """How the model was trained (a copy; empty if unknown)."""
        return copy.deepcopy(self._data.get("training", {}))

    @property
    def intended_use(self) -> str:
        """What the model is meant for."""
        return str(self._data.get("intended_use", ""))

    @property
    def limitations(self) -> str:
        """Known limitations."""
        return str(self._data.get("limitations", ""))

    @property
    def prototypes(self) -> list[dict[str, Any]]:
        """The prototype source catalogue (empty when none)."""
        return copy.deepcopy(self._data.get("prototypes", []))

    @property
    def divisor(self) -> int:
        """Size multiple the network needs (product of strides)."""
        return network_divisor(self._data["network"])


def new_card(
    name: str,
    class_names: Sequence[str],
    *,
    class_colors: Sequence[Sequence[float]] | None = None,
    version: str = "0.1",
    head: str = "prototype",
    spacing_mm: Sequence[float] = (2.0, 2.0, 2.0),
    orientation: str = "RAS",
    normalization: Mapping[str, Any] | None = None,
    preprocessing: Sequence[Mapping[str, Any]] | None = None,
    patch_size: Sequence[int] = (64, 64, 64),
    channels: Sequence[int] = (8, 16, 32),
    strides: Sequence[int] = (2, 2),
    num_res_units: int = 1,
    norm: str = "instance",
    dropout: float = 0.0,
    feature_size: int = 16,
    prototypes_per_class: int = 3,
    temperature: float = 1.0,
    **fields: Any,
) -> ModelCard:
    """A card for a MONAI-UNet model with a linear or prototype head.

    Defaults are demo-size (channels ``(8, 16, 32)``, 16 features, 3 prototypes
    per class) so CPU inference on the 2 mm sample case takes seconds. Extra
    top-level ``fields`` (``description``, ``training``, ``intended_use``,
    ``limitations``, ``prototypes`` ...) are copied in. Intensity preprocessing is
    ``preprocessing`` (a transform list) or, in the format-1 form, ``normalization``
    (default z-score); the network takes ``(Z, Y, X)`` arrays and gives logits.
    """
    if preprocessing is not None and normalization is not None:
        raise CalibSegError("Give preprocessing or normalization, not both.")
    if preprocessing is None:
        preprocessing = legacy_to_transforms(normalization or {"type": "zscore"})
    if class_colors is None:
        class_colors = [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(class_names))]
    if len(class_colors) != len(class_names):
        raise CalibSegError(
            f"{len(class_names)} class names but {len(class_colors)} colours; give one per class."
        )
    head_spec: dict[str, Any] = {"type": head, "feature_size": int(feature_size)}
    if head == "prototype":
        head_spec["prototypes_per_class"] = int(prototypes_per_class)
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "description": "",
        "classes": [{"name": n, "color": [float(v) for v in c]}
                    for n, c in zip(class_names, class_colors)],
        "spacing_mm": [float(v) for v in spacing_mm],
        "orientation": orientation,
        "axis_order": "ZYX",
        "output_kind": "logits",
        "preprocessing": copy.deepcopy([dict(item) for item in preprocessing]),
        "patch_size": [int(v) for v in patch_size],
        "network": {
            "architecture": "monai.UNet", "channels": [int(c) for c in channels],
            "strides": [int(s) for s in strides], "num_res_units": int(num_res_units),
            "norm": norm, "dropout": float(dropout),
        },
        "head": head_spec,
        "temperature": float(temperature),
        "intended_use": "",
        "limitations": "",
    }
    data.update(fields)
    return ModelCard(data)
