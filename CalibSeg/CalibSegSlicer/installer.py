"""Python dependencies of CalibSeg inside 3D Slicer.

One source of truth: ``Resources/requirements.txt`` (also read by
``pyproject.toml``). Inside Slicer:

- ``torch`` comes from the PyTorch extension (``PyTorchUtils``), which picks a
  build that matches the computer's GPU;
- packages Slicer ships itself (numpy, SimpleITK, VTK, ...) are never
  reinstalled, whatever the requirement says;
- everything else is installed with pip after the user agrees:
  ``slicer.packaging.pip_ensure`` on Slicer 5.12 and later (it asks and shows
  progress itself), ``slicer.util.pip_install`` after a confirmation dialog on
  older versions.

The parsing and filtering functions are plain Python and tested headless.
"""

from __future__ import annotations

import os
import re

#: Distributions Slicer bundles (normalised names): never reinstalled by CalibSeg.
SLICER_OWNED = frozenset({
    "numpy", "simpleitk", "vtk", "scipy", "pip", "setuptools", "wheel", "requests",
    "pydicom", "dicomweb-client", "packaging", "pillow", "gitpython", "six",
})
#: Installed through the PyTorch extension, not pip.
TORCH = "torch"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirementsPath(moduleDir: str | None = None) -> str:
    """Where ``requirements.txt`` is: installed next to the module, or in the source tree."""
    moduleDir = moduleDir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [
        os.path.join(moduleDir, "Resources", "CalibSeg", "requirements.txt"),  # installed
        os.path.join(moduleDir, "..", "Resources", "requirements.txt"),  # source checkout
    ]
    for path in candidates:
        if os.path.isfile(path):
            return os.path.normpath(path)
    raise FileNotFoundError("CalibSeg requirements.txt not found; reinstall the extension.")


def parseRequirements(text: str) -> list[tuple[str, str]]:
    """``[(normalised name, requirement line)]`` of a requirements file's text.

    Comments, blank lines and pip options (``-r``, ``--index-url`` ...) are skipped;
    environment markers and extras stay in the line.
    """
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = _NAME.match(line)
        if match:
            out.append((normalise(match.group(1)), line))
    return out


def splitRequirements(text: str, skip=SLICER_OWNED) -> tuple[list[str], str | None]:
    """``(pip requirement lines, torch requirement or None)``; Slicer-owned ones dropped."""
    pip, torch = [], None
    skip = {normalise(s) for s in skip}
    for name, line in parseRequirements(text):
        if name == TORCH:
            torch = line
        elif name not in skip:
            pip.append(line)
    return pip, torch


def torchVersionSpec(torchLine: str | None) -> str | None:
    """The version part of a torch requirement (``">=2.4"``), as PyTorchUtils wants it."""
    if not torchLine:
        return None
    spec = torchLine[len(_NAME.match(torchLine).group(1)):].split(";", 1)[0].strip()
    return spec or None


def missingRequirements(lines: list[str], versionOf=None) -> list[str]:
    """The requirement lines not satisfied by installed distributions.

    ``versionOf(name) -> str`` defaults to ``importlib.metadata.version`` (raises
    when the distribution is absent). Version specifiers are checked with
    ``packaging`` when it is importable, presence only otherwise.
    """
    import importlib.metadata

    versionOf = versionOf or importlib.metadata.version
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip and Slicer
        Requirement = None
    missing = []
    for line in lines:
        name = _NAME.match(line).group(1)
        try:
            installed = versionOf(name)
        except Exception:
            missing.append(line)
            continue
        if Requirement is not None:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            if requirement.specifier and not requirement.specifier.contains(
                    installed, prereleases=True):
                missing.append(line)
    return missing


def slicerVersion() -> tuple[int, int]:
    import slicer

    app = getattr(slicer, "app", None)
    if app is None:
        return (0, 0)
    return (int(app.majorVersion), int(app.minorVersion))


def ensureTorch(torchLine: str | None) -> bool:
    """Make torch importable through the PyTorch extension; False when the user declined."""
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        pass
    try:
        import PyTorchUtils
    except ImportError as exc:
        from CalibSegLib.errors import CalibSegError

        raise CalibSegError(
            "CalibSeg needs the PyTorch extension: install 'PyTorch' from the Extensions "
            "Manager, restart Slicer and try again."
        ) from exc
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.torchInstalled():
        return True
    return torchLogic.installTorch(askConfirmation=True,
                                   torchVersionRequirement=torchVersionSpec(torchLine)) is not None


def ensureDependencies(requirementsFile: str | None = None) -> bool:
    """Install what CalibSeg needs inside Slicer, asking first; True when all is there."""
    import slicer

    with open(requirementsFile or requirementsPath(), encoding="utf-8") as fh:
        pip, torchLine = splitRequirements(fh.read())
    if not ensureTorch(torchLine):
        return False
    missing = missingRequirements(pip)
    if not missing:
        return True
    packaging = getattr(slicer, "packaging", None)
    if slicerVersion() >= (5, 12) and packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(missing, requester="CalibSeg")
        return not missingRequirements(pip)
    question = ("CalibSeg needs these Python packages, which are not installed yet:\n\n  "
                + "\n  ".join(missing) + "\n\nInstall them now? This can take a few minutes.")
    if not slicer.util.confirmOkCancelDisplay(question, "CalibSeg: install dependencies"):
        return False
    with slicer.util.WaitCursor():
        slicer.util.pip_install(missing)
    return not missingRequirements(pip)
