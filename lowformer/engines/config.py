"""`RunConfig`: where and how the artifacts of a command run (device, threads, runtimes, precisions),
one typed object shared by validate, explain, profile and bench (lowformer.core.config)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from lowformer.core.config import Config


def as_tuple(value: Any) -> Tuple[Any, ...]:
    """A tuple of `value`'s items (a lone string is one item, None is none)."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class RunConfig(Config):
    """`device`: where the artifacts run (cpu, cuda; validate also tensorrt: ONNX Runtime's GPU
    providers and TensorRT engines); `threads`: intra-op threads of each runtime (None: the
    runtime's default); `runtimes`: other runtimes that also run each artifact whose format they
    take (an ONNX through openvino; empty or "auto": each format's own, lowformer.engines.runtimes);
    `precisions`: inference-precision settings of the runtimes that have one (f32 | bf16 | f16),
    each run on its own."""

    device: str = "cpu"
    threads: Optional[int] = None
    runtimes: Tuple[str, ...] = ()
    precisions: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtimes", as_tuple(self.runtimes))
        object.__setattr__(self, "precisions", as_tuple(self.precisions))
