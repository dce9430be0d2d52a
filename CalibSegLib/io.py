"""Reading and writing images as ``(Z, Y, X)`` arrays with an IJK-to-RAS affine.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) and DICOM series folders (read only), through SimpleITK.
Writes are atomic: a temporary file in the target folder is renamed into place,
so an interrupted write never leaves a half-written result.
"""

from __future__ import annotations

import os
import re

import numpy as np
import SimpleITK as sitk

from CalibSegLib.errors import CalibSegError

# Files and folders (no image library); re-exported here because every writer takes them from io.
from CalibSegLib.files import (
    WRITABLE_SUFFIXES,
    atomic_path,
    check_image_file,
    image_suffix,
    read_json,
    read_marked_section,
    refuse_overwrite,
    replace_marked_section,
    uniform_file_modes,
)

__all__ = [
    "LPS_TO_RAS", "WRITABLE_SUFFIXES", "affine_from_sitk", "atomic_path",
    "check_image_file", "image_suffix", "looks_like_labels",
    "read_image", "read_json", "read_marked_section", "reader_message", "refuse_overwrite",
    "replace_marked_section", "series_file_names", "to_sitk", "uniform_file_modes",
    "write_image",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_image(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file or DICOM series folder; return ``(array, affine)``.

    ``array`` has shape (Z, Y, X); ``affine`` is the voxel-to-RAS matrix, shape (4, 4).
    """
    check_image_file(path)
    try:
        if os.path.isdir(path):
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(series_file_names(path))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise CalibSegError(f"{path}: cannot read this image ({reader_message(exc)}); pass "
                            "a NIfTI, NRRD or MetaImage file or a DICOM series folder.") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CalibSegError(
            f"{path}: expected a 3D single-channel image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)."
        )
    array = sitk.GetArrayFromImage(image)
    return array, affine_from_sitk(image)


def reader_message(exc: Exception) -> str:
    """The reader's complaint without its source-file locations (``…ReaderBase.cxx:99…``)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"[^\s]*\.(?:cxx|cpp|h|hxx|txx)(?::\d+)?:?", "", text)
    text = re.sub(r"\b(?:ITK ERROR|sitk::ERROR|Exception thrown in SimpleITK \w+)[:\s]*", "",
                  text)
    text = re.sub(r"\s+", " ", text).strip(" :")
    return text[:160] or "unknown format"


def looks_like_labels(array: np.ndarray, max_values: int = 16) -> bool:
    """True for an integer array with at most ``max_values`` distinct values (a label map).

    ``array`` is an image, array of shape (Z, Y, X).
    """
    if array.dtype.kind not in "iub":
        return False
    return np.unique(array).size <= max_values


def series_file_names(folder: str) -> list[str]:
    """File names of the single DICOM series in ``folder``, sorted along the slice normal."""
    if not os.path.isdir(folder):
        raise CalibSegError(f"{folder}: not a folder; DICOM input is a folder holding one series.")
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        raise CalibSegError(f"{folder}: folder holds no DICOM series.")
    if len(series) > 1:
        raise CalibSegError(
            f"{folder}: folder holds {len(series)} DICOM series; pass a folder with one."
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0]))


def affine_from_sitk(image) -> np.ndarray:
    """IJK-to-RAS matrix of a SimpleITK image, array of shape (4, 4)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def to_sitk(array: np.ndarray, affine: np.ndarray, vector: bool = False):
    """A SimpleITK image from a ``(Z, Y, X)`` (or ``(Z, Y, X, C)`` with ``vector``) array."""
    affine = np.asarray(affine, dtype=np.float64)
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise CalibSegError("The affine has a zero-length voxel axis.")
    direction = lps[:3, :3] / spacing[None, :]
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def write_image(path: str, array: np.ndarray, affine: np.ndarray, vector: bool = False) -> str:
    """Write ``array`` with ``affine`` atomically; the format follows the suffix.

    ``array`` has shape (Z, Y, X), or (Z, Y, X, C) with ``vector``; ``affine`` is the
    voxel-to-RAS matrix, shape (4, 4).
    """
    if image_suffix(path) not in WRITABLE_SUFFIXES:
        raise CalibSegError(
            f"{path}: unknown output format; use one of {', '.join(WRITABLE_SUFFIXES)}."
        )
    image = to_sitk(array, affine, vector=vector)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, useCompression=True)
    return path


