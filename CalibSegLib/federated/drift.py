"""When should a site's model be updated? Flagging sites whose calibration departs from the rest.

The rule
--------
For each site *s* with cases :math:`S` and the other sites' cases :math:`R`:

1. ``gap = |ACE(S) - ACE(R)|`` — ACE of the site's pooled statistics against ACE of
   the pooled statistics of every *other* site (leave-site-out, so a large site
   cannot hide in a pool it dominates).
2. When the site has at least ``min_cases`` cases and the others at least 2, a
   case-level bootstrap: draw ``|S|`` cases with replacement from :math:`R`
   ``n_boot`` times; ``p`` is the fraction of draws whose ACE is at least as far
   from ``ACE(R)`` as ``ACE(S)`` is (add-one smoothed). Cases, not voxels, are
   the unit: voxels of one scan are not independent.
3. The site is **flagged** when ``gap > threshold`` and, where the test could be
   run, ``p < alpha``. With too few cases the threshold alone decides and the
   reason says so.

A flagged site is where recalibration (a new temperature) or a fine-tuning round
is worth running; the reason line says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

S = TypeVar("S")


@dataclass(frozen=True)
class DriftFlag:
    """The verdict for one site."""

    site: str
    flagged: bool
    site_ace: float
    rest_ace: float
    gap: float
    p_value: float | None
    n_cases: int
    reason: str

    def to_dict(self) -> dict:
        """The flag as a JSON-ready dict."""
        return asdict(self)


def calibration_drift(per_site: Mapping[str, Sequence[S]], ace: Callable[[Sequence[S]], float],
                      *, threshold: float = 0.05, alpha: float = 0.05, n_boot: int = 200,
                      min_cases: int = 3, seed: int = 0) -> list[DriftFlag]:
    """Apply the rule above to every site.

    Parameters
    ----------
    per_site
        Site name -> that site's per-case statistics (any objects ``ace`` accepts).
    ace
        ACE of the merged statistics of a list of cases.
    threshold, alpha, n_boot, min_cases, seed
        See the module docstring; ``seed`` makes the bootstrap reproducible.
    """
    flags = []
    names = sorted(per_site)
    for k, name in enumerate(names):
        own = list(per_site[name])
        rest = [c for other in names if other != name for c in per_site[other]]
        if not own or not rest:
            flags.append(DriftFlag(name, False, float("nan"), float("nan"), 0.0, None, len(own),
                                   "not compared: needs cases at this site and at another"))
            continue
        site_ace, rest_ace = float(ace(own)), float(ace(rest))
        gap = abs(site_ace - rest_ace)
        p_value = None
        if len(own) >= min_cases and len(rest) >= 2 and n_boot > 0:
            rng = np.random.default_rng([seed, k])
            null = np.array([
                abs(float(ace([rest[i] for i in rng.integers(0, len(rest), len(own))])) - rest_ace)
                for _ in range(n_boot)
            ])
            p_value = float((1 + np.sum(null >= gap)) / (n_boot + 1))
        over = gap > threshold
        if p_value is None:
            flagged = over
            test = f"too few cases for the bootstrap ({len(own)} < {min_cases}), threshold only"
        else:
            flagged = over and p_value < alpha
            test = f"bootstrap p={p_value:.3f} over {len(own)} cases (alpha {alpha:g})"
        verdict = "flagged" if flagged else "consistent"
        reason = (f"{verdict}: ACE {site_ace:.4f} vs {rest_ace:.4f} at the other sites, gap "
                  f"{gap:.4f} {'>' if over else '<='} {threshold:g}; {test}")
        flags.append(DriftFlag(name, bool(flagged), site_ace, rest_ace, gap, p_value, len(own),
                               reason))
    return flags
