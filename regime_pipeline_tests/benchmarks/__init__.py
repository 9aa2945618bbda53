"""On-demand benchmarks: ``python -m regime_pipeline_tests.benchmarks [name ...]``.

Each ``bench_<name>.py`` module defines ``main(argv: list[str]) -> int`` (0 when its goal is
met). The files are deliberately not named ``test_*.py``: pytest never collects them, they
run only when asked for. Every benchmark times a baseline in the same process and prints
ratios against it, so figures from different machines stay comparable.
"""

from __future__ import annotations

import pkgutil
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PREFIX = "bench_"


def available() -> list[str]:
    """Names of the benchmarks in this package (module names without the ``bench_`` prefix)."""
    return sorted(
        m.name[len(PREFIX):] for m in pkgutil.iter_modules(__path__) if m.name.startswith(PREFIX)
    )


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """``with timer() as elapsed: ...`` then ``elapsed()`` is the block's wall time in seconds."""
    began = time.perf_counter()
    end: list[float] = []
    try:
        yield lambda: (end[0] if end else time.perf_counter()) - began
    finally:
        end.append(time.perf_counter())


def best_of(fn: Callable[[], object], runs: int, warmup: int = 1) -> tuple[float, list[float], object]:
    """Run `fn` `warmup` times untimed, then `runs` times; return (best seconds, all timings, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    timings = []
    for _ in range(runs):
        began = time.perf_counter()
        result = fn()
        timings.append(time.perf_counter() - began)
    return min(timings), timings, result


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
