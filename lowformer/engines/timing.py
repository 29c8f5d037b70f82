"""Timing a runner: one inference call as a zero-argument function, finished on the device."""
from __future__ import annotations

from typing import Callable

import numpy as np

from lowformer.core.timing import TimingStats, time_calls
from lowformer.engines.base import Runner


def call_once(runner: Runner, batch: np.ndarray) -> Callable[[], None]:
    """A zero-argument function doing one inference call, finished on the device when it returns.

    Torch runners get the input placed on their device once (no host copies timed) and a CUDA
    synchronise after each call; ONNX Runtime's `run` is synchronous; other runners go through
    `Runner.run`, whose output is on the host.
    """
    import torch

    fixed = runner.input_spec.fixed_batch
    module = getattr(runner, "module", None)
    if runner.backend in ("pytorch", "torchscript") and module is not None and not (fixed and fixed != len(batch)):
        device = torch.device("cuda" if runner.device == "cuda" else "cpu")
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def run_torch() -> None:
            with torch.inference_mode():
                module(x)
            sync()
        return run_torch
    session = getattr(runner, "session", None)
    if runner.backend == "onnxruntime" and session is not None and not (fixed and fixed != len(batch)):
        feed = {runner.input_spec.name: np.ascontiguousarray(batch, np.float32)}
        names = [runner.output_name]
        return lambda: session.run(names, feed)
    return lambda: runner.run(batch)


def time_runner(runner: Runner, batch: np.ndarray, iterations: int, warmup: int = 10) -> TimingStats:
    return time_calls(call_once(runner, batch), iterations, warmup)
