"""The messages of a CalibSeg federation and the server's checks on every reply.

Message types (Flower ``<category>.<action>``)
-----------------------------------------------
``query.calibseg_stats``
    Server -> site: model card (``ConfigRecord "model"``), weights (``ArrayRecord
    "weights"``), ``ConfigRecord "config"`` (``n-bins``, ``max-cases``, ``round``).
    Site -> server: ``ArrayRecord "stats"`` (reliability statistics as bounded
    arrays, see :mod:`CalibSegLib.federated.reliability`) and ``ConfigRecord "meta"``
    (``site``, ``model-version``, ``n-cases``, ``n-bins``, ``n-classes``).
``query.calibseg_nll``
    Server -> site: model and ``config`` with ``temperatures`` (the grid).
    Site -> server: ``ArrayRecord "nll"`` with ``sums`` (one NLL sum per grid
    temperature) and ``count`` (voxels), and ``meta``.
``train`` (Flower's FedAvg)
    Server -> site: ``ArrayRecord "arrays"`` (global weights), ``ConfigRecord
    "model"`` (card), ``ConfigRecord "config"`` (local steps, learning rate, seed).
    Site -> server:
    ``ArrayRecord "arrays"`` (updated weights), ``MetricRecord "metrics"``
    (``num-examples``, ``loss``) and ``meta``.

Every reply is checked before it touches the pool (:class:`PayloadRejected` names
the reason); a rejected reply is logged and left out, the round goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from CalibSegLib.errors import CalibSegError

LOG = logging.getLogger("CalibSegLib.federated")

STATS_TYPE = "query.calibseg_stats"
NLL_TYPE = "query.calibseg_nll"

#: Cases one site may report in one round unless the server allows more.
DEFAULT_MAX_CASES = 256


class PayloadRejected(CalibSegError):
    """A site's reply failed a check; the message says which and why."""


def scalar(value: object) -> int | float | str:
    """A record value that must be one number or string; :class:`TypeError` otherwise."""
    if isinstance(value, int | float | str):
        return value
    raise TypeError(f"expected a number or a string, got {type(value).__name__}")


@dataclass(frozen=True)
class SiteMeta:
    """The ``meta`` record of a reply."""

    site: str
    model_version: str
    n_cases: int
    n_bins: int = 0
    n_classes: int = 0

    def to_record(self) -> dict[str, str | int]:
        """The record's fields by their wire names."""
        return {"site": self.site, "model-version": self.model_version,
                "n-cases": int(self.n_cases), "n-bins": int(self.n_bins),
                "n-classes": int(self.n_classes)}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> SiteMeta:
        """Parse a ``meta`` record; :class:`PayloadRejected` when a field is missing or bad."""
        try:
            meta = cls(site=str(record["site"]), model_version=str(record["model-version"]),
                       n_cases=int(scalar(record["n-cases"])),
                       n_bins=int(scalar(record.get("n-bins", 0))),
                       n_classes=int(scalar(record.get("n-classes", 0))))
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadRejected(f"the meta record is incomplete ({exc})") from exc
        return meta


def check_meta(meta: SiteMeta, *, model_version: str, n_bins: int | None = None,
               n_classes: int | None = None, max_cases: int = DEFAULT_MAX_CASES) -> None:
    """Raise :class:`PayloadRejected` when the meta record does not fit the request."""
    if meta.model_version != model_version:
        raise PayloadRejected(
            f"it evaluated model version {meta.model_version!r}, not {model_version!r}"
        )
    if not 0 < meta.n_cases <= max_cases:
        raise PayloadRejected(f"n-cases {meta.n_cases} is outside 1..{max_cases}")
    if n_bins is not None and meta.n_bins != n_bins:
        raise PayloadRejected(f"n-bins {meta.n_bins} differs from the requested {n_bins}")
    if n_classes is not None and meta.n_classes != n_classes:
        raise PayloadRejected(f"n-classes {meta.n_classes} differs from the model's {n_classes}")


def check_array(name: str, array: np.ndarray, shape: tuple[int, ...], *,
                integer: bool = False, nonnegative: bool = True) -> np.ndarray:
    """Check one received array: numeric dtype, exact shape, finite, sign, integrality.

    ``array`` must have exactly the shape ``shape`` (array of shape (*shape)); it is
    returned as a numpy array of that shape.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise PayloadRejected(f"{name} has non-numeric dtype {array.dtype}")
    if tuple(array.shape) != tuple(shape):
        raise PayloadRejected(f"{name} has shape {tuple(array.shape)}, expected {tuple(shape)}")
    values = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        raise PayloadRejected(f"{name} holds NaN or infinite values")
    if nonnegative and np.any(values < 0):
        raise PayloadRejected(f"{name} holds negative values")
    if integer and np.any(values != np.round(values)):
        raise PayloadRejected(f"{name} holds non-integer counts")
    return array


def check_nll(arrays: Mapping[str, np.ndarray], n_temperatures: int, max_voxels: int
              ) -> tuple[np.ndarray, int]:
    """Validate a ``query.calibseg_nll`` reply; return ``(sums, count)``.

    ``sums`` is an array of shape (G,), one NLL sum per grid temperature; ``count`` the
    number of voxels summed.
    """
    if set(arrays) != {"sums", "count"}:
        raise PayloadRejected(f"nll record holds {sorted(arrays)}, expected ['count', 'sums']")
    sums = check_array("nll.sums", arrays["sums"], (n_temperatures,)).astype(np.float64)
    count = check_array("nll.count", arrays["count"], (1,), integer=True)
    n = int(count[0])
    if not 0 < n <= max_voxels:
        raise PayloadRejected(f"nll.count {n} is outside 1..{max_voxels}")
    return sums, n
