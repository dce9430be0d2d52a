"""Files and folders before and while writing: the overwrite rule, checks, atomic writes.

No image library is imported here, so the command line checks paths in a fraction
of a second before any work starts. Images themselves are read and written by
:mod:`CalibSegLib.io`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from CalibSegLib.errors import CalibSegError

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


def image_stem(path: str) -> str:
    """The name of an image file or DICOM folder less its image suffix (``a/b_image.nii.gz``
    -> ``b_image``): the stem of the outputs written for it."""
    name = os.path.basename(os.path.normpath(path))
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def check_output_location(path: str) -> None:
    """Refuse, before any work, an output whose folder cannot be created or written."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
    if probe != os.path.abspath(path) and not os.path.isdir(probe):
        raise CalibSegError(f"cannot write {path}: {probe} is a file, not a folder; "
                            "choose another output.")
    folder = probe if os.path.isdir(probe) else os.path.dirname(probe)
    if not os.access(folder, os.W_OK):
        raise CalibSegError(f"cannot write {path}: folder {folder} is not writable; "
                            "choose another output.")


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


def read_json(path: str, expected: type = dict, what: str = "JSON file") -> Any:
    """The parsed content of the JSON file ``path``, which must be an ``expected`` value.

    Parameters
    ----------
    path : str
        The file.
    expected : type
        ``dict`` (a JSON object) or ``list`` (a JSON list).
    what : str
        What the file is, for the message (e.g. ``"model card"``).

    Raises
    ------
    CalibSegError
        One line naming ``path`` when the file is missing or unreadable, is not valid
        JSON, or holds another kind of value.
    """
    kinds: dict[type, str] = {dict: "an object", list: "a list"}
    kind = kinds[expected]
    if not os.path.isfile(path):
        raise CalibSegError(f"{path}: no such {what}.")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise CalibSegError(f"{path}: cannot read the {what} ({reason}).") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CalibSegError(f"{path}: the {what} is not valid JSON ({exc}); fix or replace "
                            "the file.") from exc
    if not isinstance(data, expected):
        raise CalibSegError(f"{path}: the {what} must hold {kind} in JSON, not "
                            f"{_json_kind(data)}; fix or replace the file.")
    return data


def _json_kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON: numpy (or torch) arrays and scalars become Python lists
    and numbers, tuples lists, dictionary keys strings, and non-finite floats ``None``."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_ready(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def write_json(path: str, value: Any, indent: int = 2) -> str:
    """Write :func:`json_ready` ``(value)`` to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(json_ready(value), fh, indent=indent)
    return path
