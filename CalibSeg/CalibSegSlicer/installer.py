"""Python dependencies of CalibSeg inside 3D Slicer.

One source of truth: ``Resources/requirements.txt`` (also read by ``pyproject.toml``).
Inside Slicer, in this order:

1. ``torch`` comes from the PyTorch extension (``PyTorchUtils``), which picks a build that
   matches the computer's GPU. Its installed version is read without importing it; when it
   is missing or older than the requirement, the PyTorch extension is asked to install or
   upgrade it (it asks the user first). pip never installs torch for CalibSeg.
2. Packages Slicer ships itself (numpy, SimpleITK, VTK, ...) are never installed, upgraded
   or replaced: their requirement lines are dropped, and every pip run gets a constraints
   file pinning the installed torch and Slicer packages to their installed versions, so a
   dependency that wants another version makes pip stop with an error instead of replacing
   a library Slicer has loaded.
3. The other missing packages are installed with ``slicer.util.pip_install`` after the user
   agrees (Slicer 5.12 shows pip's progress in a dialog).

The parsing, version and argument functions are plain Python and tested headless.
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


#: Never installed, upgraded or replaced by CalibSeg's pip runs (normalised names).
PROTECTED = frozenset({TORCH} | SLICER_OWNED)
#: pip options that could replace an installed package: never passed.
FORBIDDEN_PIP_OPTIONS = ("--upgrade", "-U", "--force-reinstall", "--ignore-installed", "-I",
                         "--upgrade-strategy")


def installedVersion(name: str, versionOf=None) -> str | None:
    """The installed version of distribution ``name`` (not imported), or None."""
    import importlib.metadata

    versionOf = versionOf or importlib.metadata.version
    try:
        return versionOf(name)
    except Exception:
        return None


def satisfies(version: str | None, spec: str | None) -> bool:
    """True when ``version`` is installed and meets ``spec`` (``">=2.4"``; None: any)."""
    if version is None:
        return False
    if not spec:
        return True
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(spec).contains(version, prereleases=True)


def constraintsText(versionOf=None, names=PROTECTED) -> str:
    """pip constraints pinning each installed distribution of ``names`` to its version."""
    lines = []
    for name in sorted(names):
        version = installedVersion(name, versionOf)
        if version is not None:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def pipArguments(requirements: list[str], constraintsFile: str) -> list[str]:
    """Arguments for ``slicer.util.pip_install``: the requirements under the constraints."""
    protected = [r for r in requirements if parseRequirements(r)[0][0] in PROTECTED]
    if protected:
        raise ValueError(f"CalibSeg never installs these with pip: {protected}")
    return ["-c", constraintsFile, *requirements]


def ensureTorch(torchLine: str | None, versionOf=None) -> bool:
    """Make a torch meeting ``torchLine`` available through the PyTorch extension.

    Returns False when the user declined. Raises ``CalibSegError`` when the PyTorch
    extension is missing, or when torch was upgraded while an older one is loaded.
    """
    import sys

    from CalibSegLib.errors import CalibSegError

    spec = torchVersionSpec(torchLine)
    installed = installedVersion(TORCH, versionOf)
    if satisfies(installed, spec):
        return True
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise CalibSegError(
            "CalibSeg needs the PyTorch extension: install 'PyTorch' from the Extensions "
            "Manager, restart Slicer and try again."
        ) from exc
    loaded = TORCH in sys.modules
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=True, torchVersionRequirement=spec)
    if torch is None:
        return False
    if loaded and installed is not None:
        raise CalibSegError(f"PyTorch was upgraded from {installed}; restart Slicer to use it.")
    return True


def ensureDependencies(requirementsFile: str | None = None, versionOf=None) -> bool:
    """Install what CalibSeg needs inside Slicer, asking first; True when all is there."""
    import tempfile

    import slicer

    from CalibSegLib.errors import CalibSegError

    with open(requirementsFile or requirementsPath(), encoding="utf-8") as fh:
        pip, torchLine = splitRequirements(fh.read())
    if not ensureTorch(torchLine, versionOf):
        return False
    missing = missingRequirements(pip, versionOf)
    if not missing:
        return True
    question = ("CalibSeg needs these Python packages, which are not installed yet:\n\n  "
                + "\n  ".join(missing) + "\n\nInstall them now? This needs a network "
                "connection and can take a few minutes. PyTorch, numpy and SimpleITK are "
                "kept as they are.")
    testing = bool(getattr(slicer.app, "testingEnabled", lambda: False)())
    if not testing and not slicer.util.confirmOkCancelDisplay(
            question, "CalibSeg: install Python packages"):
        return False
    folder = tempfile.mkdtemp(prefix="CalibSeg-pip-")
    constraints = os.path.join(folder, "constraints.txt")
    try:
        with open(constraints, "w", encoding="utf-8") as fh:
            fh.write(constraintsText(versionOf))
        slicer.util.pip_install(pipArguments(missing, constraints))
    except Exception as exc:
        raise CalibSegError(
            f"Installing {', '.join(missing)} failed ({exc}); see the Python console. "
            "CalibSeg does not replace Slicer's PyTorch, numpy or SimpleITK: if a package "
            "needs other versions of them, update Slicer or the PyTorch extension."
        ) from exc
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return not missingRequirements(pip, versionOf)
