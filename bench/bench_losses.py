"""Benchmark: forward + backward of the mL1-ACE losses against MONAI DiceCELoss.

``python bench/bench_losses.py [--quick]`` prints a table; :func:`run` returns rows
``{name, value, target, unit}``. Input (2, 4, 64, 64, 64) logits (``--quick``: 32^3).
"""

from __future__ import annotations

import argparse
import time


def _fwd_bwd(loss, logits, labels, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        x = logits.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        loss(x, labels).backward()
        best = min(best, time.perf_counter() - start)
    return best


def run(quick: bool = False, repeat: int = 3) -> list[dict]:
    """Measure and return rows ``{name, value, target, unit}``."""
    import torch
    from monai.losses import DiceCELoss

    from CalibSegLib.calibration import DiceCEL1ACELoss, HardL1ACELoss, SoftL1ACELoss

    size = 32 if quick else 64
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 4, size, size, size), generator=g) * 2
    labels = torch.randint(0, 4, (2, 1, size, size, size), generator=g)
    losses = {
        "MONAI DiceCELoss": DiceCELoss(to_onehot_y=True, softmax=True),
        "HardL1ACELoss": HardL1ACELoss(to_onehot_y=True, softmax=True),
        "SoftL1ACELoss": SoftL1ACELoss(to_onehot_y=True, softmax=True),
        "DiceCEL1ACELoss (hard)": DiceCEL1ACELoss(ace="hard"),
        "DiceCEL1ACELoss (soft)": DiceCEL1ACELoss(ace="soft"),
    }
    times = {name: _fwd_bwd(loss, logits, labels, repeat) for name, loss in losses.items()}
    base = times["MONAI DiceCELoss"]
    rows = [{"name": f"input (2, 4, {size}, {size}, {size})", "value": "",
             "target": None, "unit": ""}]
    for name, t in times.items():
        rows.append({"name": f"{name} forward+backward", "value": t, "target": None,
                     "unit": "s"})
        if name != "MONAI DiceCELoss":
            rows.append({"name": f"  {name} / DiceCELoss", "value": t / base, "target": None,
                         "unit": "x"})
    rows.append({"name": "torch threads", "value": str(torch.get_num_threads()),
                 "target": None, "unit": ""})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for r in run(args.quick, args.repeat):
        v = r["value"]
        value = f"{v:.4g} {r['unit']}" if isinstance(v, float) else f"{v}"
        print(f"{r['name']:48s} {value:>12s}")


if __name__ == "__main__":
    main()
