"""A minimal stand-in for ``CalibSegLib.calibration`` used only while that package is absent.

Class-wise reliability bins per image (count, confidence sum, correct sum), exact
merge, ACE/ECE/MCE, NLL over a temperature grid. Tests switch to the real package
automatically once it is installed.
"""

from __future__ import annotations

import sys
import types

import numpy as np


class ReliabilityStats:
    def __init__(self, ids, count, conf, correct):
        self.ids, self.count, self.conf, self.correct = list(ids), count, conf, correct

    @classmethod
    def from_probs(cls, probs, target, n_bins=20, *, image_id="image"):
        c = probs.shape[0]
        p = probs.reshape(c, -1).astype(np.float64)
        t = np.asarray(target).reshape(-1)
        bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
        count = np.zeros((1, c, n_bins), np.int64)
        conf = np.zeros((1, c, n_bins))
        correct = np.zeros((1, c, n_bins))
        for k in range(c):
            count[0, k] = np.bincount(bins[k], minlength=n_bins)
            conf[0, k] = np.bincount(bins[k], weights=p[k], minlength=n_bins)
            correct[0, k] = np.bincount(bins[k], weights=(t == k).astype(float), minlength=n_bins)
        return cls([image_id], count, conf, correct)

    def merge(self, other):
        ids, count, conf, correct = (list(self.ids), self.count.copy(), self.conf.copy(),
                                     self.correct.copy())
        for i, name in enumerate(other.ids):
            if name in ids:
                j = ids.index(name)
                count[j] += other.count[i]
                conf[j] += other.conf[i]
                correct[j] += other.correct[i]
            else:
                ids.append(name)
                count = np.concatenate([count, other.count[i:i + 1]])
                conf = np.concatenate([conf, other.conf[i:i + 1]])
                correct = np.concatenate([correct, other.correct[i:i + 1]])
        return ReliabilityStats(ids, count, conf, correct)

    def to_arrays(self):
        return {"image_ids": np.array(self.ids), "count": self.count, "conf_sum": self.conf,
                "correct_sum": self.correct}

    @classmethod
    def from_arrays(cls, d):
        return cls([str(x) for x in d["image_ids"]], np.asarray(d["count"]),
                   np.asarray(d["conf_sum"], float), np.asarray(d["correct_sum"], float))

    def metrics(self, reduction="macro"):
        n = self.count.sum(0).astype(float)
        gap = np.abs(self.correct.sum(0) - self.conf.sum(0)) / np.maximum(n, 1)
        filled = n > 0
        ace = float(np.mean([gap[k][filled[k]].mean() for k in range(n.shape[0])]))
        ece = float(np.mean([(gap[k] * n[k]).sum() / n[k].sum() for k in range(n.shape[0])]))
        return {"ace": ace, "ece": ece, "mce": float(gap[filled].max())}


def nll_over_temperature_grid(logits, target, grid):
    z = np.asarray(logits, np.float64).reshape(logits.shape[0], -1)
    t = np.asarray(target).reshape(-1).astype(np.int64)
    sums = []
    for temp in np.asarray(grid, float):
        s = z / temp
        m = s.max(0)
        lse = m + np.log(np.exp(s - m).sum(0))
        sums.append(float((lse - s[t, np.arange(t.size)]).sum()))
    return np.array(sums), int(t.size)


def fit_temperature_from_grid(sums, grid):
    return float(np.asarray(grid)[int(np.argmin(sums))])


def install() -> bool:
    """Install the stand-in as ``CalibSegLib.calibration`` when the real one is missing."""
    try:
        import CalibSegLib.calibration  # noqa: F401
        return False
    except ImportError:
        module = types.ModuleType("CalibSegLib.calibration")
        module.ReliabilityStats = ReliabilityStats
        module.nll_over_temperature_grid = nll_over_temperature_grid
        module.fit_temperature_from_grid = fit_temperature_from_grid
        sys.modules["CalibSegLib.calibration"] = module
        return True
