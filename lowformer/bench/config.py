"""`BenchConfig`: what `bench` times and how (lowformer.core.config), one typed object instead of
sixteen keyword arguments."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lowformer.core.config import Config
from lowformer.engines.config import RunConfig


@dataclass(frozen=True)
class BenchConfig(Config):
    """`batch_size`: images per call (None: the paper's 200 on cuda, 16 on cpu; latency mode: 1);
    `iterations`: timed calls per target (None: 400 on cuda, else timed by `duration`); `duration`:
    seconds of timed calls per target instead of `iterations` (None: 5 on a CPU); `warmup`: untimed
    calls first (None: 20 on cuda, 3 on cpu); `latency`: ms per batch-1 call (forces batch 1); `jobs`:
    worker processes per target timing together (the result is the mean of their medians);
    `image_size` and `checkpoint`: of MODEL names (checkpoint None: random init); `optit`: MODEL names
    as BN-fused TorchScript + optimize_for_inference (the paper's --optit); `record`: write each
    artifact's timing into its manifest entry. `run`: where and how the targets run
    (lowformer.engines.config.RunConfig: device cpu | cuda, threads per process (None: the runtime's;
    cores/jobs with several jobs), runtimes, precisions)."""

    batch_size: Optional[int] = None
    iterations: Optional[int] = None
    duration: Optional[float] = None
    warmup: Optional[int] = None
    latency: bool = False
    jobs: int = 1
    image_size: int = 224
    optit: bool = False
    checkpoint: Optional[str] = None
    record: bool = True
    run: RunConfig = field(default_factory=RunConfig)
