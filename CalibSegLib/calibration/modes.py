"""The named options of the calibration core, each with one point of validation.

Every option is a :class:`Choice`: an ``Enum`` whose members are also their plain
strings (``Reduction.MACRO == "macro"``), so callers, command-line options and JSON
files keep passing and storing the same strings. Each option is checked once, where it
enters: :meth:`Choice.from_user` for what a user typed (an option, a config file:
one :class:`CalibSegError` that lists the accepted values) and :meth:`Choice.parse`
for what calling code chooses (``ValueError``, a programmer error).
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from CalibSegLib.errors import CalibSegError

_C = TypeVar("_C", bound="Choice")


class Choice(str, Enum):
    """A string option with a fixed set of values (``str(member)`` is its value)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The accepted strings, in definition order."""
        return tuple(str(member.value) for member in cls)

    @classmethod
    def parse(cls: type[_C], value: object, option: str) -> _C:
        """The member named by ``value`` (a member or its string), for values code chooses.

        Raises ``ValueError`` (a caller's mistake) naming ``option`` and the accepted values.
        """
        member = cls._lookup(value)
        if member is None:
            raise ValueError(cls._message(value, option))
        return member

    @classmethod
    def from_user(cls: type[_C], value: object, option: str) -> _C:
        """The member named by ``value``, for values a user typed (an option, a config file).

        Raises :class:`CalibSegError` naming ``option`` and the accepted values.
        """
        member = cls._lookup(value)
        if member is None:
            raise CalibSegError(cls._message(value, option))
        return member

    @classmethod
    def _lookup(cls: type[_C], value: object) -> _C | None:
        try:
            return cls(value)
        except ValueError:
            return None

    @classmethod
    def _message(cls, value: object, option: str) -> str:
        accepted = ", ".join(repr(v) for v in cls.values())
        return f"{option} must be one of {accepted}; got {value!r}."


class Reduction(Choice):
    """How :meth:`ReliabilityStats.metrics` combines images."""

    #: Metrics per image (and class), then the mean over images (the mL1-ACE paper's numbers).
    MACRO = "macro"
    #: Bins pooled over all images first, then one set of metrics.
    MICRO = "micro"


class Backend(Choice):
    """Where :meth:`ReliabilityStats.from_probs` accumulates its sums."""

    #: torch on the tensors' device for CUDA tensors, the compiled CPU kernel otherwise.
    AUTO = "auto"
    #: The compiled (numba) CPU kernel; the torch back end when numba cannot load.
    NUMBA = "numba"
    #: torch operations on the tensors' device.
    TORCH = "torch"


class Binning(Choice):
    """The binning of the mL1-ACE loss term (``NONE``: no calibration term)."""

    NONE = "none"
    HARD = "hard"
    SOFT = "soft"


class LossReduction(Choice):
    """How a loss reduces its per-image, per-class values ``(B, C)``."""

    MEAN = "mean"
    SUM = "sum"
    NONE = "none"
