"""Training throughput (iterations/s, voxels/s) of each calibration loss on this machine."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from CalibSegLib.data.pairs import TrainingCase
from CalibSegLib.progress import CancelCallback, ProgressCallback, check_cancel, report
from CalibSegLib.training import card as card_mod
from CalibSegLib.training.config import TrainConfig
from CalibSegLib.training.data import sample_cases
from CalibSegLib.training.loop import (
    _set_determinism,
    _train_step,
    make_optimizer,
    stage_parameters,
)
from CalibSegLib.training.losses import SegmentationObjective
from CalibSegLib.training.patches import PatchSampler


def measure_throughput(
    losses: Sequence[str] = ("none", "hard", "soft"),
    config: TrainConfig | None = None,
    cases: Sequence[TrainingCase] | None = None,
    steps: int = 10,
    warmup: int = 2,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> list[dict]:
    """Time joint-stage training steps for each calibration loss.

    Parameters
    ----------
    losses
        Calibration losses to time (``"none"``, ``"hard"``, ``"soft"``).
    config
        Network and batch settings (default: the demo models' settings).
    cases
        Cases patches are drawn from (default: two shifted 2 mm ``mni-t1`` variants).
    steps, warmup
        Timed steps, and untimed steps before them.

    Returns
    -------
    list of dict
        Per loss: ``loss``, ``head``, ``patch``, ``batch``, ``steps``,
        ``seconds_per_iteration``, ``iterations_per_second``, ``voxels_per_second``,
        ``threads``.
    """
    base = config or TrainConfig()
    if cases is None:
        cases = sample_cases("mni-t1", seeds=(1, 2))
    rows = []
    for n, loss in enumerate(losses):
        check_cancel(cancel, "throughput measurement")
        cfg = TrainConfig.from_dict({**base.to_dict(), "calibration_loss": loss}).validate()
        _set_determinism(cfg.seed)
        card = card_mod.initial_card(cfg, name="throughput")
        network = card_mod.build(card)
        sampler = PatchSampler(cases, card_mod.normaliser(card), cfg.patch_size,
                               cfg.batch_size, cfg.seed)
        objective = SegmentationObjective(cfg)
        optimizer = make_optimizer(cfg, stage_parameters(network, "joint"))
        for step in range(warmup):
            _train_step(cfg, network, optimizer, objective, sampler, step, "joint", "cpu")
        start = time.perf_counter()
        for step in range(warmup, warmup + steps):
            _train_step(cfg, network, optimizer, objective, sampler, step, "joint", "cpu")
        seconds = (time.perf_counter() - start) / steps
        rows.append({
            "loss": loss, "head": cfg.head, "patch": list(cfg.patch_size),
            "batch": cfg.batch_size, "steps": steps,
            "seconds_per_iteration": seconds, "iterations_per_second": 1.0 / seconds,
            "voxels_per_second": sampler.voxels_per_batch / seconds,
            "threads": torch.get_num_threads(),
        })
        report(progress, (n + 1) / len(losses), f"timed {loss}")
    return rows
