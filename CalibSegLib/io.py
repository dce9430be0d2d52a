"""Reading and writing images as ``(Z, Y, X)`` arrays with an IJK-to-RAS affine.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) and DICOM series folders (read only), through SimpleITK.
Writes are atomic: a temporary file in the target folder is renamed into place,
so an interrupted write never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import numpy as np

from CalibSegLib.errors import CalibSegError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: Formats whose (header) files are plain text.
_TEXT_HEADER_SUFFIXES = (".nhdr", ".mhd", ".nrrd")
#: The command-line flag that allows replacing existing outputs.
OVERWRITE_FLAG = "--overwrite"


def refuse_overwrite(paths, overwrite: bool = False, flag: str = OVERWRITE_FLAG) -> None:
    """The one overwrite rule: refuse existing ``paths`` unless ``overwrite``.

    Raises :class:`CalibSegError` naming the first existing path(s) and ``flag``;
    nothing is written or removed here.
    """
    if overwrite:
        return
    existing = [os.fspath(p) for p in paths if os.path.lexists(os.fspath(p))]
    if not existing:
        return
    shown = ", ".join(existing[:2])
    more = f" and {len(existing) - 2} more" if len(existing) > 2 else ""
    verb = "exists" if len(existing) == 1 else "exist"
    raise CalibSegError(f"{shown}{more} already {verb}; pass {flag} to replace "
                        f"{'it' if len(existing) == 1 else 'them'}, or choose another output.")


def check_image_file(path: str) -> None:
    """Refuse, without reading pixels, a missing, empty or plain-text image file.

    DICOM series folders pass (they are checked when read). The message names
    what the file is instead of the reader's internals.
    """
    if not os.path.exists(path):
        raise CalibSegError(f"{path}: no such file or folder.")
    if os.path.isdir(path):
        return
    size = os.path.getsize(path)
    if size == 0:
        raise CalibSegError(f"{path}: the file is empty; pass an image file (NIfTI, NRRD, "
                            "MetaImage) or a DICOM series folder.")
    if image_suffix(path) in _TEXT_HEADER_SUFFIXES:
        return
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[:2] != b"\x1f\x8b" and _is_text(head):
        raise CalibSegError(f"{path}: this is a text file, not an image; pass an image file "
                            "(NIfTI, NRRD, MetaImage) or a DICOM series folder.")


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def image_suffix(path: str) -> str:
    """The recognised image suffix of ``path`` (``.nii.gz`` counts as one)."""
    lower = path.lower()
    for suffix in WRITABLE_SUFFIXES + (".nhdr",):
        if lower.endswith(suffix):
            return suffix
    return os.path.splitext(lower)[1]


def read_image(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file or DICOM series folder; return ``(array (Z, Y, X), affine)``."""
    import SimpleITK as sitk

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
    import re

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
    import SimpleITK as sitk

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
    import SimpleITK as sitk

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


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only on success."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise CalibSegError(f"Output folder {folder} does not exist; create it first.")
    if not os.access(folder, os.W_OK):
        raise CalibSegError(f"Output folder {folder} is not writable; choose another output.")
    suffix = image_suffix(path) or os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".calibseg-", suffix=suffix, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def uniform_file_modes(folder: str) -> None:
    """Give every file under ``folder`` the mode a new file gets (``0666`` less the umask).

    A written folder (a model: card, weights, gallery) then has one mode throughout,
    whatever each writer's library chose.
    """
    umask = os.umask(0)
    os.umask(umask)
    for base, _, names in os.walk(folder):
        for name in names:
            os.chmod(os.path.join(base, name), 0o666 & ~umask)


def write_image(path: str, array: np.ndarray, affine: np.ndarray, vector: bool = False) -> str:
    """Write ``array`` (Z, Y, X) with ``affine`` atomically; the format follows the suffix."""
    import SimpleITK as sitk

    if image_suffix(path) not in WRITABLE_SUFFIXES:
        raise CalibSegError(
            f"{path}: unknown output format; use one of {', '.join(WRITABLE_SUFFIXES)}."
        )
    image = to_sitk(array, affine, vector=vector)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, useCompression=True)
    return path


def read_marked_section(path: str, begin: str, end: str) -> str | None:
    """The text of ``path`` from marker ``begin`` through marker ``end``, or ``None``."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return _marked_section(fh.read(), begin, end)


def _marked_section(text: str, begin: str, end: str) -> str | None:
    if begin not in text or end not in text:
        return None
    return text[text.index(begin):text.index(end) + len(end)]


def replace_marked_section(path: str, section: str, begin: str, end: str,
                           heading: str = "") -> None:
    """Put ``section`` (markers included) in place of the marked one in ``path``, atomically.

    Without markers the section is appended; a new file starts with ``heading``.
    Generated parts of hand-written documents are refreshed this way.
    """
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    old = _marked_section(text, begin, end)
    if old is not None:
        text = text.replace(old, section, 1)
    elif text.strip():
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = heading + section + "\n"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
