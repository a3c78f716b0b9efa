"""The one way the benchmarks time a Python call: the median wall time of ``repeat`` calls after
``warmup`` untimed ones, with ``sync`` (e.g. a GPU's synchronize) after each call."""

from __future__ import annotations

import statistics
import time


def median_run(fn, repeat: int, *, warmup: int = 0, sync=None):
    """``(median seconds, the last call's result)`` of ``repeat`` timed calls of ``fn``."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
