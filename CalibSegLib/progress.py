"""Progress reporting and cancellation shared by every long operation.

A long operation takes ``progress(fraction, message)`` and ``cancel() -> bool``
callbacks (both optional). It calls :func:`report` at natural steps and
:func:`check_cancel` between units of work; a cancelled operation raises
:class:`~CalibSegLib.errors.Cancelled` and keeps no partial result.
"""

from __future__ import annotations

from collections.abc import Callable

from CalibSegLib.errors import Cancelled

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


def report(progress: ProgressCallback | None, fraction: float, message: str = "") -> None:
    """Send ``fraction`` (clipped to [0, 1]) and ``message`` to ``progress`` if given."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def check_cancel(cancel: CancelCallback | None, what: str = "operation") -> None:
    """Raise :class:`Cancelled` when ``cancel()`` says so."""
    if cancel is not None and cancel():
        raise Cancelled(f"The {what} was cancelled; nothing was written.")


def scaled(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """A progress callback mapping [0, 1] of a sub-task onto [start, stop] of the parent."""
    if progress is None:
        return None

    def _scaled(fraction: float, message: str = "") -> None:
        report(progress, start + (stop - start) * fraction, message)

    return _scaled
