"""Supported Slicer versions and the Python they ship, against the code the module imports.

Python shipped per Slicer release (``Slicer_REQUIRED_PYTHON_VERSION`` in the top-level
``CMakeLists.txt``, downloaded by ``SuperBuild/External_python.cmake``): 5.6 and 5.8 ship
3.9.10, 5.10 and 5.12 ship 3.12.10. CalibSeg needs Python 3.10 or later
(``pyproject.toml``), so it supports Slicer 5.10 and later; ``CMakeLists.txt`` states both
(``find_package(Slicer 5.10 REQUIRED)`` and a check of Slicer's Python version).
"""

from __future__ import annotations

import ast
import os
import re

import pytest
from extension_layout import ROOT, installed_files, read

#: Python shipped by each Slicer release (major.minor).
SLICER_PYTHON = {(5, 6): (3, 9), (5, 8): (3, 9), (5, 10): (3, 12), (5, 12): (3, 12)}
#: Standard-library names added after Python 3.10 (module, name or None for the module).
NEWER_THAN_310 = {
    ("tomllib", None), ("typing", "Self"), ("typing", "LiteralString"), ("typing", "Never"),
    ("typing", "assert_never"), ("typing", "reveal_type"), ("typing", "assert_type"),
    ("typing", "override"), ("typing", "TypeVarTuple"), ("typing", "Unpack"),
    ("typing", "Required"), ("typing", "NotRequired"), ("datetime", "UTC"), ("enum", "StrEnum"),
    ("itertools", "batched"), ("asyncio", "TaskGroup"), ("hashlib", "file_digest"),
    ("contextlib", "chdir"), ("math", "exp2"), ("math", "cbrt"),
}
NEWER_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def pyproject_minimum() -> tuple[int, ...]:
    text = read(os.path.join(ROOT, "pyproject.toml"))
    return version_tuple(re.search(r'^requires-python\s*=\s*">=\s*([0-9.]+)"', text, re.M)
                         .group(1))


def cmake_minimums() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(minimum Slicer, minimum Python) declared in the top-level CMakeLists.txt."""
    text = read(os.path.join(ROOT, "CMakeLists.txt"))
    slicer = re.search(r"find_package\(Slicer ([0-9.]+) REQUIRED\)", text).group(1)
    python = re.search(r'set\(CALIBSEG_MINIMUM_PYTHON_VERSION "([0-9.]+)"\)', text).group(1)
    assert re.search(r"if\(Slicer_REQUIRED_PYTHON_VERSION VERSION_LESS "
                     r"CALIBSEG_MINIMUM_PYTHON_VERSION\)\s*\n\s*message\(FATAL_ERROR", text)
    return version_tuple(slicer), version_tuple(python)


def imported_sources() -> list[str]:
    """Every Python file of the installed module (module file, CalibSegSlicer, CalibSegLib)."""
    return sorted(source for path, source in installed_files().items() if path.endswith(".py"))


def test_declared_minimum_python_equals_pyproject():
    _, python = cmake_minimums()
    assert python == pyproject_minimum() == (3, 10)


def test_supported_slicer_versions_ship_a_supported_python():
    slicer, python = cmake_minimums()
    for release, shipped in SLICER_PYTHON.items():
        assert (shipped >= python) == (release >= slicer), (release, shipped)


def test_docs_state_the_supported_versions():
    for path in ("README.md", os.path.join("docs", "slicer.md")):
        text = read(os.path.join(ROOT, path))
        assert "Slicer 5.10" in text, path
        assert "Python 3.12" in text or "Python 3.10" in text, path


@pytest.mark.parametrize("source", imported_sources(),
                         ids=lambda s: os.path.relpath(s, ROOT).replace(os.sep, "/"))
def test_code_parses_as_the_oldest_supported_python(source):
    ast.parse(read(source), source, feature_version=pyproject_minimum()[:2])


def newer_names(tree: ast.AST) -> list[str]:
    """Uses in ``tree`` of standard-library names that Python 3.10 lacks."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if (a.name, None) in NEWER_THAN_310]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{a.name}" for a in node.names
                      if (node.module, a.name) in NEWER_THAN_310
                      or (node.module, None) in NEWER_THAN_310]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in NEWER_THAN_310:
                found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            found.append(node.id)
    return found


def test_no_standard_library_names_newer_than_the_oldest_python():
    found = [f"{os.path.relpath(source, ROOT)}: {name}" for source in imported_sources()
             for name in newer_names(ast.parse(read(source), source))]
    assert not found, "needs a newer Python than the oldest supported:\n" + "\n".join(found)


def test_the_checks_catch_newer_code():
    bad = ("import tomllib\nfrom itertools import batched\nimport datetime\n"
           "x = datetime.UTC\nraise ExceptionGroup('x', [])\n")
    assert newer_names(ast.parse(bad)) == ["tomllib", "itertools.batched", "datetime.UTC",
                                           "ExceptionGroup"]
    assert newer_names(ast.parse("import typing\nfrom typing import Optional\n")) == []
    with pytest.raises(SyntaxError):
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=(3, 10))
