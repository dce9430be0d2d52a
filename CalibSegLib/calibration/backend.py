"""Which back end accumulates reliability statistics: the compiled kernel or torch.

numba is an optional accelerator here: when it cannot be imported, or the compiled
kernel fails to compile, the statistics are computed by the torch back end
(:mod:`~CalibSegLib.calibration.torch_kernel`, the same sums) and one
:class:`KernelFallbackWarning` per process says why.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

from CalibSegLib.calibration.modes import Backend

try:  # numba is optional: without it the torch back end computes the same statistics
    from CalibSegLib.calibration.kernels import accumulate_numba as _accumulate_numba
    _UNAVAILABLE: str | None = None
except ImportError as exc:  # numba missing or not importable with this numpy/Python
    _accumulate_numba = None  # type: ignore[assignment]
    _UNAVAILABLE = f"numba cannot be imported ({exc})"

_lock = threading.Lock()
_warned = False


class KernelFallbackWarning(RuntimeWarning):
    """The compiled kernel cannot run; the (slower on CPU) torch back end is used."""


def numba_kernel() -> Callable | None:
    """:func:`~CalibSegLib.calibration.kernels.accumulate_numba`, or ``None`` (after the
    process's one :class:`KernelFallbackWarning`) when it cannot run here."""
    if _UNAVAILABLE is None:
        return _accumulate_numba
    _warn_once(_UNAVAILABLE)
    return None


def disable_numba(reason: str) -> None:
    """Use the torch back end from now on in this process (the kernel failed to compile)."""
    global _UNAVAILABLE
    with _lock:
        _UNAVAILABLE = reason
    _warn_once(reason)


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from numba's compiler (typing, lowering) rather than the data."""
    return type(exc).__module__.startswith("numba")


def resolve_backend(backend: Backend | str, device: str | None) -> Backend:
    """The back end that will run: ``auto`` picks torch for tensors on an accelerator
    (``device`` not ``None``/``"cpu"``) and the compiled kernel otherwise; the compiled
    kernel becomes torch when numba cannot run. Raises ``ValueError`` on an unknown name
    (the back end is chosen by code, not typed by a user)."""
    chosen = Backend.parse(backend, "backend")
    if chosen is Backend.AUTO:
        chosen = Backend.TORCH if device not in (None, "cpu") else Backend.NUMBA
    if chosen is Backend.NUMBA and numba_kernel() is None:
        chosen = Backend.TORCH
    return chosen


def _warn_once(reason: str) -> None:
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    warnings.warn(f"The compiled calibration kernel is not available: {reason}; the torch "
                  "back end computes the same statistics (more slowly on CPU). Install numba "
                  "(pip install numba) for the fast path.", KernelFallbackWarning, stacklevel=3)
