"""Hand-over file of a :class:`~CalibSegLib.inference.topk.TopKPrediction`.

One uncompressed ``.npz`` (a ZIP archive whose members are stored, not deflated):
``indices.npy``, ``gaps.npy``, ``tail.npy`` (the per-voxel arrays, at most 16
bytes per voxel), ``affine.npy`` when known, and ``meta.npy`` (UTF-8 JSON as
``uint8``: format, class count, temperature, class names). Written to a temporary
file beside the target and renamed (atomic). :func:`read_topk` memory-maps the
members straight from the archive (no copy: the reader pages in only the slices
it shows), and never unpickles anything.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from typing import Literal

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import atomic_path
from CalibSegLib.inference.topk import TopKPrediction

FORMAT = "calibseg.topk-prediction/1"
_ARRAYS = ("indices", "gaps", "tail")
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # ZIP local file header, 30 bytes


def write_topk(path: str, prediction: TopKPrediction, meta: dict | None = None,
               arrays: dict[str, np.ndarray] | None = None) -> str:
    """Write ``prediction`` to ``path`` (``.npz``) atomically; return the path.

    ``meta`` adds JSON-serialisable fields (model name, version ...); ``arrays`` adds
    further per-voxel arrays of shape (Z, Y, X) (e.g. float32 confidence and entropy
    maps), stored and memory-mapped like the top-k arrays (:func:`read_topk_file`).
    """

    if not str(path).endswith(".npz"):
        raise CalibSegError(f"A top-k prediction file ends in .npz, got {path!r}.")
    header = {"format": FORMAT, "num_classes": int(prediction.num_classes),
              "temperature": float(prediction.temperature),
              "class_names": list(prediction.class_names), "meta": dict(meta or {})}
    extra = dict(arrays or {})
    reserved = [name for name in extra if name in _ARRAYS + ("meta", "affine")]
    if reserved:
        raise CalibSegError(f"Extra arrays may not be named {', '.join(reserved)}.")
    arrays = {name: np.ascontiguousarray(getattr(prediction, name)) for name in _ARRAYS}
    arrays.update((name, np.ascontiguousarray(value)) for name, value in extra.items())
    arrays["meta"] = np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)
    if prediction.affine is not None:
        arrays["affine"] = np.asarray(prediction.affine, np.float64)
    with atomic_path(str(path)) as tmp:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # stored members: memory-mappable
    return str(path)


def _member_offset(handle, info: zipfile.ZipInfo) -> int:
    """File offset of a stored member's data (after its local header)."""
    handle.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise CalibSegError("The top-k prediction file is damaged (bad ZIP header).")
    name_length, extra_length = fields[9], fields[10]
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _map_member(path: str, handle, info: zipfile.ZipInfo, mmap: bool) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED:
        raise CalibSegError(
            f"Member {info.filename} of {path} is compressed; write the file with "
            "write_topk (stored members) so it can be memory-mapped.")
    handle.seek(_member_offset(handle, info))
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise CalibSegError(f"Member {info.filename} of {path} has npy version {version}.")
    if dtype.hasobject:
        raise CalibSegError(f"Member {info.filename} of {path} holds Python objects; refused.")
    order: Literal["F", "C"] = "F" if fortran else "C"
    offset = handle.tell()
    dims = tuple(int(s) for s in shape)
    if mmap and int(np.prod(dims, dtype=np.int64)) > 0:
        return np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=dims,
                         order=order)
    count = int(np.prod(dims, dtype=np.int64))
    array = np.fromfile(handle, dtype=dtype, count=count).reshape(dims, order=order)
    array.flags.writeable = False
    return array


def read_topk(path: str, mmap: bool = True) -> tuple[TopKPrediction, dict]:
    """``(prediction, meta)`` from a file of :func:`write_topk` (see :func:`read_topk_file`)."""
    prediction, meta, _ = read_topk_file(path, mmap)
    return prediction, meta


#: Members every :func:`write_topk` file holds (names without extension).
TOPK_MEMBERS = frozenset(_ARRAYS + ("meta",))


def zip_member_names(path: str) -> set[str]:
    """Member names (extension dropped) of the ZIP archive at ``path``; empty if it is none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {os.path.splitext(n)[0] for n in archive.namelist()}
    except (zipfile.BadZipFile, OSError):
        return set()


def is_topk_file(path: str) -> bool:
    """Whether ``path`` is a ZIP archive holding the members of a :func:`write_topk` file."""
    return zip_member_names(path) >= TOPK_MEMBERS


def read_topk_file(path: str, mmap: bool = True
                   ) -> tuple[TopKPrediction, dict, dict[str, np.ndarray]]:
    """``(prediction, meta, arrays)`` from a file of :func:`write_topk`; ``arrays`` holds
    the extra per-voxel arrays written with it.

    With ``mmap`` (default) the per-voxel arrays are read-only memory maps of the
    file: nothing is read until a region is used.

    Raises
    ------
    CalibSegError
        Missing, damaged or other-format file (one line, says what to do).
    """
    if not os.path.isfile(path):
        raise CalibSegError(f"No top-k prediction file at {path}.")
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
            members = {os.path.splitext(i.filename)[0]: i for i in archive.infolist()}
            missing = [m for m in _ARRAYS + ("meta",) if m not in members]
            if missing:
                raise CalibSegError(
                    f"{path} is not a top-k prediction file (no {', '.join(missing)}); "
                    "write it with write_topk.")
            arrays = {name: _map_member(path, handle, info,
                                        mmap and name not in ("meta", "affine"))
                      for name, info in members.items()}
    except (zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
        raise CalibSegError(f"Cannot read the top-k prediction file {path}: {exc}.") from exc
    try:
        header = json.loads(np.asarray(arrays["meta"]).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibSegError(f"The header of {path} is damaged: {exc}.") from exc
    if header.get("format") != FORMAT:
        raise CalibSegError(
            f"{path} has format {header.get('format')!r}; this version reads {FORMAT}.")
    affine = arrays.get("affine")
    prediction = TopKPrediction(
        indices=arrays["indices"], gaps=arrays["gaps"], tail=arrays["tail"],
        num_classes=int(header["num_classes"]), temperature=float(header["temperature"]),
        affine=None if affine is None else np.array(affine),
        class_names=tuple(str(c) for c in header.get("class_names", ())))
    extra = {name: value for name, value in arrays.items()
             if name not in _ARRAYS + ("meta", "affine")}
    return prediction, dict(header.get("meta", {})), extra
