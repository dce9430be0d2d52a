"""The Slicer side of CalibSeg: MRML logic, panel, background inference, dependency set-up.

Slicer loads every ``.py`` file at the top of a scripted-module folder as a module, so all
of the module's helpers live in this package beside ``CalibSeg.py``. The computing is in
``CalibSegLib`` (no Slicer, no Qt).
"""
