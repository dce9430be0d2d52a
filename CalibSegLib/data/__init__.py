"""Sample cases shipped with the installed packages, and image file I/O."""

from CalibSegLib.data.sample import SampleCase, available_cases, sample_case
from CalibSegLib.data.shift import shifted_case

__all__ = ["SampleCase", "available_cases", "sample_case", "shifted_case"]
