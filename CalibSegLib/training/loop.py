"""The training loop: stages, optimisers, checkpoints, push, temperature, model folder.

Stages (prototype head, after ProtoPNet / ProtoSeg): *warm-up* (backbone
frozen; prototypes and feature projection train), *joint* (everything but the
last layer), *push* (prototypes become real training voxels' features), *last*
(only the last layer trains). A linear head has only the joint stage.

Every random draw depends on ``(seed, step)`` only, and checkpoints hold the
weights and the optimiser state, so ``resume=True`` continues bit-for-bit like
an uninterrupted run. A checkpoint is written every ``checkpoint_every`` steps
and at stage boundaries; an interruption (Ctrl-C, cancel) keeps the last one.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism
from torch import nn
from tqdm import tqdm

from CalibSegLib.data.pairs import TrainingCase
from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import predict
from CalibSegLib.models import Model
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report, scaled
from CalibSegLib.training import card as card_mod
from CalibSegLib.training import heads
from CalibSegLib.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from CalibSegLib.training.config import TrainConfig
from CalibSegLib.training.data import check_labels
from CalibSegLib.training.losses import SegmentationObjective, cluster_cost, off_class_l1
from CalibSegLib.training.patches import PatchSampler
from CalibSegLib.training.push import case_features, push_prototypes

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    folder: str
    network: nn.Module
    card: object
    temperature: float
    catalogue: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def stage_at(config: TrainConfig, step: int) -> tuple[str, int, int]:
    """``(stage, step within stage, stage length)`` of global step ``step`` (0-based)."""
    start = 0
    for name, length in config.stages():
        if step < start + length:
            return name, step - start, length
        start += length
    name, length = config.stages()[-1]
    return name, length, length


def learning_rate(config: TrainConfig, stage: str, local: int, length: int) -> float:
    """Constant in warm-up and last stage; cosine decay to 5 % over the joint stage."""
    if stage == "last":
        return float(config.last_layer_learning_rate)
    if stage == "warmup":
        return float(config.learning_rate)
    frac = local / max(length, 1)
    return float(config.learning_rate) * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def stage_parameters(network: nn.Module, stage: str) -> list[nn.Parameter]:
    """Parameters trained in ``stage``; the others get ``requires_grad = False``."""
    if not heads.is_prototype(network):
        chosen = list(network.parameters())
    elif stage == "warmup":
        chosen = heads.head_parameters(network)
    elif stage == "joint":
        last = {id(p) for p in heads.last_layer_parameters(network)}
        chosen = [p for p in network.parameters() if id(p) not in last]
    else:
        chosen = heads.last_layer_parameters(network)
    ids = {id(p) for p in chosen}
    for p in network.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


def make_optimizer(config: TrainConfig, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam over ``params`` with the configured learning rate and weight decay."""
    return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def _set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def _summarise(history: list[dict], window: int = 5) -> dict:
    """First/last mean loss terms (over ``window`` log records) of each stage."""
    out: dict[str, dict] = {}
    for stage in dict.fromkeys(h["stage"] for h in history):
        rows = [h for h in history if h["stage"] == stage]
        keys = [k for k in rows[0] if k not in ("step", "stage", "lr", "seconds")]
        out[stage] = {
            "records": len(rows),
            "first": {k: float(np.mean([r[k] for r in rows[:window] if k in r])) for k in keys},
            "last": {k: float(np.mean([r[k] for r in rows[-window:] if k in r])) for k in keys},
        }
    return out


def validation_logits(network: nn.Module, card, cases: Sequence[TrainingCase],
                      device: str | torch.device = "cpu",
                      cancel: CancelCallback | None = None) -> list[torch.Tensor]:
    """Logits ``(C, Z, Y, X)`` of each case exactly as :func:`CalibSegLib.inference.predict`
    computes them (card normalisation, sliding window over the card's patch size)."""
    model = Model(card=card, network=network)
    out = []
    for case in cases:
        check_cancel(cancel, "validation")
        prediction = predict(case.image, case.affine, model, device=str(device), maps=False,
                             temperature=1.0, cancel=cancel, form="full")
        out.append(torch.from_numpy(np.array(prediction.logits, dtype=np.float32)))
    network.train()
    return out


@torch.no_grad()
def quick_dice(network: nn.Module, case: TrainingCase,
               normalise: Callable[[np.ndarray], np.ndarray], patch_size: Sequence[int],
               device: str | torch.device = "cpu") -> list[float]:
    """Per-class Dice of a whole-volume forward pass on one case (training diagnostics).

    ``normalise`` maps the case's image, an array of shape (Z, Y, X), to the network's
    intensity scale.
    """
    logits, _ = case_features(network, normalise(case.image), patch_size, device)
    pred = logits.argmax(0).cpu().numpy()
    out = []
    for c in range(logits.shape[0]):
        a, b = pred == c, case.labels == c
        denom = int(a.sum()) + int(b.sum())
        out.append(round(2.0 * int((a & b).sum()) / denom, 4) if denom else 1.0)
    return out


class _Interval:
    """Averages the logged loss terms between log records."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


def train(
    config: TrainConfig,
    train_cases: Sequence[TrainingCase],
    val_cases: Sequence[TrainingCase],
    output: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    name: str | None = None,
    class_colors: Sequence[Sequence[float]] | None = None,
    data_description: dict | None = None,
    stop_after: int | None = None,
    keep_checkpoint: bool = False,
    show_progress: bool = False,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> TrainResult | None:
    """Train a segmentation model and write its model folder.

    Parameters
    ----------
    config
        Network, budget, losses and seed.
    train_cases, val_cases
        Training cases (patches, push) and validation cases (temperature fit, metrics).
    output
        The model folder: ``model.json`` + ``model.safetensors`` (+ ``gallery/``) at the end;
        ``checkpoint/`` while training.
    resume
        Continue from the checkpoint in ``output``.
    overwrite
        Allow starting afresh in a folder that holds a checkpoint or a model.
    command, name, class_colors, data_description
        Recorded in the model card (full command line, model name, class colours, what the
        data were).
    stop_after
        Stop (with a checkpoint) once this many global steps are done; returns ``None``.
    keep_checkpoint
        Keep ``checkpoint/`` after the model folder is written.
    show_progress
        Show a tqdm progress bar with the loss terms on stderr.

    Returns
    -------
    TrainResult or None
        ``None`` only when ``stop_after`` stopped the run early.
    """
    config = config.validate()
    if not train_cases:
        raise CalibSegError("No training cases; give a data folder, a CSV or --sample seeds.")
    if not val_cases:
        raise CalibSegError("No validation cases; they are needed to fit the temperature.")
    check_labels(list(train_cases) + list(val_cases), config.num_classes)
    ckpt_dir = os.path.join(output, CHECKPOINT_DIR)
    if not resume and not overwrite and (
            has_checkpoint(ckpt_dir) or os.path.exists(os.path.join(output, "model.json"))):
        raise CalibSegError(
            f"{output} already holds a model or an interrupted run; pass --resume to continue "
            "it, --overwrite to start again, or choose another output folder."
        )
    os.makedirs(output, exist_ok=True)
    if overwrite and not resume:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(os.path.join(output, "gallery"), ignore_errors=True)

    _set_determinism(config.seed)
    card = card_mod.initial_card(
        config, name=name or os.path.basename(os.path.normpath(output)), command=command,
        data=data_description, affine=train_cases[0].affine, class_colors=class_colors)
    network = card_mod.build(card).to(device)
    normalise = card_mod.normaliser(card)

    step, catalogue, history, checks, elapsed = 0, [], [], [], 0.0
    optim_state, optim_stage = None, None
    saved_interval: dict[str, Any] = {}
    if resume:
        state, weights, optim_state = load_checkpoint(ckpt_dir)
        if TrainConfig.from_dict(state["config"]).to_dict() != config.to_dict():
            raise CalibSegError(
                f"The checkpoint in {ckpt_dir} was made with other settings; resume with the "
                "same options or start again with --overwrite."
            )
        network.load_state_dict(weights)
        step, catalogue = int(state["step"]), list(state.get("catalogue", []))
        history, elapsed = list(state.get("history", [])), float(state.get("seconds", 0.0))
        checks = list(state.get("checks", []))
        optim_stage = state.get("optimizer_stage")
        saved_interval = state.get("interval") or {}

    sampler = PatchSampler(train_cases, normalise, config.patch_size, config.batch_size,
                           config.seed)
    objective = SegmentationObjective(config)
    total = config.total_steps
    pushed = bool(catalogue)

    def check() -> list[float]:
        return quick_dice(network, val_cases[0], normalise, config.patch_size, device)

    def checkpoint(optimizer: torch.optim.Optimizer | None, stage: str | None) -> None:
        save_checkpoint(ckpt_dir, network, optimizer, {
            "step": step, "config": config.to_dict(), "catalogue": catalogue,
            "history": history, "checks": checks, "seconds": elapsed,
            "optimizer_stage": stage,
            "interval": {"sums": interval.sums, "count": interval.count},
        })

    bar = None
    if show_progress:
        bar = tqdm(total=total, initial=step, file=sys.stderr, unit="it", dynamic_ncols=True,
                   desc="train")
    optimizer, current, lr = None, None, 0.0
    interval = _Interval()
    interval.sums = dict(saved_interval.get("sums", {}))
    interval.count = int(saved_interval.get("count", 0))
    try:
        while step < total or (heads.is_prototype(network) and not pushed):
            stage, local, length = stage_at(config, step)
            if stage == "last" and not pushed and heads.is_prototype(network):
                checks.append({"step": step, "when": "before push",
                               "dice": check()})
                catalogue = _push(config, network, train_cases, normalise, output,
                                  device, progress, cancel, bar)
                pushed = True
                checks.append({"step": step, "when": "after push",
                               "dice": check()})
                optimizer, current = None, None
                checkpoint(None, None)
                continue
            if step >= total:
                break
            if current != stage:
                params = stage_parameters(network, stage)
                optimizer = make_optimizer(config, params)
                if optim_state is not None and optim_stage == stage:
                    optimizer.load_state_dict(optim_state)
                optim_state, current = None, stage
            check_cancel(cancel, "training")
            t0 = time.perf_counter()
            lr = learning_rate(config, stage, local, length)
            assert optimizer is not None  # made when the stage began
            for group in optimizer.param_groups:
                group["lr"] = lr
            terms = _train_step(config, network, optimizer, objective, sampler, step, stage,
                                device)
            elapsed += time.perf_counter() - t0
            step += 1
            interval.add(terms)
            boundary = stage_at(config, step)[0] != stage or step == total
            if boundary and config.dice_checks:
                checks.append({"step": step, "when": f"end of {stage}",
                               "dice": check()})
            if step % max(config.log_every, 1) == 0 or boundary:
                history.append({"step": step, "stage": stage, "lr": lr,
                                "seconds": round(elapsed, 3), **interval.pop()})
            if bar is not None:
                bar.update(1)
                bar.set_postfix({"stage": stage, **{k: f"{v:.3f}" for k, v in terms.items()}},
                                refresh=False)
            report(scaled(progress, 0.0, 0.9), step / total,
                   f"{stage} step {step}/{total} " + " ".join(
                       f"{k}={v:.3f}" for k, v in terms.items()))
            stopping = stop_after is not None and step >= stop_after
            if boundary or stopping or (
                    config.checkpoint_every and step % config.checkpoint_every == 0):
                checkpoint(optimizer, stage)
            if stopping:
                return None
    finally:
        if bar is not None:
            bar.close()

    report(progress, 0.92, "fitting the temperature on the validation cases")
    logits = validation_logits(network, card, val_cases, device, cancel)
    temperature = card_mod.fit_validation_temperature(logits, [c.labels for c in val_cases])
    summary = {
        "steps": total, "seconds": round(elapsed, 1),
        "iterations_per_second": round(total / max(elapsed, 1e-9), 3),
        "voxels_per_second": round(total * sampler.voxels_per_batch / max(elapsed, 1e-9), 1),
        "stages": _summarise(history),
        "dice_checks": {"case": val_cases[0].case_id, "class_dice": checks},
        "validation": card_mod.validation_metrics(logits, val_cases, temperature, config),
    }
    card = card_mod.final_card(card, config, temperature, catalogue, history, summary)
    card_mod.save(output, card, network, history,
                  keep=(CHECKPOINT_DIR,) if keep_checkpoint else ())
    report(progress, 1.0, f"model written to {output}")
    return TrainResult(output, network, card, temperature, catalogue, history, summary)


def _push(config, network, cases, normalise, output, device, progress, cancel, bar):
    if bar is not None:
        bar.set_description("push")
    subset = list(cases)[: config.push_cases] if config.push_cases else list(cases)
    network.eval()
    catalogue = push_prototypes(
        network, subset, normalise, config.patch_size,
        gallery_folder=os.path.join(output, "gallery"),
        gallery_size=config.gallery_size, class_names=config.class_names, device=device,
        cancel=cancel, progress=None if progress is None else (
            lambda f, m: report(progress, 0.9 * (config.warmup_steps + config.steps) /
                                config.total_steps, m)),
    )
    network.train()
    if bar is not None:
        bar.set_description("train")
    return catalogue


def _train_step(config: TrainConfig, network: nn.Module, optimizer: torch.optim.Optimizer,
                objective: SegmentationObjective, sampler: PatchSampler, step: int, stage: str,
                device: str | torch.device) -> dict[str, float]:
    network.train()
    images, labels = sampler.batch(step)
    images, labels = images.to(device), labels.to(device)
    logits, features = heads.forward_features(network, images)
    loss, terms = objective(logits, labels)
    if features is not None and heads.is_prototype(network):
        protos, proto_class = heads.prototypes(network)
        if config.cluster_weight > 0 and stage != "last":
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            cluster = cluster_cost(features, labels, protos, proto_class, generator=gen)
            terms["cluster"] = float(cluster.detach())
            loss = loss + config.cluster_weight * cluster
        if stage == "last" and config.last_layer_l1 > 0:
            l1 = off_class_l1(heads.last_layer_weight(network), proto_class)
            loss = loss + config.last_layer_l1 * l1
    if not torch.isfinite(loss):
        raise CalibSegError(
            f"The loss became {float(loss)} at step {step}; lower the learning rate or the "
            "calibration weight."
        )
    terms["loss"] = float(loss.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return terms
