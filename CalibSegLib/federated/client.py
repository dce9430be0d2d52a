"""The site side: a Flower ``ClientApp`` answering statistics, NLL and training requests.

The site reads its cohort from its node config (:class:`~CalibSegLib.federated.sites.SiteSpec`),
rebuilds the model the server sent, computes locally and replies with bounded
records only. The same ``ClientApp`` runs in the in-process engine, in Flower's
simulation runtime and on a real SuperNode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import protocol
from CalibSegLib.federated.reliability import encode_stats
from CalibSegLib.federated.site import local_finetune, site_nll, site_statistics
from CalibSegLib.federated.sites import SiteSpec, load_cohort
from CalibSegLib.federated.transport import model_from_records

LOG = logging.getLogger("CalibSegLib.federated")


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v))
                        for k, v in arrays.items()})


#: Site specs by partition id, for Flower's simulation runtime (its nodes carry only
#: ``partition-id`` in their node config).
_PARTITIONS: list[SiteSpec] = []


def _site_spec(context: Context) -> SiteSpec:
    config = context.node_config
    if "site" not in config and "partition-id" in config and _PARTITIONS:
        return _PARTITIONS[int(config["partition-id"])]
    return SiteSpec.from_node_config(config)


def _site_and_cases(message: Message, context: Context, model):
    spec = _site_spec(context)
    spacing = model.card.spacing_mm
    if spec.folder is None and spec.resolution_mm is not None and \
            float(spec.resolution_mm) != float(max(spacing)):
        LOG.warning("site %s: sample cohort on a %g mm grid while model %s works at %s mm",
                    spec.name, spec.resolution_mm, model.name, "x".join(f"{v:g}" for v in spacing))
    cases = load_cohort(spec, model_spacing_mm=spacing)
    config = message.content.config_records["config"]
    max_cases = int(protocol.scalar(config.get("max-cases", protocol.DEFAULT_MAX_CASES)))
    if len(cases) > max_cases:
        raise CalibSegError(
            f"Site {spec.name} holds {len(cases)} cases; the server accepts at most {max_cases} "
            "per round. Split the cohort or raise --max-cases."
        )
    return spec, cases


def handle_stats(message: Message, context: Context) -> Message:
    """Reliability statistics of the sent model on this site's cohort."""
    config = message.content.config_records["config"]
    model = model_from_records(str(message.content["model"]["card"]),
                               message.content.array_records["weights"])
    spec, cases = _site_and_cases(message, context, model)
    n_bins = int(protocol.scalar(config["n-bins"]))
    stats = site_statistics(model, cases, spec.name, n_bins)
    meta = protocol.SiteMeta(spec.name, model.version, len(cases), n_bins, model.num_classes)
    return Message(RecordDict({"stats": _array_record(encode_stats(stats)),
                               "meta": ConfigRecord(dict(meta.to_record()))}), reply_to=message)


def handle_nll(message: Message, context: Context) -> Message:
    """NLL sums of the sent model over the server's temperature grid."""
    model = model_from_records(str(message.content["model"]["card"]),
                               message.content.array_records["weights"])
    spec, cases = _site_and_cases(message, context, model)
    temperatures = message.content.config_records["config"]["temperatures"]
    if not isinstance(temperatures, list):
        raise TypeError(f"the temperature grid is a {type(temperatures).__name__}, not a list")
    grid = [float(t) for t in temperatures]
    sums, count = site_nll(model, cases, grid)
    meta = protocol.SiteMeta(spec.name, model.version, len(cases), 0, model.num_classes)
    arrays = {"sums": sums.astype(np.float64), "count": np.array([count], dtype=np.int64)}
    return Message(RecordDict({"nll": _array_record(arrays),
                               "meta": ConfigRecord(dict(meta.to_record()))}), reply_to=message)


def handle_train(message: Message, context: Context) -> Message:
    """A few local steps from the global weights; reply with the new weights (FedAvg)."""
    config = message.content.config_records["config"]
    model = model_from_records(str(message.content["model"]["card"]),
                               message.content.array_records["arrays"])
    spec, cases = _site_and_cases(message, context, model)

    def setting(key: str, default: float) -> int | float | str:
        return protocol.scalar(config.get(key, default))

    state, info = local_finetune(
        model, cases, steps=int(setting("local-steps", 2)), lr=float(setting("lr", 1e-3)),
        calibration_weight=float(setting("calibration-weight", 1.0)),
        n_bins=int(setting("n-bins", 20)),
        seed=int(setting("seed", 0)) + 1000 * int(setting("server-round", 0)),
    )
    meta = protocol.SiteMeta(spec.name, model.version, len(cases), 0, model.num_classes)
    metrics = MetricRecord({"num-examples": len(cases), "loss": float(info["loss"]),
                            "voxels": int(info["voxels"])})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics,
                               "meta": ConfigRecord(dict(meta.to_record()))}), reply_to=message)


def build_client_app(partitions: list[SiteSpec] | None = None) -> ClientApp:
    """A ClientApp with the three CalibSeg handlers registered.

    ``partitions`` maps Flower simulation partition ids to sites (simulation only).
    """
    handlers: tuple[Callable[[Message, Context], Message], ...] = (
        handle_stats, handle_nll, handle_train)
    if partitions is not None:
        _set_partitions(partitions)
        handlers = tuple(_with_partitions(h, list(partitions)) for h in handlers)
    app = ClientApp()
    app.query("calibseg_stats")(handlers[0])
    app.query("calibseg_nll")(handlers[1])
    app.train()(handlers[2])
    return app


def _with_partitions(handler: Callable[[Message, Context], Message],
                     partitions: list[SiteSpec]) -> Callable[[Message, Context], Message]:
    """``handler`` that first sets the partition table of the process it runs in.

    Ray runs the ClientApp in worker processes, which receive the app pickled; the
    table travels inside this closure, not in the driver's module state.
    """
    def handle(message: Message, context: Context) -> Message:
        _set_partitions(partitions)
        return handler(message, context)

    return handle


def _set_partitions(partitions: list[SiteSpec]) -> None:
    # a module function: pickled by reference, so it sets this module's table in a worker
    _PARTITIONS[:] = partitions
