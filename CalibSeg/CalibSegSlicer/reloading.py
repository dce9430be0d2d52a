"""Make the module's helper packages importable, and fresh again after Slicer's "Reload".

Slicer's Reload (``slicer.util.reloadScriptedModule``) executes ``CalibSeg.py`` again but
re-imports nothing else: ``from CalibSegSlicer.widget import ...`` would return the old
classes from ``sys.modules``. ``CalibSeg.py`` therefore calls :func:`prepareHelperImports`
before importing any helper: on a reload it forgets every loaded ``CalibSegSlicer`` and
``CalibSegLib`` module, so the imports that follow load the edited files.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping

#: Packages re-imported when the module is reloaded.
HELPER_PACKAGES = ("CalibSegSlicer", "CalibSegLib")


def isHelperModule(name: str, packages: tuple[str, ...] = HELPER_PACKAGES) -> bool:
    """True for a package in ``packages`` or any of its submodules."""
    return any(name == p or name.startswith(p + ".") for p in packages)


def isReload(modules: MutableMapping[str, object] | None = None) -> bool:
    """True when ``CalibSeg.py`` already ran once: a helper other than this file is loaded."""
    modules = sys.modules if modules is None else modules
    return any(isHelperModule(n, ("CalibSegSlicer",)) and n not in ("CalibSegSlicer", __name__)
               for n in list(modules))


def forgetHelperModules(modules: MutableMapping[str, object] | None = None) -> list[str]:
    """Remove every ``CalibSegSlicer`` / ``CalibSegLib`` module from ``modules``; their names."""
    modules = sys.modules if modules is None else modules
    names = sorted(n for n in list(modules) if isHelperModule(n))
    for name in names:
        del modules[name]
    return names


def prepareHelperImports(moduleDir: str | None = None) -> list[str]:
    """Run by ``CalibSeg.py`` before it imports its helpers; returns the forgotten modules.

    On a reload the helpers are forgotten (re-imported fresh); in a source checkout the
    repository root is put on ``sys.path`` so ``import CalibSegLib`` works.
    """
    forgotten = forgetHelperModules() if isReload() else []
    from CalibSegSlicer import locations  # after forgetting: the current file

    locations.makeLibraryImportable(moduleDir)
    return forgotten
