"""`HarnessConfig`: how `lowformer.core.harness.interleaved` times its jobs (rounds, calls, warm-up,
copies), one typed object (lowformer.core.config). A module of its own: the harness's worker
processes load harness.py without the lowformer package, so harness.py imports this only when the
parent calls `interleaved`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

from lowformer.core.config import Config


@dataclass(frozen=True)
class HarnessConfig(Config):
    """`rounds`: rounds per batch size, interleaved across the jobs; `seconds`: batch size -> seconds of
    calls per job over all rounds (not used with `calls`); `max_calls`: the most timed calls of a round;
    `calls`: exactly that many timed calls per job and batch size instead, split over the rounds (None:
    timed by `seconds`); `min_calls`: the least timed calls over all rounds; `warmup`: untimed calls
    before a job's first round; `rewarm`: untimed calls before a later round that follows another job's
    (None: 1 at batch 1, where the other job evicted the caches, else 0); `copies`: workers per job,
    timed at once; `needs`: job key -> the batch sizes it lacks (None: every job every batch size, else
    a resumed run); `path`: folders the workers import their functions from; `timeout_s`: seconds a
    worker may take to answer (None: harness.TIMEOUT_S)."""

    rounds: int = 5
    seconds: Dict[int, float] = field(default_factory=dict)
    max_calls: int = 1000
    calls: Optional[int] = None
    min_calls: int = 3
    warmup: int = 2
    rewarm: Optional[int] = None
    copies: int = 1
    needs: Optional[Dict[str, Sequence[int]]] = None
    path: Tuple[str, ...] = ()
    timeout_s: Optional[float] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", dict(self.seconds or {}))
        object.__setattr__(self, "path", (self.path,) if isinstance(self.path, str) else tuple(self.path or ()))
