"""`CalibrationConfig`: how an INT8 model is calibrated and quantized (ONNX Runtime quantization's
typed-config style: one object instead of a dozen keyword arguments)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from lowformer.calibrate.distill import DistillConfig
from lowformer.core.config import Config

DEFAULT_EVAL_SIZE = 200


@dataclass(frozen=True)
class CalibrationConfig(Config):
    """`calib_data`: the calibration image folder (required for INT8); `calib_size` images of it,
    class-stratified. `method`: entropy | minmax | percentile activation ranges. `target`: the INT8
    flavour (cpu: u8 activations for x86 VNNI; tensorrt: symmetric s8; openvino: symmetric s8 Q/DQ, or
    NNCF's IR). `quantizer`: qdq | nncf (None: the target's default, lowformer.calibrate.nncf).
    `weight_bits`: auto | 7 | 8 (auto: 7 on x86 without VNNI). `exclude`: module globs (or block
    names) kept in float; `auto_exclude`: keep blocks in float until the top-1 drop on a held-out
    split (`eval_data`/`eval_size`, else part of `calib_data`) is at most `gate_top1_drop` points.
    `quantizer_reason`: why the quantizer was chosen (set by lowformer.calibrate.nncf.check_quantizer).
    `qat`: quantization-aware distillation after calibration (lowformer.calibrate.distill; off by default)."""

    calib_data: Optional[str] = None
    calib_size: int = 512
    method: str = "percentile"
    target: str = "cpu"
    quantizer: Optional[str] = None
    weight_bits: str = "auto"
    exclude: Tuple[str, ...] = ()
    auto_exclude: bool = False
    gate_top1_drop: float = 1.0
    eval_data: Optional[str] = None
    eval_size: int = DEFAULT_EVAL_SIZE
    quantizer_reason: Optional[str] = None  # why the quantizer was chosen (set by check_quantizer)
    qat: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))
        object.__setattr__(self, "weight_bits", str(self.weight_bits or "auto"))
