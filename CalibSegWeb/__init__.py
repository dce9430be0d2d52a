"""CalibSeg in the browser: a local web app on ``trame-slicer``.

It serves Slicer's own MRML scene and slice views (rendered on the server, streamed to
the page) and drives them through the same MRML logic as the Slicer module
(:class:`CalibSegSlicer.logic.CalibSegLogic`). Start it with ``calibseg view``.

Layers: ``CalibSegWeb`` (page, jobs, uploads) → ``CalibSegSlicer`` (MRML logic) →
``CalibSegLib`` (computing). This package is not part of the Slicer extension.
"""

from __future__ import annotations

import os
import sys

#: ``<repository>/CalibSeg``: the folder holding the ``CalibSegSlicer`` package.
MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "CalibSeg")


def makeSlicerLogicImportable() -> None:
    """Put the folder of ``CalibSegSlicer`` on ``sys.path`` (once)."""
    if os.path.isdir(MODULE_DIR) and MODULE_DIR not in sys.path:
        sys.path.insert(0, MODULE_DIR)


makeSlicerLogicImportable()
