"""Building a network from MONAI-bundle config items, without running config code.

A bundle config can hold Python expressions (``"$..."``), file macros
(``"%..."``) and arbitrary ``_target_`` classes. A network definition never
needs those, so CalibSeg keeps only the network item and the items it refers
to (``"@id"``), refuses expressions, macros and debug modes, and allows
``_target_`` only from MONAI (short component names or ``monai.``) and
``torch.nn``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from monai.bundle import ConfigParser
from torch import nn

from CalibSegLib.errors import CalibSegError

_ALLOWED_TARGET_PREFIXES = ("monai.networks.", "torch.nn.")


def _top_id(ref: str) -> str:
    for sep in ("::", "#"):
        ref = ref.split(sep, 1)[0]
    return ref


def _check_value(value: Any, where: str, refs: set[str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "_target_":
                target = str(item)
                if "." in target and not target.startswith(_ALLOWED_TARGET_PREFIXES):
                    raise CalibSegError(
                        f"Bundle item {where}: _target_ {target!r} is not a MONAI or torch.nn "
                        "network class; CalibSeg imports only network definitions from "
                        "monai.networks or torch.nn."
                    )
            if key == "_mode_" and item != "default":
                raise CalibSegError(
                    f"Bundle item {where}: _mode_ {item!r} is not allowed; remove it."
                )
            _check_value(item, f"{where}::{key}", refs)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_value(item, f"{where}::{n}", refs)
    elif isinstance(value, str):
        if value.startswith("$"):
            raise CalibSegError(
                f"Bundle item {where} is a Python expression ({value[:60]!r}); CalibSeg does "
                "not run config code. Replace it with a plain value in the network definition."
            )
        if value.startswith("%"):
            raise CalibSegError(
                f"Bundle item {where} is a file macro ({value[:60]!r}); inline the value."
            )
        if value.startswith("@"):
            refs.add(_top_id(value[1:]))


def network_config(config: Mapping[str, Any], network_key: str) -> dict[str, Any]:
    """The network item of a bundle config and every item it refers to, checked.

    Parameters
    ----------
    config : mapping
        A parsed bundle config (e.g. ``configs/inference.json``).
    network_key : str
        Key of the network definition, usually ``network_def``.

    Returns
    -------
    dict
        ``{key: item}`` for the network and its references only.

    Raises
    ------
    CalibSegError
        When the key is missing, a reference is dangling, or an item holds an
        expression, a macro or a non-network ``_target_``.
    """
    if network_key not in config:
        raise CalibSegError(
            f"The bundle config has no {network_key!r} item; name the network item."
        )
    closure: dict[str, Any] = {}
    todo = [network_key]
    while todo:
        key = todo.pop()
        if key in closure:
            continue
        if key not in config:
            raise CalibSegError(f"The bundle network refers to @{key}, which the config lacks.")
        refs: set[str] = set()
        _check_value(config[key], key, refs)
        closure[key] = copy.deepcopy(config[key])
        todo.extend(sorted(refs - set(closure)))
    return closure


def build_bundle_network(config: Mapping[str, Any], network_key: str) -> nn.Module:
    """Instantiate the network item of a checked bundle config with MONAI's ConfigParser."""
    items = network_config(config, network_key)
    parser = ConfigParser(items)
    try:
        network = parser.get_parsed_content(network_key, instantiate=True)
    except Exception as exc:  # MONAI raises many types for bad configs
        raise CalibSegError(
            f"Cannot build the bundle network {network_key!r}: {str(exc).strip()[:300]}"
        ) from exc
    if not isinstance(network, nn.Module):
        raise CalibSegError(
            f"Bundle item {network_key!r} built a {type(network).__name__}, not a torch network."
        )
    return network
