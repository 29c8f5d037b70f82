"""The one timing loop: warm-up, timed calls, median / mean / p90 / min / max in ms."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Sequence

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

    @classmethod
    def from_ms(cls, times: Sequence[float]) -> "TimingStats":
        if not times:
            raise LowformerError("no timed iterations")
        a = np.asarray(times, dtype=np.float64)
        return cls(len(a), float(np.median(a)), float(a.mean()), float(np.percentile(a, 90)),
                   float(a.min()), float(a.max()))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def time_calls(fn: Callable[[], Any], iterations: int, warmup: int = 10,
               sync: Optional[Callable[[], None]] = None,
               before_timing: Optional[Callable[[], None]] = None) -> TimingStats:
    """Call `fn` `warmup` times untimed, then `iterations` times timed.

    `sync` runs inside each timed call (e.g. torch.cuda.synchronize, so GPU work is counted);
    `before_timing` runs once between warm-up and timing (e.g. a barrier shared by processes).
    """
    for _ in range(max(warmup, 0)):
        fn()
    if sync:
        sync()
    if before_timing:
        before_timing()
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


def time_for(fn: Callable[[], Any], seconds: float, max_iterations: int, min_iterations: int = 3,
             sync: Optional[Callable[[], None]] = None) -> TimingStats:
    """One warm-up call, then as many timed calls as fit in `seconds` (within the bounds)."""
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    first = time.perf_counter() - t0
    n = max(min_iterations, min(max_iterations, int(seconds / max(first, 1e-4))))
    return time_calls(fn, n, warmup=0, sync=sync)
