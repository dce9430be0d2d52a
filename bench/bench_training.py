"""Benchmark: training throughput of the demo models' set-up, per calibration loss.

Times joint-stage training steps (forward, losses, backward, optimiser) of the demo
models' network and settings (read from the ``dicece`` card: MONAI UNet 8/16/32 +
prototype head, batch 2 of 48³ patches) with
:func:`CalibSegLib.training.measure_throughput`, for Dice+CE alone and with the hard
and soft mL1-ACE terms, side by side in one process. ``--quick``: 24³ patches.

``python bench/bench_training.py [--quick]`` prints a table; :func:`run` returns rows
``{name, value, target, unit}`` for ``bench/run``.
"""

from __future__ import annotations

import sys


def run(quick: bool = False) -> list[dict]:
    """Measure and return rows ``{name, value, target, unit}``."""
    import json
    import os

    from CalibSegLib.training import TrainConfig
    from CalibSegLib.training.throughput import measure_throughput

    card = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "Resources", "Models", "dicece", "model.json")
    with open(card, encoding="utf-8") as fh:
        config = TrainConfig.from_dict(json.load(fh)["training"]["config"])
    if quick:
        config = TrainConfig.from_dict({**config.to_dict(), "patch_size": [24, 24, 24]})
    rows = measure_throughput(config=config, steps=6 if quick else 10, warmup=2)
    by_loss = {r["loss"]: r for r in rows}
    patch = "x".join(str(s) for s in config.patch_size)
    out = []
    for loss, row in by_loss.items():
        label = {"none": "Dice+CE", "hard": "+ hard mL1-ACE", "soft": "+ soft mL1-ACE"}[loss]
        out.append({"name": f"training voxels/s, {label} (batch {row['batch']}x{patch})",
                    "value": row["voxels_per_second"], "target": None, "unit": "vox/s"})
    base = by_loss["none"]["seconds_per_iteration"]
    for loss in ("hard", "soft"):
        out.append({"name": f"training step with {loss} mL1-ACE / Dice+CE step",
                    "value": by_loss[loss]["seconds_per_iteration"] / base, "target": None,
                    "unit": "ratio"})
    return out


if __name__ == "__main__":
    rows = run(quick="--quick" in sys.argv)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['value']:12.2f} {r['unit']}")
