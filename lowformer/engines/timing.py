"""Timing a runner: one inference call as a zero-argument function, finished on the device."""
from __future__ import annotations

from typing import Callable

import numpy as np

from lowformer.core.timing import TimingStats, time_calls
from lowformer.engines.base import Runner


def call_once(runner: Runner, batch: np.ndarray) -> Callable[[], None]:
    """A zero-argument function doing one inference call, finished on the device when it returns
    (each runner says how: `Runner.timed_call`)."""
    return runner.timed_call(batch)


def time_runner(runner: Runner, batch: np.ndarray, iterations: int, warmup: int = 10) -> TimingStats:
    return time_calls(call_once(runner, batch), iterations, warmup)
