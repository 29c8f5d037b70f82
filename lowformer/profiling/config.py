"""`ProfileConfig`: what `profile` measures and how (lowformer.core.config), one typed object
instead of a dozen keyword arguments."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lowformer.core.config import Config
from lowformer.engines.config import RunConfig


@dataclass(frozen=True)
class ProfileConfig(Config):
    """`batch_size`: images per profiled call; `iterations`: profiled calls (and as many
    un-instrumented calls for the latency); `warmup`: untimed calls first; `image_size` and
    `checkpoint`: of MODEL names (checkpoint None: random init); `record`: write each artifact's
    per-block and per-stage times into its manifest entry. `run`: where and how the targets run
    (lowformer.engines.config.RunConfig: device cpu | cuda, threads, runtimes, precisions)."""

    batch_size: int = 1
    iterations: int = 100
    warmup: int = 20
    image_size: int = 224
    checkpoint: Optional[str] = None
    record: bool = True
    run: RunConfig = field(default_factory=RunConfig)
