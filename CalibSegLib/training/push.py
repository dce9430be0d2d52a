"""The prototype push: every prototype becomes a real training voxel's feature vector.

Each prototype is replaced by the nearest (squared L2) feature vector among the
voxels *of its own class* in the training cases. Its source (case id, voxel
``(i, j, k)``, crop bounding box) is recorded, and a small image crop around
the voxel is written to the model folder's ``gallery/`` with its RAS geometry,
so a user can see "where this prototype came from".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from CalibSegLib.data.pairs import TrainingCase
from CalibSegLib.inference.sliding import sliding_window
from CalibSegLib.io import write_image
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report
from CalibSegLib.training import heads


@torch.no_grad()
def case_features(network: nn.Module, image: np.ndarray, patch_size: Sequence[int],
                  device: str | torch.device = "cpu", overlap: float = 0.25
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``(C, Z, Y, X)`` and features ``(D, Z, Y, X)`` of a normalised whole image.

    Computed like :func:`CalibSegLib.inference.predict` does: a sliding window of the
    training patch size (so instance normalisation sees patch-sized inputs, as in
    training) with Gaussian blending; the features are the blended backbone outputs.
    """
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    num_classes = None

    def both(batch: torch.Tensor) -> torch.Tensor:
        nonlocal num_classes
        logits, features = heads.forward_features(network, batch)
        num_classes = logits.shape[1]
        return logits if features is None else torch.cat([logits, features], dim=1)

    was_training = network.training
    network.eval()
    try:
        out, _ = sliding_window(x, both, tuple(int(p) for p in patch_size), overlap=overlap)
    finally:
        network.train(was_training)
    out = out[0]
    if out.shape[0] == num_classes:
        return out[:num_classes], None
    return out[:num_classes], out[num_classes:]


def gallery_crop(case: TrainingCase, zyx: Sequence[int], size: int
                 ) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """A ``size``³ crop of ``case.image`` centred on voxel ``zyx``, clipped at the borders.

    Returns ``(crop (z, y, x), crop affine, ijk_min, ijk_max)`` with inclusive ``(i, j, k)``
    bounds in the source case's voxel grid.
    """
    lo = [max(0, int(c) - size // 2) for c in zyx]
    hi = [min(n, start + size) for n, start in zip(case.image.shape, lo)]
    lo = [max(0, h - size) for h in hi]
    crop = case.image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    affine = np.asarray(case.affine, dtype=np.float64).copy()
    affine[:, 3] = affine @ np.array([lo[2], lo[1], lo[0], 1.0])
    ijk_min = [lo[2], lo[1], lo[0]]
    ijk_max = [hi[2] - 1, hi[1] - 1, hi[0] - 1]
    return np.ascontiguousarray(crop), affine, ijk_min, ijk_max


@torch.no_grad()
def push_prototypes(
    network: nn.Module,
    cases: Sequence[TrainingCase],
    normalise: Callable[[np.ndarray], np.ndarray],
    patch_size: Sequence[int],
    gallery_folder: str | None = None,
    gallery_size: int = 24,
    class_names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> list[dict]:
    """Project every prototype onto its nearest same-class training feature vector.

    Parameters
    ----------
    network
        A prototype network (changed in place: ``prototypes`` are overwritten).
    cases
        Cases searched, whole volumes.
    normalise
        The network's input normalisation (raw image -> network input).
    patch_size
        ``(Z, Y, X)`` sliding-window size (the training patch size).
    gallery_folder
        Where ``proto_###.nii.gz`` crops are written (nothing written when ``None``).

    Returns
    -------
    list of dict
        One model-card catalogue entry per prototype: ``index``, ``class``, ``class_name``,
        ``case`` (source case id), ``voxel`` ``(i, j, k)``, ``bbox``
        ``[[i0, i1], [j0, j1], [k0, k1]]`` (end exclusive) of the gallery crop, ``gallery``
        (path relative to the model folder, or ``None``), ``voxel_ras``, ``distance``
        (squared, before the push) and ``source`` (how to get the case again).
    """
    protos, proto_class = heads.prototypes(network)
    count = protos.shape[0]
    best = torch.full((count,), float("inf"), dtype=torch.float64)
    where: list[tuple[int, tuple[int, ...]] | None] = [None] * count
    vectors = protos.detach().clone()
    for n, case in enumerate(cases):
        check_cancel(cancel, "prototype push")
        _, features = case_features(network, normalise(case.image), patch_size, device)
        assert features is not None  # a prototype network returns its features
        dim = features.shape[0]
        flat = features.reshape(dim, -1).T.double()  # (N, D)
        labels = torch.from_numpy(case.labels.reshape(-1).astype(np.int64))
        for cls in torch.unique(proto_class).tolist():
            members = torch.nonzero(proto_class == cls).flatten()
            voxels = torch.nonzero(labels == cls).flatten()
            if voxels.numel() == 0:
                continue
            target = protos.detach()[members].double().cpu()
            nearest_d = torch.full((members.numel(),), float("inf"), dtype=torch.float64)
            nearest_i = torch.zeros(members.numel(), dtype=torch.long)
            for chunk in torch.split(voxels, 65536):
                d = torch.cdist(target, flat[chunk].cpu()) ** 2  # (Pc, n)
                value, arg = d.min(dim=1)
                better = value < nearest_d
                nearest_d = torch.where(better, value, nearest_d)
                nearest_i = torch.where(better, chunk[arg], nearest_i)
            for slot, proto in enumerate(members.tolist()):
                if nearest_d[slot] < best[proto]:
                    best[proto] = nearest_d[slot]
                    flat_index = int(nearest_i[slot])
                    where[proto] = (n, tuple(int(v) for v in np.unravel_index(
                        flat_index, case.labels.shape)))
                    vectors[proto] = features.reshape(dim, -1)[:, flat_index].to(vectors.dtype)
        report(progress, (n + 1) / max(len(cases), 1), f"push: searched {case.case_id}")
    protos.data.copy_(vectors)
    if gallery_folder is not None:
        os.makedirs(gallery_folder, exist_ok=True)
    catalogue = []
    for proto in range(count):
        cls = int(proto_class[proto])
        entry: dict = {"index": proto, "class": cls,
                       "class_name": class_names[cls] if class_names else str(cls)}
        located = where[proto]
        if located is None:  # no voxel of this class in the cases searched
            entry.update(case=None, gallery=None)
            catalogue.append(entry)
            continue
        n, zyx = located
        case = cases[n]
        crop, affine, lo, hi = gallery_crop(case, zyx, gallery_size)
        gallery = None
        if gallery_folder is not None:
            name = f"proto_{proto:03d}.nii.gz"
            write_image(os.path.join(gallery_folder, name), crop, affine)
            gallery = f"{os.path.basename(os.path.normpath(gallery_folder))}/{name}"
        entry.update(
            case=case.case_id,
            voxel=[zyx[2], zyx[1], zyx[0]],
            voxel_ras=[round(float(v), 4) for v in (case.affine @ np.array(
                [zyx[2], zyx[1], zyx[0], 1.0]))[:3]],
            bbox=[[lo[0], hi[0] + 1], [lo[1], hi[1] + 1], [lo[2], hi[2] + 1]],
            distance=float(best[proto]),
            gallery=gallery,
            source=dict(case.source),
        )
        catalogue.append(entry)
    return catalogue
