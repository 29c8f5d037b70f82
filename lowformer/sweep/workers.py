"""Harness workers (lowformer.core.harness) of the benchmark table, named `module:function`: the eager
model in its inference form. The artifacts' worker is `lowformer.bench.workers:open_artifact`."""
from __future__ import annotations

from typing import Optional


def open_eager(name: str, size: int, threads: Optional[int]):
    """The eager model (reparameterized, random seeded weights) in a PyTorch runner: (one inference
    call for a batch size, facts)."""
    from lowformer.engines import InputSpec, PyTorchRunner
    from lowformer.engines.timing import call_once
    from lowformer.sweep.build import inference_model

    runner = PyTorchRunner(inference_model(name)[0], InputSpec(shape=(None, 3, size, size)), threads=threads)
    return (lambda bs: call_once(runner, runner.input_spec.example(bs))), {"backend": runner.backend}
