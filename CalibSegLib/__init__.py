"""CalibSegLib: calibrated, explainable segmentation on plain arrays.

The computing layer of the CalibSeg 3D Slicer extension. It never imports
``slicer`` or ``qt``; submodules are imported lazily so ``import CalibSegLib``
stays cheap.
"""

__version__ = "0.1.0"

from CalibSegLib.errors import CalibSegError  # noqa: E402

__all__ = ["CalibSegError", "__version__"]
