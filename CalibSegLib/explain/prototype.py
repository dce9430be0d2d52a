"""Prototype explanations: "this looks like that", read off a prototype head.

A prototype head scores every voxel by its similarity ``sim_j`` to learned
prototypes ``j`` and sums them through a class-connection weight ``w_cj``: the
class logit is exactly ``sum_j w_cj * sim_j`` (plus a bias if the layer has one).
The contribution maps ``w_cj * sim_j`` are therefore an exact decomposition of
what the model computed, and ranking prototypes by their summed contribution
over a region says which learned examples drove the decision there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypedDict

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain.segmenter import Segmenter


def is_prototype_network(network: torch.nn.Module) -> bool:
    """Whether ``network`` has a prototype head (``forward_maps`` and ``prototype_class``)."""
    return hasattr(network, "forward_maps") and isinstance(
        getattr(network, "prototype_class", None), torch.Tensor)


def class_weights(network: torch.nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
    """``(weight, bias)`` of the head's class-connection layer.

    ``weight`` is an array of shape (C, P); ``bias`` of shape (C,), or None.
    """
    layer = getattr(network, "last_layer", None)
    if layer is None:
        raise TypeError(f"{type(network).__name__} has a prototype head but no 'last_layer' "
                        "(its class-connection layer).")
    weight = layer.weight.detach().cpu().double().numpy()
    weight = weight.reshape(weight.shape[0], weight.shape[1])
    bias = getattr(layer, "bias", None)
    return weight, None if bias is None else bias.detach().cpu().double().numpy()


class PrototypeMaps(TypedDict):
    """What :func:`prototype_maps` reads off a prototype head for one image."""

    logits: np.ndarray  #: (C, Z, Y, X)
    similarity: np.ndarray  #: (P, Z, Y, X)
    weight: np.ndarray  #: (C, P)
    bias: np.ndarray | None  #: (C,)
    prototype_class: np.ndarray  #: (P,) int64
    nearest: np.ndarray  #: (Z, Y, X) int32, index of the most similar prototype
    nearest_similarity: np.ndarray  #: (Z, Y, X)


def prototype_maps(segmenter: Segmenter, image: np.ndarray, device: str | torch.device = "cpu"
                   ) -> PrototypeMaps:
    """Logits and prototype similarities of one image, on the input grid.

    Parameters
    ----------
    segmenter : Segmenter
        Wrapping a network with a prototype head.
    image : numpy.ndarray
        ``(Z, Y, X)`` image.

    Returns
    -------
    dict
        ``logits`` (C, Z, Y, X), ``similarity`` (P, Z, Y, X), ``weight`` (C, P),
        ``bias`` (C,) or None, ``prototype_class`` (P,), ``nearest`` (Z, Y, X)
        index of the most similar prototype, ``nearest_similarity`` (Z, Y, X).
    """
    network = segmenter.network
    if not is_prototype_network(network):
        raise CalibSegError(
            "This model has a linear head, so it has no prototypes to show; use "
            "--method gradcam, gradcampp or occlusion."
        )
    x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=device)[None, None]
    with torch.no_grad():
        out = segmenter.forward_maps(x)
    sim = out["similarity"][0].double().cpu().numpy()
    logits = out["logits"][0].double().cpu().numpy()
    weight, bias = class_weights(network)
    nearest = sim.argmax(0)
    prototype_class = network.prototype_class
    assert isinstance(prototype_class, torch.Tensor)  # is_prototype_network checked it
    return {
        "logits": logits, "similarity": sim, "weight": weight, "bias": bias,
        "prototype_class": prototype_class.detach().cpu().numpy().astype(np.int64),
        "nearest": nearest.astype(np.int32),
        "nearest_similarity": np.take_along_axis(sim, nearest[None], 0)[0],
    }


def contribution_maps(similarity: np.ndarray, weight: np.ndarray, target_class: int
                      ) -> np.ndarray:
    """``(P, Z, Y, X)`` contributions ``w_cj * sim_j`` to the class-``target_class`` logit."""
    return np.asarray(weight)[int(target_class)][:, None, None, None] * np.asarray(similarity)


_SOURCE_KEYS = (("case", ("case", "case_id")), ("voxel", ("voxel", "voxel_ijk")),
                ("bbox", ("bbox", "bbox_ijk")))


def _entry_source(entry: Mapping | None, model_folder: str | None) -> dict:
    """Source fields of a catalogue entry: ``case``, ``voxel`` (i, j, k), ``bbox``, ``gallery``."""
    if not entry:
        return {}
    source = {}
    for out, keys in _SOURCE_KEYS:
        for key in keys:
            if key in entry:
                source[out] = entry[key]
                break
    gallery = entry.get("gallery")
    if gallery and model_folder:
        gallery = os.path.join(model_folder, gallery)
    source["gallery"] = gallery
    return source


def _catalogue_by_index(catalogue: Sequence[Mapping] | Mapping | None) -> dict[int, Mapping]:
    if catalogue is None:
        return {}
    if isinstance(catalogue, Mapping):
        catalogue = catalogue.get("entries", list(catalogue.values()))
    out = {}
    for pos, entry in enumerate(catalogue):
        if isinstance(entry, Mapping):
            out[int(entry.get("index", pos))] = entry
    return out


def rank_prototypes(
    similarity: np.ndarray,
    weight: np.ndarray,
    target_class: int,
    region: np.ndarray | tuple[int, int, int],
    prototype_class: np.ndarray | None = None,
    catalogue: Sequence[Mapping] | Mapping | None = None,
    class_names: Sequence[str] | None = None,
    model_folder: str | None = None,
    top: int | None = None,
) -> list[dict]:
    """Prototypes ranked by their summed contribution to a class logit over a region.

    Parameters
    ----------
    similarity : numpy.ndarray
        ``(P, Z, Y, X)`` similarity maps.
    weight : numpy.ndarray
        ``(C, P)`` class-connection weights.
    target_class : int
        Class whose logit is decomposed.
    region : numpy.ndarray or tuple of int
        ``(Z, Y, X)`` bool mask, or one voxel ``(z, y, x)``.
    prototype_class : numpy.ndarray, optional
        ``(P,)`` class of each prototype.
    catalogue : sequence of dict, optional
        The model card's prototype catalogue (``index``, ``class``, ``case``,
        ``voxel``, ``bbox``, ``gallery``); its source fields are copied into the result.
    class_names : sequence of str, optional
    model_folder : str, optional
        Gallery paths in the catalogue are relative to it.
    top : int, optional
        Keep only the first ``top`` entries.

    Returns
    -------
    list of dict
        Best first: ``rank``, ``index``, ``class_index``, ``class_name``,
        ``contribution`` (sum over the region of ``w_cj * sim_j``), ``share``
        (of the region's total prototype contribution magnitude), ``weight``
        (``w_cj``), ``mean_similarity`` and ``max_similarity`` over the region,
        and ``source`` (``case``, ``voxel`` (i, j, k), ``bbox``, ``gallery`` crop path).
    """
    similarity = np.asarray(similarity)
    weight = np.asarray(weight, dtype=np.float64)
    c = int(target_class)
    if isinstance(region, tuple):
        sim_r = similarity[(slice(None), *region)].reshape(similarity.shape[0], 1)
    else:
        mask = np.asarray(region, dtype=bool)
        if not mask.any():
            raise ValueError("rank_prototypes needs a non-empty region (see region_mask).")
        sim_r = similarity[:, mask]
    sums = sim_r.sum(1, dtype=np.float64)
    contribution = weight[c] * sums
    total = np.abs(contribution).sum()
    entries = _catalogue_by_index(catalogue)
    order = np.argsort(-contribution, kind="stable")
    if top is not None:
        order = order[: int(top)]
    ranking = []
    for rank, j in enumerate(order, start=1):
        j = int(j)
        pc = int(prototype_class[j]) if prototype_class is not None else None
        entry = entries.get(j)
        if pc is None and entry is not None:
            given = entry.get("class", entry.get("class_index"))
            pc = None if given is None else int(given)
        ranking.append({
            "rank": rank,
            "index": j,
            "class_index": pc,
            "class_name": (class_names[pc] if class_names is not None and pc is not None
                           else (entry or {}).get("class_name")),
            "contribution": float(contribution[j]),
            "share": float(abs(contribution[j]) / total) if total > 0 else 0.0,
            "weight": float(weight[c, j]),
            "mean_similarity": float(sim_r[j].mean()),
            "max_similarity": float(sim_r[j].max()),
            "source": _entry_source(entry, model_folder),
        })
    return ranking


def prototype_attribution(maps: PrototypeMaps, target_class: int) -> np.ndarray:
    """``(Z, Y, X)`` evidence for the class from its own prototypes: ``sum w_cj * sim_j``."""
    c = int(target_class)
    own = np.asarray(maps["prototype_class"]) == c
    weight = np.asarray(maps["weight"])[c] * own
    return np.tensordot(weight, maps["similarity"], axes=(0, 0)).astype(np.float32)
