"""Resampling between an image's own grid and a model's grid, with explicit affines.

A grid is a ``(Z, Y, X)`` shape and a 4×4 IJK-to-RAS affine (voxel index order
``i, j, k`` = ``X, Y, Z``). The model grid has the card's spacing and
orientation and comes in two kinds (card ``model_grid``):

``axis_aligned`` (CalibSeg's models)
    axes along the orientation's world axes, covering every voxel centre of the
    input, so anisotropic and oblique inputs work;
``input_direction`` (MONAI ``Orientation`` + ``Spacing`` with ``diagonal=False``)
    the input's own axes, permuted and flipped to the nearest of the orientation
    (nibabel's ``io_orientation``, as MONAI's ``Orientation``), oblique directions
    kept, with the card's spacing and MONAI's own output extent
    (``monai.data.utils.zoom_affine`` and ``compute_shape_offset``).

Resampling is trilinear (``torch.nn.functional.grid_sample``) with border
replication.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as nnf
from monai.data.utils import compute_shape_offset, zoom_affine

_AXES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0),
         "I": (2, -1.0)}


def orientation_matrix(code: str) -> np.ndarray:
    """Matrix of shape (3, 3) whose columns are the RAS directions of increasing ``i, j, k``."""
    matrix = np.zeros((3, 3))
    for column, letter in enumerate(code.upper()):
        axis, sign = _AXES[letter]
        matrix[axis, column] = sign
    return matrix


def reoriented_grid(shape: Sequence[int], affine: np.ndarray, orientation: str = "RAS"
                    ) -> tuple[tuple[int, int, int], np.ndarray]:
    """The input grid with its voxel axes permuted and flipped to the nearest of ``orientation``.

    The same voxels, relabelled (no interpolation): what MONAI's ``Orientation``
    does. Shapes are ``(Z, Y, X)``, affines IJK-to-RAS.
    """

    affine = np.asarray(affine, dtype=np.float64)
    ornt = nio.ornt_transform(nio.io_orientation(affine),
                              nio.axcodes2ornt(tuple(orientation.upper())))
    size_ijk = [int(s) for s in tuple(shape)[::-1]]
    new_affine = affine @ nio.inv_ornt_aff(ornt, size_ijk)
    new_size = [0, 0, 0]
    for source_axis, (target_axis, _) in enumerate(ornt):
        new_size[int(target_axis)] = size_ijk[source_axis]
    return (new_size[2], new_size[1], new_size[0]), new_affine


def monai_spacing_grid(shape: Sequence[int], affine: np.ndarray, spacing_mm: Sequence[float],
                       orientation: str = "RAS"
                       ) -> tuple[tuple[int, int, int], np.ndarray]:
    """The grid MONAI's ``Orientation(orientation)`` then ``Spacing(spacing_mm)`` put an image on
    (``affine`` and the returned affine of shape (4, 4)).

    Directions are the reoriented input's (oblique stays oblique), voxel sizes the
    card's, extent MONAI's own (``compute_shape_offset``).
    """

    r_shape, r_affine = reoriented_grid(shape, affine, orientation)
    new_affine = zoom_affine(r_affine, np.asarray(spacing_mm, dtype=np.float64), diagonal=False)
    out_shape, offset = compute_shape_offset(list(r_shape[::-1]), r_affine, new_affine)
    new_affine = np.asarray(new_affine, dtype=np.float64)
    new_affine[:3, 3] = np.asarray(offset, dtype=np.float64)[:3]
    size = [int(v) for v in out_shape]
    return (size[2], size[1], size[0]), new_affine


def _zyx(shape: Sequence[int]) -> tuple[int, int, int]:
    z, y, x = (int(s) for s in shape)
    return z, y, x


def model_grid(shape: Sequence[int], affine: np.ndarray, spacing_mm: Sequence[float],
               orientation: str = "RAS", tol: float = 1e-4, kind: str = "axis_aligned"
               ) -> tuple[tuple[int, int, int], np.ndarray]:
    """The grid a model with ``spacing_mm`` (X, Y, Z) and ``orientation`` works on.

    Returns the input grid itself when it already has that spacing and orientation
    (then no resampling is needed).

    Parameters
    ----------
    shape : sequence of int
        Input ``(Z, Y, X)``.
    affine : numpy.ndarray
        Input 4×4 IJK-to-RAS.
    spacing_mm, orientation
        From the model card.
    tol : float
        Relative tolerance for "already on the model grid".
    kind : str
        ``"axis_aligned"`` or ``"input_direction"`` (the card's ``model_grid``).

    Returns
    -------
    (shape, affine)
        Model grid ``(Z, Y, X)`` and its 4×4 IJK-to-RAS affine.
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if kind == "input_direction":
        grid_shape, grid_affine = monai_spacing_grid(shape, affine, spacing_mm, orientation)
        if same_grid(shape, affine, grid_shape, grid_affine,
                     atol=tol * float(spacing.min())):
            return _zyx(shape), affine.copy()
        return grid_shape, grid_affine
    if kind != "axis_aligned":
        raise ValueError(f"Unknown model grid kind {kind!r}; use axis_aligned or input_direction.")
    linear = orientation_matrix(orientation) * spacing[None, :]
    if np.allclose(affine[:3, :3], linear, rtol=0.0, atol=tol * float(spacing.min())):
        return _zyx(shape), affine.copy()
    size_ijk = np.asarray(shape[::-1], dtype=np.float64)
    corners = np.array(np.meshgrid(*[[0.0, n - 1.0] for n in size_ijk], indexing="ij"))
    corners = corners.reshape(3, -1)
    ras = affine[:3, :3] @ corners + affine[:3, 3:4]
    coords = np.linalg.solve(linear, ras)  # model voxel coordinates of the input corners
    low, high = coords.min(axis=1), coords.max(axis=1)
    count = np.ceil(high - low - 1e-6).astype(int) + 1
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = linear @ low
    return (int(count[2]), int(count[1]), int(count[0])), out


def same_grid(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int],
              affine_b: np.ndarray, atol: float = 1e-6) -> bool:
    """Whether two grids coincide (same shape, affines of shape (4, 4) equal to ``atol``)."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, rtol=0.0,
                                                            atol=atol)


def _index_to_normalised(size_ijk: np.ndarray) -> np.ndarray:
    """4×4 map from voxel index (i, j, k) to grid_sample coordinates (align_corners=False)."""
    m = np.eye(4)
    m[:3, :3] = np.diag(2.0 / size_ijk)
    m[:3, 3] = 1.0 / size_ijk - 1.0
    return m


def resample(data: torch.Tensor, src_affine: np.ndarray, dst_shape: Sequence[int],
             dst_affine: np.ndarray, mode: str = "bilinear") -> torch.Tensor:
    """Resample ``(B, C, Z, Y, X)`` data from its grid onto ``(dst_shape, dst_affine)``.

    Parameters
    ----------
    data : torch.Tensor
        Floating-point ``(B, C, Z, Y, X)`` on the source grid (affine ``src_affine``).
    dst_shape : sequence of int
        Target ``(Z, Y, X)``.
    dst_affine : numpy.ndarray
        Target 4×4 IJK-to-RAS.
    mode : str
        ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.

    Returns
    -------
    torch.Tensor
        ``(B, C, *dst_shape)`` on ``data``'s device and dtype.
    """
    src_size = np.asarray(data.shape[2:][::-1], dtype=np.float64)
    dst_size = np.asarray(tuple(dst_shape)[::-1], dtype=np.float64)
    index_map = np.linalg.solve(np.asarray(src_affine, np.float64),
                                np.asarray(dst_affine, np.float64))
    theta = (_index_to_normalised(src_size) @ index_map
             @ np.linalg.inv(_index_to_normalised(dst_size)))[:3]
    theta_t = torch.as_tensor(theta, dtype=data.dtype, device=data.device)[None]
    theta_t = theta_t.expand(data.shape[0], 3, 4)
    size = (data.shape[0], data.shape[1], *[int(s) for s in dst_shape])
    grid = nnf.affine_grid(theta_t, list(size), align_corners=False)
    return nnf.grid_sample(data, grid, mode=mode, padding_mode="border", align_corners=False)
