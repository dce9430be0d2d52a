"""The sites of a federation: each site's cohort, its name in Flower's node config, loading it.

A site holds either a cohort as :func:`CalibSegLib.cohort.read_cohort` reads it (a folder
of ``<id>_image.<ext>`` / ``<id>_labels.<ext>`` pairs or a CSV) or, for demos and tests,
deterministic shifted variants of an embedded sample case with site-specific seeds.
Images never leave the site; the cohort is only ever read by the site's ClientApp.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from CalibSegLib.cohort import read_cohort
from CalibSegLib.data.seeds import parse_seeds
from CalibSegLib.errors import CalibSegError
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report
from CalibSegLib.training.data import sample_cases


def check_site_name(name: str) -> str:
    """``name`` when it is usable as a site name (reports, node names, key files)."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise CalibSegError(f"Site name {name!r} is not usable; use letters, digits, '-' or '_'.")
    return name


@dataclass(frozen=True)
class SiteSpec:
    """Where one site's cohort comes from.

    Attributes
    ----------
    name
        The site's name; it appears in reports (no file names or case ids do).
    folder
        A cohort folder of image/label pairs or a cohort CSV, or None for a sample cohort.
    sample, seeds, resolution_mm
        For a sample cohort: the embedded case, one ``shift_seed`` per case (0 means
        the unshifted case) and the grid resolution (None: the spacing of the model
        being evaluated, see :func:`sample_resolution`).
    """

    name: str
    folder: str | None = None
    sample: str = "mni-t1"
    seeds: tuple[int, ...] = ()
    resolution_mm: float | None = None

    def __post_init__(self) -> None:
        check_site_name(self.name)
        if self.folder is None and not self.seeds:
            raise CalibSegError(f"Site {self.name}: give a cohort folder or sample seeds.")

    def node_config(self) -> dict[str, str | float]:
        """The Flower node config that describes this site (``--node-config`` values)."""
        config: dict[str, str | float] = {"site": self.name}
        if self.folder is not None:
            config["cohort"] = self.folder
        else:
            config["sample"] = self.sample
            config["seeds"] = ",".join(str(int(s)) for s in self.seeds)
            if self.resolution_mm is not None:
                config["resolution-mm"] = float(self.resolution_mm)
        return config

    @classmethod
    def from_node_config(cls, config: Mapping[str, object]) -> SiteSpec:
        """Inverse of :meth:`node_config`; raises :class:`CalibSegError` when incomplete."""
        if "site" not in config:
            raise CalibSegError(
                "This SuperNode has no site name; start it with "
                "--node-config \"site='<name>' cohort='<folder>'\"."
            )
        if "cohort" in config:
            return cls(name=str(config["site"]), folder=str(config["cohort"]))
        if "seeds" in config:
            return cls(
                name=str(config["site"]), sample=str(config.get("sample", "mni-t1")),
                seeds=tuple(parse_seeds(str(config["seeds"]))),
                resolution_mm=(float(config["resolution-mm"])  # type: ignore[arg-type]
                               if "resolution-mm" in config else None),
            )
        raise CalibSegError(
            f"Site {config['site']}: the node config names no cohort; add cohort='<folder>' "
            "(or seeds='1,2' for a sample cohort)."
        )


def simulated_sites(n_sites: int, cases_per_site: int = 1, *, resolution_mm: float | None = None,
                    sample: str = "mni-t1", base_seed: int = 100) -> list[SiteSpec]:
    """``n_sites`` sample cohorts with distinct site-specific shift seeds.

    Site ``k`` (named ``site-1`` ...) holds the variants with seeds
    ``base_seed + 10 * k + j`` for ``j < cases_per_site``, so every site sees a
    different acquisition shift. ``resolution_mm`` None: the evaluated model's spacing.
    """
    if n_sites < 1 or cases_per_site < 1:
        raise CalibSegError("Use at least one site and one case per site.")
    if cases_per_site > 10:
        raise CalibSegError("At most 10 simulated cases per site.")
    return [
        SiteSpec(name=f"site-{k + 1}", sample=sample, resolution_mm=resolution_mm,
                 seeds=tuple(base_seed + 10 * k + j for j in range(cases_per_site)))
        for k in range(n_sites)
    ]


@functools.lru_cache(maxsize=64)
def _sample_variant(sample: str, seed: int, resolution_mm: float):
    (case,) = sample_cases(sample, seeds=[seed], resolution_mm=resolution_mm)
    return case


def sample_resolution(spec: SiteSpec, model_spacing_mm: Sequence[float] | None) -> float:
    """The grid of a sample cohort: its own resolution, else the model's (coarsest axis)."""
    if spec.resolution_mm is not None:
        return float(spec.resolution_mm)
    if model_spacing_mm:
        return float(max(model_spacing_mm))
    raise CalibSegError(f"Site {spec.name}: give resolution-mm for its sample cohort.")


def load_cohort(spec: SiteSpec, progress: ProgressCallback | None = None,
                cancel: CancelCallback | None = None,
                model_spacing_mm: Sequence[float] | None = None) -> list:
    """The site's cases as :class:`~CalibSegLib.training.data.TrainingCase` objects.

    Sample variants are generated once per process and shared (not to be modified), on the
    grid of :func:`sample_resolution`.
    """
    if spec.folder is not None:
        return read_cohort(spec.folder)
    cases = []
    for n, seed in enumerate(spec.seeds):
        check_cancel(cancel, f"loading of the {spec.name} cohort")
        cases.append(_sample_variant(spec.sample, int(seed),
                                     sample_resolution(spec, model_spacing_mm)))
        report(progress, (n + 1) / len(spec.seeds), f"{spec.name}: case {n + 1}")
    return cases


def parse_site_folders(items: Sequence[str]) -> list[SiteSpec]:
    """``NAME=FOLDER`` items (command line) to site specs."""
    specs = []
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise CalibSegError(f"--site {item!r}: write it as NAME=FOLDER.")
        specs.append(SiteSpec(name=name.strip(), folder=folder.strip()))
    if len({s.name for s in specs}) != len(specs):
        raise CalibSegError("Two --site items share a name; give every site its own name.")
    return specs
