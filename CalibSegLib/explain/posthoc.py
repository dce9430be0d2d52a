"""Post-hoc attribution for any segmentation network: Grad-CAM, Grad-CAM++, occlusion.

The network is wrapped by :class:`~CalibSegLib.explain.region.RegionScore` so it
returns one score per class for a fixed region, then MONAI's classifier tools
are applied to that wrapper. Maps come back on the input grid: Grad-CAM maps
are taken on a feature grid and brought up **trilinearly** (stated in the
result); occlusion maps are computed on the image grid.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity
from torch import nn

from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain.region import RegionScore
from CalibSegLib.explain.segmenter import Segmenter, unet_divisor
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report


# ---------------------------------------------------------------------------- layers
def _probe(network: nn.Module, shape: tuple[int, ...] | None, in_channels: int = 1
           ) -> dict[str, tuple[int, ...]]:
    """Output spatial shape of every module with parameters, in completion order."""
    if shape is None:
        s = max(16, 2 * unet_divisor(network))
        shape = (s, s, s)
    seen: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in network.named_modules():
        if not name or not any(True for _ in module.parameters()):
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor) and out.ndim == 5:
                seen.pop(name, None)
                seen[name] = tuple(out.shape[2:])

        handles.append(module.register_forward_hook(hook))
    was_training = network.training
    try:
        network.eval()
        device = next(network.parameters()).device
        with torch.no_grad():
            network(torch.zeros((1, in_channels, *shape), device=device))
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    return seen


def list_layers(network: nn.Module, input_shape: tuple[int, int, int] | None = None
                ) -> list[dict]:
    """Layers usable for Grad-CAM: name, type and output spatial size for a probe input.

    Parameters
    ----------
    network : torch.nn.Module
        The segmentation network (a ``Segmenter``'s ``.network``).
    input_shape : tuple of int, optional
        Spatial size of the probe input (default: a small cube the network accepts).

    Returns
    -------
    list of dict
        ``{"name", "type", "output_shape"}`` in the order the layers finish.
    """
    modules = dict(network.named_modules())
    return [{"name": n, "type": type(modules[n]).__name__, "output_shape": list(s)}
            for n, s in _probe(network, input_shape).items()]


def bottleneck_layer(network: nn.Module, input_shape: tuple[int, int, int] | None = None
                     ) -> str:
    """The last layer computed at the coarsest feature scale (a U-Net's bottleneck)."""
    return _bottleneck(_probe(network, input_shape))


def _bottleneck(shapes: dict[str, tuple[int, ...]]) -> str:
    if not shapes:
        raise CalibSegError("The network has no 3D feature layers to take Grad-CAM from.")
    smallest = min(int(np.prod(s)) for s in shapes.values())
    return [n for n, s in shapes.items() if int(np.prod(s)) == smallest][-1]


def default_layer(network: nn.Module, input_shape: tuple[int, ...] | None = None) -> str:
    """Grad-CAM's default layer: the first decoder stage after the bottleneck.

    That is the last layer computed at the first finer scale after the bottleneck that
    does not itself contain the bottleneck (for a MONAI U-Net, the up-convolution block
    before the skip concatenation); the bottleneck when no finer scale follows. At the
    bottleneck, Grad-CAM of the demo models gave all-zero or worse-than-random maps; at
    the first decoder stage it beat random maps on every model and held-out case
    (docs/results.md).
    """
    shapes = _probe(network, input_shape)
    bottleneck = _bottleneck(shapes)
    names = list(shapes)
    size = {n: int(np.prod(s)) for n, s in shapes.items()}
    after = names[names.index(bottleneck) + 1:]
    finer = [n for n in after if size[n] > size[bottleneck]]
    if not finer:
        return bottleneck
    stage = []
    for n in after[after.index(finer[0]):]:
        if size[n] != size[finer[0]]:
            break
        stage.append(n)
    own = [n for n in stage if not bottleneck.startswith(n + ".")]
    return own[-1] if own else bottleneck


def _check_layer(network: nn.Module, layer: str) -> None:
    names = [n for n, _ in network.named_modules() if n]
    if layer not in names:
        near = [n for n in names if layer.split(".")[-1] in n][:5] or names[-5:]
        raise CalibSegError(
            f"The network has no layer {layer!r}; e.g. {', '.join(near)}. "
            "List them with CalibSegLib.explain.list_layers(network)."
        )


# ---------------------------------------------------------------------------- Grad-CAM
def gradcam_map(
    segmenter: Segmenter,
    image: np.ndarray,
    target_class: int,
    region: np.ndarray,
    layer: str | None = None,
    plusplus: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, dict]:
    """Grad-CAM (or Grad-CAM++) of the region-pooled class logit, on the input grid.

    Parameters
    ----------
    segmenter : Segmenter
        Image -> logits on the input grid.
    image : numpy.ndarray
        ``(Z, Y, X)`` image.
    target_class : int
        Explained class.
    region : numpy.ndarray
        ``(Z, Y, X)`` bool region over which the class logit is averaged.
    layer : str, optional
        Layer of ``segmenter.network`` (default: :func:`default_layer`).
    plusplus : bool
        Grad-CAM++ weights instead of Grad-CAM's mean gradients.

    Returns
    -------
    map : numpy.ndarray
        ``(Z, Y, X)`` float32, non-negative (ReLU of the weighted activations).
    info : dict
        ``layer``, ``feature_shape``, ``upsampling``.
    """
    image = np.asarray(image, dtype=np.float32)
    network = segmenter.network
    if layer is None:
        _, padded = segmenter.geometry(image.shape)
        layer = default_layer(network, tuple(min(p, max(16, 2 * segmenter.divisor))
                                             for p in padded))
    _check_layer(network, layer)
    # MONAI leaves hooks on the modules it wraps: work on a copy so the caller's is untouched.
    scorer = copy.deepcopy(RegionScore(segmenter, region, "mean", "logits")).to(device).eval()
    cam_type = GradCAMpp if plusplus else GradCAM
    cam = cam_type(nn_module=scorer, target_layers=f"segmenter.network.{layer}")
    x = torch.as_tensor(image, device=device)[None, None]
    # One pass over the whole volume: MONAI's hooks keep one activation per layer.
    scored = scorer.segmenter
    assert isinstance(scored, Segmenter)
    with scored.whole_volume():
        feature = cam.compute_map(x, class_idx=int(target_class)).detach()
    feature_shape = tuple(int(s) for s in feature.shape[2:])
    with torch.no_grad():
        full = segmenter.to_input_grid(feature.float(), image.shape)[0, 0]
    _, padded = segmenter.geometry(image.shape)
    if segmenter.grid is None and feature_shape == padded == tuple(image.shape):
        upsampling = "none"
    else:  # equal shapes alone are not equal grids when the model runs at its own spacing
        upsampling = (f"trilinear from feature grid {feature_shape} to image grid "
                      f"{tuple(image.shape)}")
    info = {"layer": layer, "feature_shape": list(feature_shape), "upsampling": upsampling,
            "score": "mean class logit over the region",
            "network_pass": "whole volume" if segmenter.window else "as predicted"}
    return full.cpu().numpy().astype(np.float32), info


# ---------------------------------------------------------------------------- occlusion
class _Watched(nn.Module):
    """Forwards to ``module``; reports progress and honours cancel at every batch."""

    def __init__(self, module: nn.Module, total: int, progress, cancel) -> None:
        super().__init__()
        self.module = module
        self.total = max(1, total)
        self.done = 0
        self.progress = progress
        self.cancel = cancel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_cancel(self.cancel, "occlusion")
        out = self.module(x)
        self.done += 1
        report(self.progress, self.done / self.total, f"occlusion batch {self.done}")
        return out


def occlusion_mask_size(shape: tuple[int, ...], per_axis: int = 5) -> tuple[int, ...]:
    """Occlusion box of about ``1/per_axis`` of each dimension (at least 2 voxels)."""
    return tuple(max(2, int(math.ceil(s / per_axis))) for s in shape)


def occlusion_map(
    segmenter: Segmenter,
    image: np.ndarray,
    target_class: int,
    region: np.ndarray,
    mask_size: tuple[int, ...] | None = None,
    overlap: float = 0.0,
    mode: str | float = "mean_patch",
    n_batch: int = 4,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> tuple[np.ndarray, dict]:
    """Occlusion sensitivity of the region's mean class probability (MONAI, 3D, batched).

    Parameters
    ----------
    mask_size : tuple of int, optional
        Occluded box (default :func:`occlusion_mask_size`: ~1/5 of each dimension).
    overlap : float
        Overlap of neighbouring boxes in [0, 1); more overlap, smoother map, more passes.
    mode : str or float
        What occluded voxels become (MONAI's ``"mean_patch"``, ``"mean_img"``,
        ``"gaussian"`` or a constant).
    n_batch : int
        Occluded images per forward pass.

    Returns
    -------
    map : numpy.ndarray
        ``(Z, Y, X)`` drop of the region's mean class probability when the box
        around each voxel is occluded (positive = evidence for the class).
    info : dict
        ``mask_size``, ``overlap``, ``mode``, ``forward_passes``.
    """
    image = np.asarray(image, dtype=np.float32)
    if mask_size is None:
        mask_size = occlusion_mask_size(image.shape)
    mask_size = tuple(int(m) for m in mask_size)
    scorer = RegionScore(segmenter, region, "mean", "softmax").to(device).eval()
    step = [max(1, int(m * (1.0 - overlap))) for m in mask_size]
    windows = int(np.prod([math.ceil(max(s - m, 0) / st) + 1
                           for s, m, st in zip(image.shape, mask_size, step)]))
    watched = _Watched(scorer, math.ceil(windows / n_batch), progress, cancel)
    occ = OcclusionSensitivity(nn_module=watched, mask_size=mask_size, n_batch=n_batch,
                               verbose=False, mode=mode, overlap=overlap, activate=False)
    x = torch.as_tensor(image, device=device)[None, None]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI's list-indexing deprecation notes
        reference = float(scorer(x)[0, target_class])
        occ_map, _ = occ(x)
    occluded = torch.as_tensor(occ_map)[0, int(target_class)]
    drop = (reference - occluded).float().cpu().numpy().astype(np.float32)
    info = {"mask_size": list(mask_size), "overlap": float(overlap), "mode": mode,
            "forward_passes": watched.done, "score": "mean class probability over the region",
            "upsampling": "none"}
    return drop, info
