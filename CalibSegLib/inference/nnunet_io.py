"""An image as nnU-Net's reader gives it, and nnU-Net's output back on CalibSeg's array.

nnU-Net reads a file with the reader its plans name (``image_reader_writer``);
CalibSeg hands over the same array and voxel sizes that reader would give for
the file CalibSeg's ``(Z, Y, X)`` array and IJK-to-RAS affine came from:

* ``SimpleITKIO`` and ``NibabelIO``: the file's voxel array in SimpleITK's
  ``(Z, Y, X)`` order (nibabel's ``(X, Y, Z)`` transposed), which is CalibSeg's
  array, with spacing ``(sz, sy, sx)``; no reorientation.
* ``SimpleITKIOWithReorient``: SimpleITK's ``DICOMOrient`` to ``RAS`` first,
  and back for the output (as its ``write_seg`` does).
* ``NibabelIOWithReorient``: nibabel's ``as_reoriented(io_orientation(affine))``
  first, and nibabel's ``ornt_transform`` from RAS back for the output (as its
  ``write_seg`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nibabel
import numpy as np
import SimpleITK as sitk
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import to_sitk
from CalibSegLib.models.nnunet import SUPPORTED_READERS

Restore = Callable[[np.ndarray], np.ndarray]


def _identity(out: np.ndarray) -> np.ndarray:
    return out


def reader_input(array: np.ndarray, affine: np.ndarray, reader: str
                 ) -> tuple[np.ndarray, dict[str, Any], Restore]:
    """``(data, properties, restore)`` for ``reader``.

    Parameters
    ----------
    array : numpy.ndarray
        ``(Z, Y, X)`` image (CalibSeg's array of the file).
    affine : numpy.ndarray
        Its 4×4 IJK-to-RAS matrix.
    reader : str
        The plans' ``image_reader_writer``.

    Returns
    -------
    data : numpy.ndarray
        ``(1, d0, d1, d2)`` float32, as the reader gives it.
    properties : dict
        ``{"spacing": [s0, s1, s2]}`` (nnU-Net's order).
    restore : callable
        Maps ``(C, d0, d1, d2)`` output in the reader's layout to ``(C, Z, Y, X)``.
    """
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if reader in ("SimpleITKIO", "NibabelIO"):
        spacing = np.linalg.norm(affine[:3, :3], axis=0)[::-1]
        return array.astype(np.float32)[None], {"spacing": [float(s) for s in spacing]}, _identity
    if reader == "SimpleITKIOWithReorient":
        return _sitk_reoriented(array, affine)
    if reader == "NibabelIOWithReorient":
        return _nibabel_reoriented(array, affine)
    raise CalibSegError(
        f"nnU-Net image reader {reader!r} is not supported (supported: "
        f"{', '.join(SUPPORTED_READERS)}).")


def _sitk_reoriented(array: np.ndarray, affine: np.ndarray
                     ) -> tuple[np.ndarray, dict[str, Any], Restore]:


    image = to_sitk(array, affine)
    original = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(
        image.GetDirection())
    reoriented = sitk.DICOMOrient(image, "RAS")
    data = sitk.GetArrayFromImage(reoriented).astype(np.float32)[None]
    spacing = [abs(float(s)) for s in reoriented.GetSpacing()[::-1]]

    def restore(out: np.ndarray) -> np.ndarray:
        channels = []
        for channel in out:
            item = sitk.GetImageFromArray(np.ascontiguousarray(channel))
            item.CopyInformation(reoriented)
            channels.append(sitk.GetArrayFromImage(sitk.DICOMOrient(item, original)))
        return np.stack(channels)

    return data, {"spacing": spacing}, restore


def _nibabel_reoriented(array: np.ndarray, affine: np.ndarray
                        ) -> tuple[np.ndarray, dict[str, Any], Restore]:

    image = nibabel.Nifti1Image(array.transpose(2, 1, 0), affine)
    orientation = io_orientation(affine)
    reoriented = image.as_reoriented(orientation)
    data = reoriented.get_fdata().transpose(2, 1, 0).astype(np.float32)[None]
    spacing = [float(z) for z in reoriented.header.get_zooms()[::-1]]
    from_canonical = ornt_transform(axcodes2ornt("RAS"), orientation)

    def restore(out: np.ndarray) -> np.ndarray:
        return np.stack([apply_orientation(channel.transpose(2, 1, 0), from_canonical)
                         .transpose(2, 1, 0) for channel in out])

    return data, {"spacing": spacing}, restore


__all__ = ["reader_input"]
