"""A temperature change of one shown model: a quick preview first, the whole volume after.

The preview is bounded by what is on screen, not by the volume: the planes the slice
views show are recomputed from the stored prediction (``Prediction.maps`` of those
planes), and the reliability diagram is estimated from an even grid sample of at most
:data:`SAMPLE_VOXELS` voxels (whole axial planes spaced along z, strided in-plane, so a
memory-mapped prediction reads few pages). :class:`VolumeRefresh` then computes the
whole volume's maps and the exact statistics at that temperature, in a worker thread
for large volumes; a newer change cancels it (``cancel`` is checked between chunks of
the library's work) and the main thread shows its result when it ends
(:meth:`CalibSegLogic.pollRefresh`). Nothing here touches MRML.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from CalibSegLib.calibration import ReliabilityStats
from CalibSegLib.errors import Cancelled
from CalibSegLib.inference import (
    Prediction,
    apply_temperature,
    stats_from_topk,
)
from CalibSegLib.inference.prediction import probability_maps_array
from CalibSegLib.progress import check_cancel, report

PREVIEW, FULL = "preview", "full"
#: What the panel and the browser app say they show.
SHOWING = {PREVIEW: "preview: visible slices", FULL: "full volume"}
#: Most voxels of the sample the preview's statistics are estimated from.
SAMPLE_VOXELS = 1 << 16
#: Most axial planes of that sample.
SAMPLE_PLANES = 16
#: Volumes of at least this many voxels are refreshed in a worker thread.
BACKGROUND_VOXELS = 1 << 22


def sampleRegion(shape, maxVoxels: int = SAMPLE_VOXELS) -> tuple[slice, slice, slice]:
    """Strided slices of ``(Z, Y, X)`` picking an even grid of at most ``maxVoxels`` voxels."""
    z, y, x = (int(s) for s in shape)
    stepZ = max(1, math.ceil(z / SAMPLE_PLANES))
    planes = len(range(stepZ // 2, z, stepZ))
    step = max(1, math.floor(math.sqrt(y * x * planes / max(int(maxVoxels), 1))))
    while planes * len(range(step // 2, y, step)) * len(range(step // 2, x, step)) > maxVoxels:
        step += 1
    return (slice(stepZ // 2, None, stepZ), slice(step // 2, None, step),
            slice(step // 2, None, step))


def regionStats(prediction: Prediction, reference: np.ndarray, temperature: float, region,
                nBins: int) -> ReliabilityStats:
    """Statistics of ``prediction`` at ``temperature`` over ``region`` of the volume.

    Only the region is decoded (its top-k form, or its logits), so the cost follows the
    region's size; on a sample it is an estimate of the whole volume's statistics.
    """
    target = np.ascontiguousarray(np.asarray(reference)[region])
    if prediction.is_compact:
        part = prediction.scores.subvolume(region)
        return stats_from_topk(part, target, nBins, temperature=temperature)
    probs = probability_maps_array(prediction.logits[(slice(None), *region)], temperature)[0]
    return ReliabilityStats.from_probs(probs, target, n_bins=nBins)


class VolumeRefresh:
    """One model's whole volume at one temperature: maps, and statistics against the reference
    (only the statistics when ``prediction`` is already at that temperature).

    :meth:`start` runs :meth:`run` in a worker thread (:meth:`run` alone runs it here).
    States: ``"ready"`` -> ``"running"`` -> ``"finished"`` | ``"failed"`` | ``"cancelled"``;
    on ``"finished"``, ``current`` is the prediction at the temperature and ``stats``
    its statistics (None without a reference). Nothing of a cancelled refresh is kept.
    """

    def __init__(self, slot: str, prediction: Prediction, temperature: float,
                 reference: np.ndarray | None, nBins: int) -> None:
        self.slot = slot
        self.prediction = prediction
        self.temperature = float(temperature)
        self.reference = reference
        self.nBins = int(nBins)
        self.state = "ready"
        self.fraction = 0.0
        self.error = ""
        self.current: Prediction | None = None
        self.stats: ReliabilityStats | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed", "cancelled")

    def _progress(self, fraction: float, message: str = "") -> None:
        self.fraction = float(fraction)

    def run(self) -> None:
        """Compute the maps (and statistics) at the temperature; checks ``cancel`` per chunk."""
        self.state = "running"
        cancel = self._cancel.is_set
        share = 0.5 if self.reference is not None else 1.0
        try:
            check_cancel(cancel, "temperature change")
            if self.temperature == float(self.prediction.temperature):
                current = self.prediction  # its maps are at that temperature: statistics only
            else:
                current = apply_temperature(
                    self.prediction, self.temperature,
                    progress=lambda f, m="": self._progress(share * f, m), cancel=cancel)
            stats = None
            if self.reference is not None:
                check_cancel(cancel, "temperature change")
                stats = current.reliability_stats(
                    self.reference, self.nBins, cancel=cancel,
                    progress=lambda f, m="": self._progress(share + share * f, m))
            check_cancel(cancel, "temperature change")
        except Cancelled:
            self.state = "cancelled"
            return
        except Exception as exc:  # noqa: BLE001  (shown on the main thread as one message)
            self.state, self.error = "failed", f"Could not change the temperature: {exc}"
            return
        self.current, self.stats = current, stats
        report(self._progress, 1.0, "done")
        self.state = "finished"

    def start(self) -> VolumeRefresh:
        """Run in a worker thread (daemon: it never keeps the application alive)."""
        self.state = "running"
        self._thread = threading.Thread(target=self.run, name=f"calibseg-temperature-{self.slot}",
                                        daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop at the next chunk; a refresh not started yet never runs."""
        self._cancel.set()
        if self.state == "ready":
            self.state = "cancelled"

    def wait(self, timeout: float | None = None) -> str:
        """Wait for the worker thread (if any) to end; return the state."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state
