"""Cost of one federated evaluation round as the number of sites grows (Flower's Ray simulation).

Each federation of 3, 10 and 50 simulated sites (``--quick``: 3) runs one evaluation
round of a tiny untrained model with Flower's simulation runtime
(:func:`CalibSegLib.federated.simulation.run_federation`, ``engine="ray"``). Every site
holds one small case: a shifted variant of the sample case on the model's own 4 mm grid.

Reported per federation size:

- ``round``: seconds of the evaluation round inside the ServerApp (request to every
  site, their replies, checks, pooling);
- ``total``: seconds of the whole simulation, Ray's start and stop included;
- ``bytes``: what the sites sent in the round, the sum of the replies' sizes in Flower's
  wire encoding as the server received them (:class:`~CalibSegLib.federated.server.SiteOutcome`
  ``nbytes``), the largest site reply and the spread of the replies' sizes.

``python bench/bench_federation.py [--quick]`` prints a table; :func:`run` returns rows
``{name, value, target, unit}`` for a suite runner.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

N_SITES_FULL = (3, 10, 50)
N_SITES_QUICK = (3,)
N_BINS = 20


def _one_round(model, n_sites: int) -> dict:
    """Run one evaluation round over ``n_sites`` Ray-simulated sites; return its costs."""
    from CalibSegLib.federated import server, simulated_sites
    from CalibSegLib.federated.simulation import run_federation

    round_seconds: list[float] = []

    def task(grid):
        start = time.perf_counter()
        result = server.evaluation_round(grid, model, n_bins=N_BINS, min_sites=n_sites)
        round_seconds.append(time.perf_counter() - start)
        return result

    start = time.perf_counter()
    result, _ = run_federation(task, simulated_sites(n_sites), engine="ray")
    total = time.perf_counter() - start
    ok = [o for o in result.outcomes if o.status == "ok"]
    if len(ok) != n_sites:
        raise RuntimeError(f"{n_sites} sites: only {len(ok)} replied: {result.outcomes}")
    sizes = [o.nbytes for o in ok]
    return {"round": round_seconds[0], "total": total, "bytes": sum(sizes),
            "site_bytes_max": max(sizes), "site_bytes_min": min(sizes)}


def run(quick: bool = False) -> list[dict]:
    """Measure and return rows ``{name, value, target, unit}``."""
    from CalibSegLib.models import load_model
    from CalibSegLib.models.testing import tiny_model

    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="calibseg-bench-fed-") as tmp:
        model = load_model(tiny_model(os.path.join(tmp, "tiny"), head="linear", seed=0))
        costs = {n: _one_round(model, n) for n in (N_SITES_QUICK if quick else N_SITES_FULL)}
    for n, cost in costs.items():
        rows += [
            {"name": f"{n} sites: evaluation round", "value": cost["round"], "target": None,
             "unit": "s"},
            {"name": f"{n} sites: simulation incl. Ray start/stop", "value": cost["total"],
             "target": None, "unit": "s"},
            {"name": f"{n} sites: bytes sent by the sites in the round", "value": cost["bytes"],
             "target": None, "unit": "B"},
            {"name": f"{n} sites: bytes of the largest site reply", "value": cost["site_bytes_max"],
             "target": None, "unit": "B"},
            # bounded statistics: the replies differ only by the site's name in the meta record
            {"name": f"{n} sites: largest - smallest site reply",
             "value": cost["site_bytes_max"] - cost["site_bytes_min"], "target": "<= 8",
             "unit": "B"},
        ]
    smallest, largest = min(costs), max(costs)
    if largest > smallest:
        grow = largest / smallest
        rows += [
            {"name": f"round time {largest} / {smallest} sites (sites x{grow:g})",
             "value": costs[largest]["round"] / costs[smallest]["round"], "target": None,
             "unit": "ratio"},
            # the sites' bytes grow exactly with the number of sites
            {"name": f"bytes {largest} / {smallest} sites / (sites x{grow:g})",
             "value": costs[largest]["bytes"] / costs[smallest]["bytes"] / grow,
             "target": "0.99-1.01", "unit": "ratio"},
        ]
    return rows


def _format(rows: list[dict]) -> str:
    lines = [f"{'benchmark':<52} {'value':>12} {'unit':<6} target"]
    for row in rows:
        lines.append(f"{row['name']:<52} {row['value']:>12.4g} {row['unit']:<6} "
                     f"{row['target'] or ''}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 sites only")
    args = parser.parse_args()
    print(_format(run(args.quick)))


if __name__ == "__main__":
    main()
