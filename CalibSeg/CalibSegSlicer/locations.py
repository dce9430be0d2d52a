"""Where the module's files are, in an installed extension and in a source checkout.

Installed extension (``<ext>/lib/Slicer-X.Y/qt-scripted-modules/``)::

    CalibSeg.py
    CalibSegSlicer/            this package
    CalibSegLib/               the library
    Resources/CalibSeg/Models/<model>/model.json ...
    Resources/CalibSeg/SampleData/<sample files>
    Resources/CalibSeg/requirements.txt

Source checkout (Slicer's "Additional module paths" pointing at ``<repo>/CalibSeg``)::

    <repo>/CalibSeg/CalibSeg.py
    <repo>/CalibSeg/CalibSegSlicer/
    <repo>/CalibSegLib/
    <repo>/Resources/Models/<model>/ ...
    <repo>/Resources/SampleData/<sample files>

Only plain Python: no Slicer, no Qt, no CalibSegLib import (this module is what makes
CalibSegLib importable in the source layout).
"""

from __future__ import annotations

import os
import sys

#: Sub-folder of ``Resources`` in the installed extension holding the shared resources.
INSTALLED_RESOURCES = ("Resources", "CalibSeg")
#: The sample volume (the 2 mm MNI ICBM152 2009a T1 template), its reference tissue
#: segmentation, the thumbnail shown by the SampleData module and the template's licence.
SAMPLE_VOLUME_FILE = "CalibSeg-MNI-T1-2mm.nrrd"
SAMPLE_LABELS_FILE = "CalibSeg-MNI-T1-2mm-tissues.seg.nrrd"
SAMPLE_THUMBNAIL_FILE = "CalibSeg-MNI-T1-2mm.png"
SAMPLE_LICENSE_FILE = "CalibSeg-MNI-T1-2mm-LICENSE.txt"
#: The file a model folder must contain.
MODEL_CARD = "model.json"


def moduleDir() -> str:
    """The folder holding ``CalibSeg.py`` (parent of this package)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resourceRoots(base: str | None = None) -> list[str]:
    """Candidate resource folders: installed first, then the source checkout."""
    base = os.path.abspath(base or moduleDir())
    return [os.path.join(base, *INSTALLED_RESOURCES),  # installed
            os.path.join(os.path.dirname(base), "Resources")]  # source checkout


def resourcePath(*parts: str, base: str | None = None) -> str:
    """The first existing ``<resources>/<parts>``; raises ``FileNotFoundError`` otherwise."""
    candidates = [os.path.join(root, *parts) for root in _resourceRoots(base)]
    for path in candidates:
        if os.path.exists(path):
            return os.path.normpath(path)
    raise FileNotFoundError(
        f"CalibSeg file {'/'.join(parts)} not found (looked in {', '.join(candidates)}); "
        "reinstall the CalibSeg extension.")


def modelsDir(base: str | None = None) -> str:
    """The folder of the models shipped with the extension."""
    return resourcePath("Models", base=base)


def shippedModelFolders(base: str | None = None) -> list[str]:
    """Folders of the models shipped with the extension (each has a ``model.json``), sorted.

    Empty when no model folder is found.
    """
    try:
        root = modelsDir(base)
    except FileNotFoundError:
        return []
    folders = [os.path.join(root, name) for name in sorted(os.listdir(root))]
    return [f for f in folders if os.path.isfile(os.path.join(f, MODEL_CARD))]


def sampleDataPath(base: str | None = None) -> str:
    """The shipped sample volume (compressed NRRD)."""
    return resourcePath("SampleData", SAMPLE_VOLUME_FILE, base=base)


def sampleLabelsPath(base: str | None = None) -> str:
    """The shipped reference tissue segmentation of the sample volume (Slicer ``.seg.nrrd``)."""
    return resourcePath("SampleData", SAMPLE_LABELS_FILE, base=base)


def sampleThumbnailPath(base: str | None = None) -> str:
    """The sample's thumbnail (PNG) for the SampleData module."""
    return resourcePath("SampleData", SAMPLE_THUMBNAIL_FILE, base=base)


def libraryParentDir(base: str | None = None) -> str | None:
    """The folder that must be on ``sys.path`` for ``import CalibSegLib``; None if not found.

    Installed: the module folder itself (Slicer puts it on ``sys.path``). Source checkout:
    the repository root, one level up.
    """
    base = os.path.abspath(base or moduleDir())
    for folder in (base, os.path.dirname(base)):
        if os.path.isfile(os.path.join(folder, "CalibSegLib", "__init__.py")):
            return folder
    return None


def makeLibraryImportable(base: str | None = None, path: list[str] | None = None) -> str | None:
    """Append the folder holding ``CalibSegLib`` to ``path`` (``sys.path``) if missing.

    Returns the folder (None when ``CalibSegLib`` is not found beside the module or one
    level up, e.g. when it is installed as a package).
    """
    path = sys.path if path is None else path
    folder = libraryParentDir(base)
    if folder is not None and not any(_same(folder, p) for p in path):
        path.append(folder)
    return folder


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b or "."))
