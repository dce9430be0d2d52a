"""Sample cases shipped with the installed packages, image/label pairs, seed lists.

Names are exported lazily (loaded on first use): the command line reads
:mod:`CalibSegLib.data.case` and :mod:`CalibSegLib.data.seeds` (no torch) to check
options, while building a case (:mod:`~CalibSegLib.data.sample`,
:mod:`~CalibSegLib.data.shift`) needs MONAI and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from CalibSegLib.data.case import SampleCase, available_cases
    from CalibSegLib.data.sample import sample_case
    from CalibSegLib.data.shift import shifted_case

#: Public name -> defining module.
_EXPORTS = {"SampleCase": "case", "available_cases": "case", "sample_case": "sample",
            "shifted_case": "shift"}

__all__ = ["SampleCase", "available_cases", "sample_case", "shifted_case"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
