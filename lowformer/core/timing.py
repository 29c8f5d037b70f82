"""Timing statistics (median / mean / p10 / p90 / min / max in ms, reliability warnings) and the in-process
loop that profiling and sensitivity measurements use beside their profile. Speed figures (`bench`, the
export's INT8 speed check, benchmarks/) come from the harness, lowformer.core.harness: every job in its
own worker process, in interleaved rounds."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from lowformer.core.errors import LowformerError


@dataclass
class TimingStats:
    """Per-call wall times in ms (device-synchronised)."""

    n: int
    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    p10_ms: float = 0.0

    @classmethod
    def from_ms(cls, times: Sequence[float]) -> "TimingStats":
        if not times:
            raise LowformerError("no timed iterations")
        a = np.asarray(times, dtype=np.float64)
        return cls(len(a), float(np.median(a)), float(a.mean()), float(np.percentile(a, 90)),
                   float(a.min()), float(a.max()), float(np.percentile(a, 10)))

    @property
    def spread(self) -> float:
        """p90 / median: 1.0 for perfectly steady timings."""
        return self.p90_ms / self.median_ms if self.median_ms > 0 else float("inf")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


MAX_SPREAD = 1.5  # p90 / median above this: the figure is not one steady number
MIN_ITERATIONS = 10


def reliability_warnings(stats: TimingStats, load_average: Optional[Sequence[float]] = None,
                         cores: Optional[int] = None) -> List[str]:
    """What makes a latency figure untrustworthy, one line each (empty: it can be quoted)."""
    out = []
    if stats.spread > MAX_SPREAD:
        out.append(f"unsteady timings: p90 {stats.p90_ms:.3g} ms is {stats.spread:.1f}x the median "
                   f"{stats.median_ms:.3g} ms (other work on the machine, or too few warm-up calls)")
    if load_average and cores and load_average[0] > cores:
        out.append(f"the machine was busy: load average {load_average[0]:.1f} on {cores} cores; "
                   "measure again on an idle machine")
    if stats.n < MIN_ITERATIONS:
        out.append(f"only {stats.n} timed calls: the median is rough")
    return out


def time_calls(fn: Callable[[], Any], iterations: int, warmup: int = 10,
               sync: Optional[Callable[[], None]] = None) -> TimingStats:
    """Call `fn` `warmup` times untimed, then `iterations` times timed, in this process.

    `sync` runs inside each timed call (e.g. torch.cuda.synchronize, so GPU work is counted).
    """
    for _ in range(max(warmup, 0)):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(max(iterations, 1)):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return TimingStats.from_ms(times)


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` calls, in seconds (for peak measurements, where the minimum is the figure)."""
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
