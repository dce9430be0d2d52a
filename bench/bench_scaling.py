"""Scaling study: time and peak memory against the number of voxels.

Operations, each on a cube of ``n³`` voxels (default 64³, 128³, 192³, 256³):

- ``stats``: ``ReliabilityStats.from_probs`` on 4-class probabilities (the data of
  ``bench_reliability``: confident softmax, labels in runs of 64 voxels), 20 bins;
- ``predict``: ``predict(..., device="cpu", maps=True)`` with the demo model
  ``Resources/Models/dicece`` (UNet 8/16/32, prototype head, 48³ windows, overlap
  0.25) on an image already on the model grid (2 mm, RAS; no resampling): sliding
  window, probabilities, confidence, entropy and the prototype maps;
- ``temperature``: ``CalibSegLogic.setTemperature`` in a headless MRML scene with a
  3-class prediction and a reference (new probabilities, confidence and entropy
  volumes updated in place, reliability statistics, diagram and metrics table);
- ``mrml``: a ``(Z, Y, X)`` float32 array into a new volume node and back
  (``CalibSegSlicer.arrays.newVolumeNode`` / ``arrayFromNode``).

``--big`` adds 512 × 512 × 300 voxels (X × Y × Z) for ``stats`` and ``mrml``. Time is
the best of 3 runs (1 run above 128³, ``--repeat-large``); peak memory is the rise of
the process's resident high-water mark (``VmHWM``, reset before each measurement)
over the resident size before it. The exponent is the least-squares slope of
log(time) against log(voxels) over the sizes of at least 64³ (smaller sizes are
dominated by fixed per-call costs); linear scaling is an exponent of 1.

``run(quick)`` returns rows ``{name, value, target, unit}`` for ``bench/run``
(quick: 32³, 48³, 64³ only, exponents reported without a target). Run this file for
the full study::

    .venv/bin/python bench/bench_scaling.py --big --plot docs/figures/scaling.png \\
        --markdown docs/bench/scaling.md
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import itertools
import math
import os
import platform
import sys
from types import SimpleNamespace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT, os.path.join(ROOT, "CalibSeg")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_logic import logic_showing, mrml_round_trip  # noqa: E402
from bench_reliability import N_BINS, N_CLASSES, _data, _reset_hwm, _rss_mb  # noqa: E402
from timing import best_time  # noqa: E402

OPS = ("stats", "predict", "temperature", "mrml")
TITLES = {
    "stats": f"ReliabilityStats ({N_CLASSES} classes, {N_BINS} bins)",
    "predict": "predict (sliding window + confidence/entropy/prototype maps)",
    "temperature": "temperature refresh (Slicer logic, 3 classes, with reference)",
    "mrml": "MRML round trip array -> node -> array",
}
BIG_SHAPE = (300, 512, 512)  # (Z, Y, X): 512 x 512 x 300
BIG_OPS = ("stats", "mrml")
FULL_SIZES = (64, 128, 192, 256)
QUICK_SIZES = (32, 48, 64)
FIT_MIN_VOXELS = 64 ** 3
TARGET = "0.9-1.1"
MODEL = os.path.join(ROOT, "Resources", "Models", "dicece")


# ----------------------------------------------------------------------------- inputs
def _case(shape: tuple[int, int, int]) -> SimpleNamespace:
    """The 2 mm sample case stretched (trilinear) onto ``shape``, on a 2 mm RAS grid."""
    import torch

    from CalibSegLib.data import sample_case

    base = sample_case("mni-t1", resolution_mm=2.0)

    def stretch(array: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        x = x[None] if x.ndim == 4 else x[None, None]
        out = torch.nn.functional.interpolate(x, size=shape, mode="trilinear",
                                              align_corners=True)[0]
        return out.numpy() if array.ndim == 4 else out[0].numpy()

    ref = stretch(base.reference_probs)
    ref /= ref.sum(axis=0, keepdims=True)
    return SimpleNamespace(image=stretch(base.image), affine=np.diag([2.0, 2.0, 2.0, 1.0]),
                           reference_probs=ref, labels=ref.argmax(0).astype(np.uint8),
                           class_names=tuple(base.class_names),
                           class_colors=tuple(base.class_colors))


def _trim() -> None:
    """Give freed heap memory back to the system, so that reuse shows in ``VmHWM``."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure(fn, repeat: int) -> tuple[float, float]:
    """(best wall time in s, peak extra resident memory in MiB) over ``repeat`` calls."""
    gc.collect()
    _trim()
    rss0 = _rss_mb("VmRSS")
    _reset_hwm()
    best = best_time(fn, repeat)
    return best, _rss_mb("VmHWM") - rss0


def _set_temperature(logic, temperatures) -> None:
    logic.setTemperature(next(temperatures), "A")


def _logic(case):
    """A headless scene and CalibSeg logic showing a 3-class prediction with a reference."""
    scene, colors, logic, _ = logic_showing(case)
    return scene, colors, logic


# ----------------------------------------------------------------------------- study
def _warm_up(model) -> None:
    """One-time costs (kernel cache, thread pools, imports) outside the timings."""
    from CalibSegLib.calibration import ReliabilityStats
    from CalibSegLib.inference import predict

    p, t = _data(4096)
    ReliabilityStats.from_probs(p, t, N_BINS)
    case = _case((32, 32, 32))
    predict(case.image, case.affine, model, device="cpu", maps=True)
    scene, _colors, logic = _logic(case)
    logic.setTemperature(1.3, "A")
    mrml_round_trip(scene, case.image, case.affine)
    scene.Clear(True)


def study(sizes=FULL_SIZES, big: bool = False, repeat_large: int = 1,
          log=None) -> list[dict]:
    """Measure every operation at every size; return records
    ``{op, shape, voxels, seconds, peak_mib, repeat}``."""
    from CalibSegLib.calibration import ReliabilityStats
    from CalibSegLib.inference import predict
    from CalibSegLib.models import load_model

    model = load_model(MODEL)
    _warm_up(model)
    shapes = [((s, s, s), OPS) for s in sizes]
    if big:
        shapes.append((BIG_SHAPE, BIG_OPS))
    records = []

    def record(op, shape, fn, repeat):
        seconds, peak = _measure(fn, repeat)
        rec = {"op": op, "shape": shape, "voxels": int(np.prod(shape)), "seconds": seconds,
               "peak_mib": peak, "repeat": repeat}
        records.append(rec)
        if log:
            log(f"{op:<12} {_shape_text(shape):>12} {seconds:9.3f} s {peak:9.1f} MiB "
                f"(best of {repeat}, load {os.getloadavg()[0]:.1f})")

    for shape, ops in shapes:
        n = int(np.prod(shape))
        repeat = 3 if n <= 128 ** 3 else repeat_large
        if "stats" in ops or "mrml" in ops:
            p, t = _data(n)
            probs, target = p.reshape((N_CLASSES, *shape)), t.reshape(shape)
            if "stats" in ops:
                record("stats", shape, functools.partial(
                    ReliabilityStats.from_probs, probs, target, N_BINS), repeat)
            if "mrml" in ops and shape == BIG_SHAPE:
                import slicer

                scene = slicer.vtkMRMLScene()
                image = probs[0]  # a contiguous (Z, Y, X) float32 view: no second copy
                record("mrml", shape, functools.partial(
                    mrml_round_trip, scene, image, np.diag([1.0, 1.0, 1.0, 1.0])), repeat)
                del scene, image
            del p, t, probs, target
            gc.collect()
        if "predict" in ops or "temperature" in ops or ("mrml" in ops and shape != BIG_SHAPE):
            case = _case(shape)
            if "predict" in ops:
                record("predict", shape, functools.partial(
                    predict, case.image, case.affine, model, device="cpu", maps=True), repeat)
            if "mrml" in ops and shape != BIG_SHAPE:
                import slicer

                scene = slicer.vtkMRMLScene()
                record("mrml", shape, functools.partial(
                    mrml_round_trip, scene, case.image, case.affine), repeat)
                del scene
            if "temperature" in ops:
                scene, _colors, logic = _logic(case)
                temperatures = itertools.cycle((0.7, 1.3, 1.9, 2.5))
                record("temperature", shape, functools.partial(
                    _set_temperature, logic, temperatures), repeat)
                scene.Clear(True)
                del scene, _colors, logic
            del case
            gc.collect()
    return records


def _shape_text(shape) -> str:
    z, y, x = shape
    return f"{x}³" if x == y == z else f"{x}×{y}×{z}"


def exponents(records: list[dict], min_voxels: int = FIT_MIN_VOXELS) -> dict[str, dict]:
    """Per operation: the slope of log(time) vs log(voxels) and the sizes it was fitted on.

    Uses the sizes of at least ``min_voxels`` when there are two or more, else all sizes
    (``fitted_all``: then the fit is dominated by fixed costs and only indicative).
    """
    out = {}
    for op in OPS:
        recs = [r for r in records if r["op"] == op]
        large = [r for r in recs if r["voxels"] >= min_voxels]
        used = large if len(large) >= 2 else recs
        if len(used) < 2:
            continue
        x = np.log([r["voxels"] for r in used])
        y = np.log([r["seconds"] for r in used])
        slope = float(np.polyfit(x, y, 1)[0])
        out[op] = {"exponent": slope, "sizes": [r["shape"] for r in used],
                   "fitted_all": used is recs and len(large) < 2}
    return out


def _in_target(value: float) -> bool:
    lo, hi = (float(v) for v in TARGET.split("-"))
    return lo <= value <= hi


def rows(records: list[dict]) -> list[dict]:
    """Rows for ``bench/run``: exponent per operation and time per megavoxel at the
    largest size."""
    out = []
    for op, fit in exponents(records).items():
        span = f"{_shape_text(fit['sizes'][0])}–{_shape_text(fit['sizes'][-1])}"
        if fit["fitted_all"]:
            out.append({"name": f"fitted exponent time vs voxels: {op} (quick)",
                        "value": fit["exponent"], "target": None, "unit": ""})
        else:
            out.append({"name": f"fitted exponent time vs voxels: {op} ({span})",
                        "value": fit["exponent"], "target": TARGET, "unit": ""})
    for op in OPS:
        recs = [r for r in records if r["op"] == op]
        if recs:
            last = max(recs, key=lambda r: r["voxels"])
            out.append({"name": f"{op} time per megavoxel at {_shape_text(last['shape'])}",
                        "value": last["seconds"] / (last["voxels"] / 1e6) * 1000,
                        "target": None, "unit": "ms/Mvox"})
    return out


def run(quick: bool = False) -> list[dict]:
    """Measure and return rows ``{name, value, target, unit}`` (quick: 32³–64³)."""
    return rows(study(QUICK_SIZES if quick else FULL_SIZES, big=False))


# ----------------------------------------------------------------------------- output
def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = exponents(records)
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for op in OPS:
        recs = sorted((r for r in records if r["op"] == op), key=lambda r: r["voxels"])
        if not recs:
            continue
        label = op if op not in fits else f"{op} (exponent {fits[op]['exponent']:.2f})"
        ax.loglog([r["voxels"] for r in recs], [r["seconds"] for r in recs], "o-", label=label)
    voxels = np.array([r["voxels"] for r in records], dtype=float)
    seconds = np.array([r["seconds"] for r in records], dtype=float)
    x = np.array([voxels.min(), voxels.max()])
    anchor = math.exp(float(np.mean(np.log(seconds[voxels == voxels.min()]))))
    ax.loglog(x, anchor * x / x[0], "--", color="grey", label="slope 1 (linear)")
    ax.set_xlabel("voxels")
    ax.set_ylabel("time (s, best of runs)")
    ax.set_title("CalibSeg scaling (CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _environment() -> list[str]:
    import numba
    import torch

    import CalibSegLib  # noqa: F401

    return [f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB RAM",
            f"python {platform.python_version()}, numpy {np.__version__}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads, cuda "
            f"{torch.cuda.is_available()}), numba {numba.__version__} "
            f"({numba.get_num_threads()} threads)"]


BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"


def markdown(records: list[dict], command: str, loads: tuple, plot_path: str | None) -> str:
    """The measured part of the report (between ``BEGIN`` and ``END`` markers)."""
    lines = [BEGIN, "", "```", f"$ {command}", *_environment(),
             f"load average (1/5/15 min) before: {loads[0][0]:.2f} / {loads[0][1]:.2f} / "
             f"{loads[0][2]:.2f}; after: {loads[1][0]:.2f} / {loads[1][1]:.2f} / "
             f"{loads[1][2]:.2f}", "```", ""]
    shapes = sorted({r["shape"] for r in records}, key=lambda s: int(np.prod(s)))
    by = {(r["op"], r["shape"]): r for r in records}
    head = "| operation | " + " | ".join(
        f"{_shape_text(s)} ({np.prod(s) / 1e6:.3g} M)" for s in shapes) + " |"
    sep = "|---|" + "---|" * len(shapes)
    for title, fmt in (("Time (s; best of 3 up to 128³, else of the runs noted)",
                        lambda r: f"{r['seconds']:.3g}"),
                       ("Time per megavoxel (ms)",
                        lambda r: f"{r['seconds'] / r['voxels'] * 1e9:.3g}"),
                       ("Peak extra memory (MiB, VmHWM rise)",
                        lambda r: f"{r['peak_mib']:.0f}")):
        lines += [f"**{title}**", "", head, sep]
        for op in OPS:
            cells = [fmt(by[(op, s)]) if (op, s) in by else "—" for s in shapes]
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["**Fitted exponent of time vs voxels** (least squares on log-log; target "
              "0.9–1.1)", "", "| operation | sizes fitted | exponent | verdict |",
              "|---|---|---|---|"]
    for op, fit in exponents(records).items():
        verdict = "—" if fit["fitted_all"] else ("PASS" if _in_target(fit["exponent"])
                                                 else "MISS")
        sizes = ", ".join(_shape_text(s) for s in fit["sizes"])
        lines.append(f"| {op} | {sizes} | {fit['exponent']:.3f} | {verdict} |")
    repeats = sorted({(r["voxels"], r["repeat"]) for r in records})
    lines += ["", "Runs per measurement: " + ", ".join(
        f"{_shape_text(s)}: {next(rep for v, rep in repeats if v == int(np.prod(s)))}"
        for s in shapes) + "."]
    if plot_path:
        lines += ["", f"![scaling]({plot_path})"]
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32³, 48³, 64³ only")
    parser.add_argument("--sizes", type=int, nargs="+", help="cube edges (default 64 128 192 256)")
    parser.add_argument("--big", action="store_true",
                        help="also 512 x 512 x 300 for the statistics and the MRML round trip")
    parser.add_argument("--repeat-large", type=int, default=1,
                        help="runs per measurement above 128³ (default 1)")
    parser.add_argument("--plot", help="write a log-log plot (PNG) here")
    parser.add_argument("--markdown", help="write/update the measured part of this Markdown file")
    args = parser.parse_args()
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    before = os.getloadavg()
    records = study(sizes, big=args.big, repeat_large=args.repeat_large,
                    log=lambda line: print(line, file=sys.stderr, flush=True))
    after = os.getloadavg()
    result = rows(records)
    width = max(len(r["name"]) for r in result)
    for r in result:
        target = r["target"] or ""
        verdict = ("PASS" if _in_target(r["value"]) else "MISS") if target else ""
        print(f"{r['name']:<{width}}  {r['value']:10.3f} {r['unit']:<8} {target:>8} {verdict}")
    if args.plot:
        plot(records, args.plot)
    if args.markdown:
        command = "python bench/bench_scaling.py " + " ".join(sys.argv[1:])
        image = None if not args.plot else os.path.relpath(
            os.path.abspath(args.plot), os.path.dirname(os.path.abspath(args.markdown)))
        from CalibSegLib.io import replace_marked_section

        replace_marked_section(args.markdown, markdown(records, command.strip(), (before, after),
                                                       image), BEGIN, END,
                               heading="# Scaling study\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
