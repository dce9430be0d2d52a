"""Wall-clock timing shared by the benchmark suites."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def sample_times(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls of ``fn`` and the last call's result."""
    times, result = [], None
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds."""
    return min(sample_times(fn, repeats)[0])


def typical_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median of ``repeats`` calls in seconds (the fastest when fewer than three)."""
    times = sample_times(fn, repeats)[0]
    return min(times) if len(times) < 3 else statistics.median(times)


def print_rows(rows: list[dict[str, Any]]) -> None:
    """Print a suite's rows (``name``, ``value``, ``unit``, ``target``) as an aligned table."""
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        target = "" if r["target"] is None else (
            r["target"] if isinstance(r["target"], str) else f"<= {r['target']}")
        print(f"{r['name']:<{width}}  {r['value']:10.3f} {r['unit']:<6} {target}")
