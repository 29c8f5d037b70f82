"""`TrtBuildConfig`: how a TensorRT engine is built (precision, optimization profile, workspace,
timing cache), one typed object (lowformer.core.config) taken by `build_engine`, `plan_build` and
`next_step_command`. `ExportConfig.trt_build` holds the same fields (as a mapping)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from lowformer.core.config import Config

DEFAULT_MAX_BATCH = 32  # a dynamic-batch ONNX gets an engine for batches 1..32 unless told otherwise
DEFAULT_WORKSPACE_MB = 2048


def default_batch_range(onnx_batch: Optional[int], min_batch: Optional[int], opt_batch: Optional[int],
                        max_batch: Optional[int]) -> Tuple[int, int, int]:
    """The optimization profile's batches: the ONNX's own when it is fixed, else 1 / 1 / 32."""
    if onnx_batch is not None:
        return min_batch or onnx_batch, opt_batch or onnx_batch, max_batch or onnx_batch
    lo = min_batch or 1
    hi = max_batch or max(DEFAULT_MAX_BATCH, lo, opt_batch or 1)
    return lo, opt_batch or lo, hi


@dataclass(frozen=True)
class TrtBuildConfig(Config):
    """`fp16` / `int8`: an FP16 engine (from model_fp16.onnx; TensorRT 10 also from an FP32 ONNX) /
    an INT8 engine from a Q/DQ ONNX; `strongly_typed`: build a strongly typed network (None: when the
    ONNX carries its precision, and always on TensorRT 11); `min_batch`, `opt_batch`, `max_batch`: the
    optimization profile (None: the ONNX's fixed batch, else 1, `min_batch` and 32); `workspace_mb`:
    the builder's workspace; `timing_cache`: the timing cache file reused across builds (None:
    trt-timing.cache beside the engine)."""

    fp16: bool = False
    int8: bool = False
    strongly_typed: Optional[bool] = None
    min_batch: Optional[int] = None
    opt_batch: Optional[int] = None
    max_batch: Optional[int] = None
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: Union[str, os.PathLike, None] = None

    def __post_init__(self) -> None:
        if self.workspace_mb is None:  # as None means elsewhere: the default
            object.__setattr__(self, "workspace_mb", DEFAULT_WORKSPACE_MB)

    def resolved(self, onnx_batch: Optional[int]) -> "TrtBuildConfig":
        """The same, with the profile's batches filled in for an ONNX whose batch is `onnx_batch`
        (None: dynamic), as `default_batch_range` does."""
        lo, opt, hi = default_batch_range(onnx_batch, self.min_batch, self.opt_batch, self.max_batch)
        return self.replace(min_batch=lo, opt_batch=opt, max_batch=hi)
