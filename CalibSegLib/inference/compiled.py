"""The compiled CPU kernels of the inference package, when numba can run them.

numba is an optional accelerator here as in the calibration package, and the
choice is the same one (:mod:`CalibSegLib.calibration.backend`): when numba cannot
be imported, or a compiled kernel failed to compile, :func:`available` is false,
the torch paths compute the same maps and statistics (the kernels are tested
equal to them) and one :class:`~CalibSegLib.calibration.backend.KernelFallbackWarning`
per process says why.
"""

from __future__ import annotations

from CalibSegLib.calibration.backend import numba_kernel

try:  # numba is optional: without it the torch paths compute the same values
    from CalibSegLib.inference import softmax_kernel, topk_kernel
    _LOADED = True
except ImportError:  # numba missing or not importable with this numpy/Python
    softmax_kernel = None  # type: ignore[assignment]
    topk_kernel = None  # type: ignore[assignment]
    _LOADED = False

__all__ = ["available", "softmax_kernel", "topk_kernel"]


def available() -> bool:
    """Whether the compiled kernels run in this process (numba imported and not disabled
    after a failed compilation); false after the process's one fallback warning."""
    runs = numba_kernel() is not None  # the process's one warning when numba cannot run
    return runs and _LOADED
