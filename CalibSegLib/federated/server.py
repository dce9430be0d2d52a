"""The server side: evaluation, temperature and fine-tuning rounds over a Flower grid.

Each function takes a Flower :class:`~flwr.serverapp.Grid` (the in-process
:class:`~CalibSegLib.federated.loopback.LoopbackGrid`, Flower's simulation
runtime or a real SuperLink) and a loaded model. Replies are checked
(:mod:`CalibSegLib.federated.protocol`) before anything is pooled; a site that
does not answer, answers with an error, or sends a payload that fails a check
is named in the round's outcomes with the reason, and the round goes on as long
as ``min_sites`` sites delivered valid results.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from CalibSegLib.calibration import fit_temperature_from_grid
from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import protocol
from CalibSegLib.federated import reliability as statistics
from CalibSegLib.federated.drift import calibration_drift
from CalibSegLib.federated.loopback import LoopbackGrid
from CalibSegLib.federated.protocol import PayloadRejected, SiteMeta
from CalibSegLib.federated.reliability import summary_metrics
from CalibSegLib.federated.transport import model_to_records, weights_to_state_dict
from CalibSegLib.models import Model
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report

LOG = logging.getLogger("CalibSegLib.federated")

#: Default temperature grid: 0.25 .. 4 on a log scale (61 values, includes 1.0).
DEFAULT_TEMPERATURES = tuple(float(t) for t in np.round(np.logspace(-2, 2, 61, base=2), 6))

#: What a round's ``parse`` makes of one valid reply.
Parsed = TypeVar("Parsed")


@dataclass
class SiteOutcome:
    """What happened to one site in one round."""

    site: str
    node_id: int
    status: str  #: "ok", "dropped" (no reply), "error", "rejected", "absent" (never connected)
    reason: str = ""
    n_cases: int = 0
    nbytes: int = 0  #: size of the site's reply as Flower encodes it on the wire

    def to_dict(self) -> dict:
        """The outcome as a JSON-ready dict."""
        return asdict(self)


# --- helpers shared by the rounds -------------------------------------------------------------

def site_names(grid: Grid) -> dict[int, str]:
    """Node id -> site name, from the grid (in-process) or the nodes' registered names."""
    names: dict[int, str] = dict(getattr(grid, "site_of", {}) or {})
    try:
        for info in grid.get_nodes():
            if getattr(info, "name", ""):
                names.setdefault(int(info.node_id), str(info.name))
    except Exception:  # older grids or SuperLinks without node names
        pass
    return names


def wait_for_sites(grid: Grid, min_sites: int, timeout: float,
                   cancel: CancelCallback | None = None, expected: Sequence[str] = (),
                   ) -> tuple[list[int], list[str]]:
    """Wait for the sites; return ``(connected node ids, expected sites that are missing)``.

    Waits until at least ``min_sites`` sites and every ``expected`` site (by name) are
    connected, at most ``timeout`` seconds. After the time-out the round goes on with
    the connected sites when they are at least ``min_sites``; otherwise it stops with
    an error naming the sites that did not connect. An in-process grid cannot gain
    sites, so too few fail at once.
    """
    if min_sites < 1:
        raise CalibSegError(f"The minimum number of sites must be at least 1, not {min_sites}.")
    end = time.monotonic() + float(timeout)
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        names = site_names(grid)
        connected = {names.get(n, f"node-{n}") for n in nodes}
        missing = [s for s in expected if s not in connected]
        if len(nodes) >= min_sites and not missing:
            return nodes, []
        check_cancel(cancel, "federated round")
        fixed = isinstance(grid, LoopbackGrid)
        if fixed or time.monotonic() > end:
            if len(nodes) >= min_sites:
                LOG.warning("site(s) %s did not connect within %g s; going on with %d site(s)",
                            ", ".join(missing), timeout, len(nodes))
                return nodes, missing
            absent = f" (not connected: {', '.join(missing)})" if missing else ""
            waited = "" if fixed else f" within {timeout:g} s"
            raise CalibSegError(
                f"Only {len(nodes)} site(s) connected{waited}; at least {min_sites} are "
                f"needed{absent}. Start the missing sites' SuperNodes or lower --min-sites."
            )
        LOG.info("waiting for sites: %d connected, %d needed%s", len(nodes), min_sites,
                 f", missing {', '.join(missing)}" if missing else "")
        time.sleep(1.0)


def wire_size(content: RecordDict) -> int:
    """Bytes of ``content`` in Flower's protobuf encoding (what a reply carries)."""
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(content).ByteSize())


def _check_min(outcomes: Sequence[SiteOutcome], min_sites: int, what: str) -> None:
    ok = [o for o in outcomes if o.status == "ok"]
    if len(ok) < min_sites:
        lines = "; ".join(f"{o.site}: {o.status} {o.reason}".strip() for o in outcomes)
        raise CalibSegError(
            f"The {what} round got valid results from {len(ok)} site(s), fewer than the "
            f"minimum {min_sites} ({lines}). Fix the failing sites or lower --min-sites."
        )


def query_round(grid: Grid, message_type: str, content: Callable[[], RecordDict],
                parse: Callable[[RecordDict, SiteMeta], Parsed], *, min_sites: int,
                timeout: float, group: str, cancel: CancelCallback | None = None,
                expected: Sequence[str] = (),
                ) -> tuple[dict[str, Parsed], list[SiteOutcome]]:
    """Send one request to every connected site; return parsed valid replies by site.

    ``parse(content, meta)`` turns a reply into the value kept for the pool and
    raises :class:`PayloadRejected` on any problem.
    """
    nodes, absent = wait_for_sites(grid, min_sites, timeout, cancel, expected)
    names = site_names(grid)
    messages = [Message(content(), node, message_type, group_id=group) for node in nodes]
    replies = {int(r.metadata.src_node_id): r
               for r in grid.send_and_receive(messages, timeout=timeout)}
    parsed: dict[str, Parsed] = {}
    outcomes = [SiteOutcome(name, 0, "absent", f"did not connect within {timeout:g} s")
                for name in absent]
    for node in nodes:
        name = names.get(node, f"node-{node}")
        reply = replies.get(node)
        if reply is None:
            outcomes.append(SiteOutcome(name, node, "dropped",
                                        f"no reply before the round closed ({timeout:g} s)"))
            LOG.warning("site %s dropped out of round %s", name, group)
            continue
        if reply.has_error():
            outcomes.append(SiteOutcome(name, node, "error", str(reply.error.reason)))
            LOG.warning("site %s failed in round %s: %s", name, group, reply.error.reason)
            continue
        try:
            meta = SiteMeta.from_record(reply.content.config_records["meta"]) if "meta" in \
                reply.content.config_records else None
            if meta is None:
                raise PayloadRejected("the reply has no meta record")
            if node in names and meta.site != names[node]:
                raise PayloadRejected(f"it calls itself {meta.site!r}")
            if meta.site in parsed:
                raise PayloadRejected(f"a second reply for site {meta.site!r}")
            parsed[meta.site] = parse(reply.content, meta)
            outcomes.append(SiteOutcome(meta.site, node, "ok", "", meta.n_cases,
                                        wire_size(reply.content)))
        except PayloadRejected as exc:
            outcomes.append(SiteOutcome(name, node, "rejected", str(exc)))
            LOG.warning("rejected the reply of site %s in round %s: %s", name, group, exc)
    return parsed, outcomes


def _model_content(model, config: Mapping[str, ConfigRecordValues]
                   ) -> Callable[[], RecordDict]:
    card, weights = model_to_records(model)

    def make() -> RecordDict:
        return RecordDict({"model": card, "weights": weights, "config": ConfigRecord(dict(config))})

    return make


# --- evaluation -------------------------------------------------------------------------------

@dataclass
class EvaluationResult:
    """A federated evaluation: per-site and pooled statistics, outcomes, drift flags."""

    model_name: str
    model_version: str
    class_names: tuple[str, ...]
    n_bins: int
    site_stats: dict[str, object]
    pooled: object
    outcomes: list[SiteOutcome]
    flags: list = field(default_factory=list)

    def site_metrics(self) -> dict[str, dict]:
        """Per site, computed from that site's merged statistics."""
        return {name: summary_metrics(s) for name, s in sorted(self.site_stats.items())}

    def pooled_metrics(self) -> dict:
        """Computed from the statistics merged over every site (the pooled diagram's numbers)."""
        return summary_metrics(self.pooled)

    def case_mean_metrics(self) -> dict:
        """Per case, then the mean over all cases of all sites (labelled as a mean)."""
        return summary_metrics(self.pooled, reduction="macro")


def evaluation_round(grid: Grid, model, *, n_bins: int = 20, min_sites: int = 1,
                     max_cases: int = protocol.DEFAULT_MAX_CASES, timeout: float = 3600.0,
                     drift_threshold: float = 0.05, drift_alpha: float = 0.05,
                     group: str = "evaluate", progress: ProgressCallback | None = None,
                     cancel: CancelCallback | None = None, expected: Sequence[str] = (),
                     ) -> EvaluationResult:
    """Collect, check and merge every site's reliability statistics of ``model``."""
    report(progress, 0.0, f"evaluation round: sending {model.name} {model.version} to sites")
    config: dict[str, ConfigRecordValues] = {"n-bins": int(n_bins), "max-cases": int(max_cases),
                                             "round": group}

    def parse(content: RecordDict, meta: SiteMeta):
        protocol.check_meta(meta, model_version=model.version, n_bins=n_bins,
                            n_classes=model.num_classes, max_cases=max_cases)
        if "stats" not in content.array_records:
            raise PayloadRejected("the reply has no stats record")
        stats = content.array_records["stats"]
        arrays = {k: stats[k].numpy() for k in stats}
        return statistics.decode_stats(arrays, site=meta.site, n_cases=meta.n_cases,
                                       n_classes=model.num_classes, n_bins=n_bins)

    parsed, outcomes = query_round(grid, protocol.STATS_TYPE, _model_content(model, config),
                                   parse, min_sites=min_sites, timeout=timeout, group=group,
                                   cancel=cancel, expected=expected)
    _check_min(outcomes, min_sites, "evaluation")
    report(progress, 0.8, f"merging statistics of {len(parsed)} site(s)")
    site_stats = dict(sorted(parsed.items()))
    pooled = statistics.merge_all(list(site_stats.values()))
    flags = calibration_drift({s: statistics.per_case(st) for s, st in site_stats.items()},
                              statistics.ace_of_cases, threshold=drift_threshold,
                              alpha=drift_alpha)
    report(progress, 1.0, "evaluation round done")
    return EvaluationResult(model.name, model.version, tuple(model.class_names), int(n_bins),
                            site_stats, pooled, outcomes, flags)


# --- temperature ------------------------------------------------------------------------------

@dataclass
class TemperatureResult:
    """A federated temperature fit on a grid."""

    temperature: float
    temperatures: tuple[float, ...]
    nll_sums: np.ndarray  #: pooled NLL sum per grid temperature
    voxel_count: int
    site_temperatures: dict[str, float]
    outcomes: list[SiteOutcome]

    def to_dict(self) -> dict:
        """The fit as a JSON-ready dict (mean NLL per grid temperature, outcomes)."""
        return {"temperature": self.temperature, "temperatures": list(self.temperatures),
                "mean_nll": (self.nll_sums / max(self.voxel_count, 1)).tolist(),
                "voxel_count": self.voxel_count, "site_temperatures": self.site_temperatures,
                "sites": [o.to_dict() for o in self.outcomes]}


def temperature_round(grid: Grid, model, *, temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
                      min_sites: int = 1, max_cases: int = protocol.DEFAULT_MAX_CASES,
                      max_voxels_per_case: int = 512**3, timeout: float = 3600.0,
                      group: str = "calibrate", cancel: CancelCallback | None = None,
                      expected: Sequence[str] = ()) -> TemperatureResult:
    """Fit the temperature on the union of the sites' cohorts, on ``temperatures``.

    Sites return NLL sums per grid temperature; the server adds them and picks
    the grid temperature with the smallest pooled NLL — exactly the choice a
    central fit on the pooled data over the same grid makes.
    """
    grid_t = tuple(float(t) for t in temperatures)
    if not grid_t or any(not np.isfinite(t) or t <= 0 for t in grid_t):
        raise CalibSegError("Temperatures must be positive finite numbers.")
    config: dict[str, ConfigRecordValues] = {"temperatures": list(grid_t),
                                             "max-cases": int(max_cases), "round": group}

    def parse(content: RecordDict, meta: SiteMeta):
        protocol.check_meta(meta, model_version=model.version, n_classes=model.num_classes,
                            max_cases=max_cases)
        if "nll" not in content.array_records:
            raise PayloadRejected("the reply has no nll record")
        nll = content.array_records["nll"]
        arrays = {k: nll[k].numpy() for k in nll}
        return protocol.check_nll(arrays, len(grid_t), meta.n_cases * max_voxels_per_case)

    parsed, outcomes = query_round(grid, protocol.NLL_TYPE, _model_content(model, config), parse,
                                   min_sites=min_sites, timeout=timeout, group=group,
                                   cancel=cancel, expected=expected)
    _check_min(outcomes, min_sites, "temperature")
    sums = np.zeros(len(grid_t), dtype=np.float64)
    count = 0
    site_t = {}
    for name in sorted(parsed):
        s, n = parsed[name]
        sums += s
        count += n
        site_t[name] = float(fit_temperature_from_grid(s, np.asarray(grid_t)))
    temperature = float(fit_temperature_from_grid(sums, np.asarray(grid_t)))
    return TemperatureResult(temperature, grid_t, sums, count, site_t, outcomes)


# --- fine-tuning ------------------------------------------------------------------------------

class CheckedFedAvg(FedAvg):
    """Flower's FedAvg that checks every site update before averaging.

    An update is used only when its tensors match the global model's names and
    shapes, are finite, and its ``num-examples`` is in ``1..max_cases``. Valid
    updates are averaged in site-name order (reproducible sums); the outcome of
    every sampled site is kept per round in :attr:`outcomes`.
    """

    def __init__(self, *, min_sites: int, max_cases: int, model_version: str,
                 names: Mapping[int, str], card: ConfigRecord) -> None:
        flower = logging.getLogger("flwr")
        level = flower.level
        flower.setLevel(logging.ERROR)  # its notice that evaluation is off: CalibSeg evaluates
        try:
            super().__init__(fraction_train=1.0, fraction_evaluate=0.0,
                             min_train_nodes=min_sites, min_evaluate_nodes=0,
                             min_available_nodes=min_sites)
        finally:
            flower.setLevel(level)
        self.min_sites = min_sites
        self.max_cases = max_cases
        self.model_version = model_version
        self.names = dict(names)
        self.outcomes: dict[int, list[SiteOutcome]] = {}
        self.train_metrics: dict[int, dict[str, dict]] = {}
        self._sent: list[int] = []
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._card = card

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's training messages, each carrying the model card beside its config."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:  # the card travels beside the config (not in the logged one)
            message.content["model"] = self._card
        self._sent = sorted(int(m.metadata.dst_node_id) for m in messages)
        self._shapes = {k: tuple(arrays[k].shape) for k in arrays}
        self.names.update(site_names(grid))
        return messages

    def _check(self, content: RecordDict) -> SiteMeta:
        meta = SiteMeta.from_record(content.config_records["meta"])
        protocol.check_meta(meta, model_version=self.model_version, max_cases=self.max_cases)
        record = content.array_records["arrays"]
        if set(record) != set(self._shapes):
            raise PayloadRejected("the update's tensor names differ from the global model's")
        for key in record:
            protocol.check_array(f"arrays.{key}", record[key].numpy(), self._shapes[key],
                                 nonnegative=False)
        n = content.metric_records["metrics"].get("num-examples")
        if not isinstance(n, int | float) or not 0 < n <= self.max_cases:
            raise PayloadRejected(f"num-examples {n!r} is outside 1..{self.max_cases}")
        if int(n) != meta.n_cases:
            raise PayloadRejected("num-examples differs from n-cases")
        return meta

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every sent site's update; average the valid ones in site-name order."""
        by_node = {int(r.metadata.src_node_id): r for r in replies}
        outcomes, valid = [], []
        for node in self._sent:
            name = self.names.get(node, f"node-{node}")
            reply = by_node.get(node)
            if reply is None:
                outcomes.append(SiteOutcome(name, node, "dropped", "no reply in this round"))
                LOG.warning("site %s dropped out of training round %d", name, server_round)
            elif reply.has_error():
                outcomes.append(SiteOutcome(name, node, "error", str(reply.error.reason)))
                LOG.warning("site %s failed in training round %d: %s", name, server_round,
                            reply.error.reason)
            else:
                try:
                    meta = self._check(reply.content)
                    if node in self.names and meta.site != self.names[node]:
                        raise PayloadRejected(f"it calls itself {meta.site!r}")
                    valid.append((meta.site, reply))
                    outcomes.append(SiteOutcome(meta.site, node, "ok", "", meta.n_cases))
                except (PayloadRejected, KeyError) as exc:
                    outcomes.append(SiteOutcome(name, node, "rejected", str(exc)))
                    LOG.warning("rejected the update of site %s in round %d: %s", name,
                                server_round, exc)
        self.outcomes[server_round] = outcomes
        _check_min(outcomes, self.min_sites, f"training (round {server_round})")
        self.train_metrics[server_round] = {
            site: {k: float(protocol.scalar(v))
                   for k, v in r.content.metric_records["metrics"].items()}
            for site, r in valid}
        ordered = [r for _, r in sorted(valid, key=lambda x: x[0])]
        return super().aggregate_train(server_round, ordered)


@dataclass
class FinetuneResult:
    """Fine-tuning rounds: the new model and what happened in each round."""

    model: object
    rounds: int
    outcomes: dict[int, list[SiteOutcome]]
    train_metrics: dict[int, dict[str, dict]]
    before: EvaluationResult | None = None
    after: EvaluationResult | None = None


def finetune_rounds(grid: Grid, model, *, rounds: int = 1, local_steps: int = 2,
                    lr: float = 1e-3, calibration_weight: float = 1.0, n_bins: int = 20,
                    min_sites: int = 1, max_cases: int = protocol.DEFAULT_MAX_CASES,
                    timeout: float = 3600.0, seed: int = 0, evaluate: bool = True,
                    progress: ProgressCallback | None = None,
                    cancel: CancelCallback | None = None,
                    expected: Sequence[str] = ()) -> FinetuneResult:
    """FedAvg rounds of local Dice+CE+mL1-ACE steps; evaluate before and after.

    The returned model keeps the card of ``model`` with version ``<version>+fed<rounds>``
    and a ``training.federated`` entry recording rounds, sites, settings and metrics.
    """
    if rounds < 1 or local_steps < 1:
        raise CalibSegError("Use at least one round and one local step.")
    before = after = None
    if evaluate:
        before = evaluation_round(grid, model, n_bins=n_bins, min_sites=min_sites,
                                  max_cases=max_cases, timeout=timeout, group="before",
                                  cancel=cancel, expected=expected)
    report(progress, 0.2, f"fine-tuning: {rounds} FedAvg round(s)")
    card_json, weights = model_to_records(model)
    strategy = CheckedFedAvg(min_sites=min_sites, max_cases=max_cases,
                             model_version=model.version, names=site_names(grid),
                             card=card_json)
    train_config = ConfigRecord({
        "local-steps": int(local_steps), "lr": float(lr),
        "calibration-weight": float(calibration_weight), "n-bins": int(n_bins),
        "max-cases": int(max_cases), "seed": int(seed)})
    wait_for_sites(grid, min_sites, timeout, cancel, expected)
    result = strategy.start(grid, weights, num_rounds=int(rounds), timeout=timeout,
                            train_config=train_config)
    network = copy.deepcopy(model.network)
    network.load_state_dict(weights_to_state_dict(result.arrays), strict=True)
    network.eval()
    version = f"{model.version}+fed{int(rounds)}"
    interim = Model(card=model.card.replace(version=version), network=network)
    if evaluate:
        after = evaluation_round(grid, interim, n_bins=n_bins, min_sites=min_sites,
                                 max_cases=max_cases, timeout=timeout, group="after",
                                 cancel=cancel, expected=expected)
    training = dict(model.card.training or {})
    training["federated"] = _card_record(model, rounds, local_steps, lr, calibration_weight,
                                         n_bins, seed, strategy, before, after)
    final = Model(card=interim.card.replace(training=training), network=network)
    report(progress, 1.0, "fine-tuning done")
    return FinetuneResult(final, int(rounds), strategy.outcomes, strategy.train_metrics,
                          before, after)


def _card_record(model, rounds, local_steps, lr, weight, n_bins, seed, strategy, before, after
                 ) -> dict:
    def pooled(result):
        if result is None:
            return None
        m = result.pooled_metrics()
        return {k: m[k] for k in ("ace", "ece", "mce", "dice_mean") if k in m}

    return {
        "base_model": {"name": model.name, "version": model.version},
        "strategy": "FedAvg (Flower), updates weighted by case count",
        "rounds": int(rounds),
        "local_steps": int(local_steps), "learning_rate": float(lr), "seed": int(seed),
        "loss": f"DiceCE + {float(weight):g} x mL1-ACE (hard, {int(n_bins)} bins)",
        "sites": {str(r): [o.to_dict() for o in outs] for r, outs in strategy.outcomes.items()},
        "train_metrics": {str(r): m for r, m in strategy.train_metrics.items()},
        "pooled_before": pooled(before),
        "pooled_after": pooled(after),
    }
