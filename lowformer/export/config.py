"""`ExportConfig`: everything an export is asked (targets, precisions, input, calibration, the
options of one target), one typed object instead of sixteen keyword arguments."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from lowformer.artifacts import DEFAULT_LOCK_TIMEOUT_S
from lowformer.calibrate.config import CalibrationConfig
from lowformer.core.config import Config


@dataclass(frozen=True)
class ExportConfig(Config):
    """`to`: the targets (the registered writers, `lowformer.engines.registry.export_targets()`);
    `fp16` / `int8`: also the FP16 / calibrated INT8 versions (`calib`: how, lowformer.calibrate.config);
    `checkpoint`: the weights (None: random, for testing the toolchain); `image_size`, `batch_size`
    (None: a dynamic batch axis), `opset`; `out`: the folder (default artifacts/<model>-<size>);
    `fuse`: fold BatchNorm first; `data`: an image folder whose images join the parity check;
    `keep_f32`: blocks an OpenVINO IR keeps at f32 under a bf16/f16 hint; `trt_build`: TensorRT
    build settings (min_batch, opt_batch, max_batch, workspace_mb, timing_cache); `lock_timeout`:
    seconds to wait while another process writes the folder."""

    to: Tuple[str, ...] = ("onnx",)
    fp16: bool = False
    int8: bool = False
    checkpoint: Optional[str] = None
    image_size: int = 224
    batch_size: Optional[int] = None
    opset: int = 17
    out: Optional[str] = None
    fuse: bool = True
    data: Optional[str] = None
    calib: CalibrationConfig = field(default_factory=CalibrationConfig)
    keep_f32: Tuple[str, ...] = ()
    trt_build: Dict[str, Any] = field(default_factory=dict)
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S

    @classmethod
    def build(cls, value: Union["ExportConfig", Mapping[str, Any], None] = None, **fields: Any) -> "ExportConfig":
        """Config.build, also taking `do_fuse` for `fuse` (the older keyword)."""
        if "do_fuse" in fields:
            fields["fuse"] = fields.pop("do_fuse")
        return super().build(value, **fields)

    def __post_init__(self) -> None:
        to = (self.to,) if isinstance(self.to, str) else tuple(self.to or ())
        object.__setattr__(self, "to", to)
        object.__setattr__(self, "keep_f32", tuple(self.keep_f32 or ()))
        object.__setattr__(self, "trt_build", {k: v for k, v in dict(self.trt_build or {}).items() if v is not None})
