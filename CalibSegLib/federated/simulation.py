"""Running a federation of N sites on one machine (tests, demos, the ``calibseg federated`` CLI).

Engines
-------
``"inprocess"`` (default)
    :class:`~CalibSegLib.federated.loopback.LoopbackGrid`: the real ServerApp and
    ClientApp exchanging real Flower messages (protobuf round trip) in this
    process; deterministic, starts instantly, supports fault injection.
``"ray"``
    Flower's simulation runtime (``flwr.simulation.run_simulation``, Ray backend):
    one Ray actor per concurrently running ClientApp. Slower to start (about
    10 s) and heavier; useful to check an app before deployment.
Real sites use Flower's deployment engine (SuperLink + one SuperNode per site);
see ``docs/federated.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from flwr.app import Context, RecordDict
from flwr.serverapp import Grid, ServerApp

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated.client import build_client_app
from CalibSegLib.federated.loopback import SERVER_NODE_ID, Fault, LoopbackGrid
from CalibSegLib.federated.sites import SiteSpec

R = TypeVar("R")
ENGINES = ("inprocess", "ray")


def run_federation(task: Callable[[Grid], R], sites: Sequence[SiteSpec], *,
                   engine: str = "inprocess", faults: Mapping[str, Fault] | None = None,
                   ) -> tuple[R, Grid | None]:
    """Run ``task(grid)`` as the main function of a ServerApp over the given sites.

    Returns the task's result and, for the in-process engine, the grid (whose
    ``received`` list holds every reply exactly as the server got it).
    """
    if engine not in ENGINES:
        raise CalibSegError(f"Unknown engine {engine!r}; use one of {', '.join(ENGINES)}.")
    if not sites:
        raise CalibSegError("A federation needs at least one site.")
    results: list[R] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        results.append(task(grid))

    if engine == "inprocess":
        grid = LoopbackGrid(build_client_app(), [s.node_config() for s in sites],
                            faults=dict(faults or {}))
        context = Context(run_id=grid.run_id, node_id=SERVER_NODE_ID, node_config={},
                          state=RecordDict(), run_config={})
        server_app(grid, context)
        return results[0], grid
    if faults:
        raise CalibSegError("Fault injection needs the in-process engine.")
    from flwr.simulation import run_simulation

    run_simulation(server_app=server_app, client_app=build_client_app(list(sites)),
                   num_supernodes=len(sites),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    if not results:
        raise CalibSegError("The Flower simulation ended without a result; see its log above.")
    return results[0], None
