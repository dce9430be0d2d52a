"""A shared pool of worker threads for the compiled (``nogil``) kernels.

The kernels split their voxels into one range per thread; starting threads on
every call costs milliseconds, which shows on small volumes and on the Slicer
module's live temperature slider, so the threads are kept between calls.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def default_threads() -> int:
    """Threads to use: torch's intra-op setting, at most the CPU count."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def run_parallel(work: Callable[[int], None], count: int) -> None:
    """Call ``work(0) … work(count - 1)``, on the shared pool when ``count > 1``."""
    global _pool
    if count <= 1:
        work(0)
        return
    with _lock:
        if _pool is None or _pool._max_workers < count:  # noqa: SLF001 - size check only
            _pool = ThreadPoolExecutor(max_workers=max(count, os.cpu_count() or 1),
                                       thread_name_prefix="calibseg")
        pool = _pool
    list(pool.map(work, range(count)))


def run_tasks(work: Callable[[int], None], tasks: int, threads: int) -> None:
    """Call ``work(0) … work(tasks - 1)`` on up to ``threads`` threads.

    Each thread takes the next task when it finishes one, so a core slowed by other
    load (common on shared machines) takes fewer tasks instead of holding up the
    whole call, as an even split into ``threads`` parts would.
    """
    threads = max(1, min(int(threads), int(tasks)))
    if threads == 1:
        for index in range(tasks):
            work(index)
        return
    counter = itertools.count()
    lock = threading.Lock()

    def worker(_: int) -> None:
        while True:
            with lock:
                index = next(counter)
            if index >= tasks:
                return
            work(index)

    run_parallel(worker, threads)


def guided_bounds(n: int, threads: int, smallest: int) -> list[int]:
    """Task bounds over ``[0, n)`` for :func:`run_tasks`: each task takes a
    ``1 / (2 * threads)`` share of what is left (at least ``smallest``), so tasks
    start large (little per-task overhead) and end small (threads finish together).
    The bounds depend only on the arguments, never on scheduling; one thread gets
    one task."""
    if int(threads) <= 1:
        return [0, n] if n > 0 else [0]
    bounds = [0]
    while bounds[-1] < n:
        size = max(int(smallest), (n - bounds[-1]) // (2 * int(threads)), 1)
        bounds.append(min(n, bounds[-1] + size))
    return bounds
