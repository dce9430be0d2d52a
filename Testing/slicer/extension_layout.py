"""What the Slicer extension's CMake files install, computed from the CMake lists.

Slicer installs a scripted module's files into ``lib/Slicer-X.Y/qt-scripted-modules/``:

- ``MODULE_PYTHON_SCRIPTS`` and ``MODULE_PYTHON_RESOURCES`` of ``CalibSeg/CMakeLists.txt``
  (paths relative to ``CalibSeg/``, sub-folders kept: ``ctkMacroCompilePythonScript``);
- ``CALIBSEGLIB_PYTHON_SCRIPTS`` / ``_RESOURCES`` of ``CalibSeg/CalibSegLibFiles.cmake``
  (paths relative to the repository root);
- ``CALIBSEG_SHARED_RESOURCES`` of ``CalibSeg/CalibSegResourceFiles.cmake`` (paths relative
  to ``Resources/``), placed under ``CALIBSEG_RESOURCES_SUBDIR``.

:func:`installed_files` maps each installed path to its source file; tests build the installed
folder from it. ``python Testing/slicer/test_extension_packaging.py --write-cmake`` regenerates both
generated lists from the files the repository tracks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_NAME = "CalibSeg"
MODULE_DIR = os.path.join(ROOT, MODULE_NAME)
MODULE_CMAKE = os.path.join(MODULE_DIR, "CMakeLists.txt")
LIB_CMAKE = os.path.join(MODULE_DIR, "CalibSegLibFiles.cmake")
RESOURCE_CMAKE = os.path.join(MODULE_DIR, "CalibSegResourceFiles.cmake")
#: Folders of ``Resources/`` that ship with the extension (icons and screenshots do not).
SHIPPED_RESOURCES = ("Resources/requirements.txt", "Resources/Models", "Resources/SampleData")
SKIP_PARTS = ("__pycache__",)
SKIP_SUFFIXES = (".pyc", ".pyo")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def repository_files(*folders: str) -> list[str]:
    """Files under ``folders`` (relative to the repository root), as the repository tracks them."""
    try:
        out = subprocess.run(["git", "ls-files", "--", *folders], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.splitlines()
        files = [f for f in out if os.path.exists(os.path.join(ROOT, f))]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file
        files = []
        for folder in folders:
            path = os.path.join(ROOT, folder)
            if os.path.isfile(path):
                files.append(folder)
            for base, _, names in os.walk(path):
                files += [os.path.relpath(os.path.join(base, n), ROOT).replace(os.sep, "/")
                          for n in names]
    return sorted(f for f in files if not any(p in f.split("/") for p in SKIP_PARTS)
                  and not f.endswith(SKIP_SUFFIXES))


def cmake_list(text: str, variable: str, substitutions: dict | None = None) -> list[str]:
    """Entries of ``set(variable ...)`` in CMake ``text``."""
    match = re.search(r"set\(\s*" + re.escape(variable) + r"\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    body = re.sub(r"#[^\n]*", "", match.group(1))
    items = body.split()
    for key, value in (substitutions or {}).items():
        items = [i.replace("${" + key + "}", value) for i in items]
    return items


def cmake_value(text: str, variable: str) -> str:
    """The single value of ``set(variable value)``."""
    (value,) = cmake_list(text, variable)
    return value


def module_scripts() -> list[str]:
    return cmake_list(read(MODULE_CMAKE), "MODULE_PYTHON_SCRIPTS", {"MODULE_NAME": MODULE_NAME})


def module_resources() -> list[str]:
    return cmake_list(read(MODULE_CMAKE), "MODULE_PYTHON_RESOURCES", {"MODULE_NAME": MODULE_NAME})


def library_files() -> tuple[list[str], list[str]]:
    """``(scripts, resources)`` of CalibSegLib, relative to the repository root."""
    text = read(LIB_CMAKE)
    return (cmake_list(text, "CALIBSEGLIB_PYTHON_SCRIPTS"),
            cmake_list(text, "CALIBSEGLIB_PYTHON_RESOURCES"))


def shared_resources() -> list[str]:
    """Shared resources, relative to ``Resources/``."""
    return cmake_list(read(RESOURCE_CMAKE), "CALIBSEG_SHARED_RESOURCES")


def shared_resources_subdir() -> str:
    """Where the shared resources go inside the installed module folder."""
    return cmake_value(read(MODULE_CMAKE), "CALIBSEG_RESOURCES_SUBDIR")


def installed_files() -> dict[str, str]:
    """``{path inside qt-scripted-modules: source file}`` for every file CMake installs."""
    out: dict[str, str] = {}

    def add(installed: str, source: str) -> None:
        assert installed not in out, f"{installed} is installed twice"
        out[installed] = source

    for f in module_scripts():
        f = f if f.endswith(".py") else f + ".py"  # ctkMacroCompilePythonScript appends .py
        add(f, os.path.join(MODULE_DIR, f))
    for f in module_resources():
        add(f, os.path.join(MODULE_DIR, f))
    scripts, resources = library_files()
    for f in scripts + resources:
        add(f, os.path.join(ROOT, f))
    subdir = shared_resources_subdir()
    for f in shared_resources():
        add(f"{subdir}/{f}", os.path.join(ROOT, "Resources", f))
    return out


def build_installed_tree(dest: str) -> str:
    """Copy every installed file to ``dest`` (a stand-in for ``qt-scripted-modules``)."""
    for installed, source in installed_files().items():
        target = os.path.join(dest, *installed.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
    return dest


# ------------------------------------------------------------------ generated CMake lists
def tracked_library_files() -> list[str]:
    return repository_files("CalibSegLib")


def tracked_shared_resources() -> list[str]:
    """Tracked files of the shipped ``Resources/`` folders, relative to ``Resources/``."""
    return [os.path.relpath(f, "Resources").replace(os.sep, "/")
            for f in repository_files(*SHIPPED_RESOURCES)]


def lib_cmake_text(files: list[str]) -> str:
    scripts = [f for f in files if f.endswith(".py")]
    resources = [f for f in files if not f.endswith(".py")]
    lines = ["# CalibSegLib files installed with the Slicer extension (paths from the repository",
             "# root). Keep in sync with the repository:",
             "# Testing/slicer/test_extension_packaging.py checks it and",
             "# `python Testing/slicer/test_extension_packaging.py --write-cmake`",
             "# regenerates it.", "set(CALIBSEGLIB_PYTHON_SCRIPTS"]
    lines += [f"  {f}" for f in scripts] + ["  )", "", "set(CALIBSEGLIB_PYTHON_RESOURCES"]
    lines += [f"  {f}" for f in resources] + ["  )", ""]
    return "\n".join(lines)


def resource_cmake_text(files: list[str]) -> str:
    lines = ["# Files of the repository's Resources folder installed with the Slicer extension",
             "# (paths relative to Resources/): requirements, demo models, sample data.",
             "# Testing/slicer/test_extension_packaging.py checks it and",
             "# `python Testing/slicer/test_extension_packaging.py --write-cmake` regenerates it.",
             "set(CALIBSEG_SHARED_RESOURCES"]
    lines += [f"  {f}" for f in files] + ["  )", ""]
    return "\n".join(lines)


def write_cmake_lists() -> list[str]:
    """Regenerate both generated CMake lists; returns the paths written."""
    for path, text in ((LIB_CMAKE, lib_cmake_text(tracked_library_files())),
                       (RESOURCE_CMAKE, resource_cmake_text(tracked_shared_resources()))):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return [LIB_CMAKE, RESOURCE_CMAKE]
