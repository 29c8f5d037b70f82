"""Explicit-quantization (Q/DQ) ONNX from precomputed activation ranges, per deployment target.

ONNX Runtime's `quantize_static` does the graph work. It accepts a calibration cache file in place
of a data reader (ORT >= 1.20: `calibration_cache_path`), so we hand it the ranges we derived from
our own histogram cache and it never runs the model.
"""
from __future__ import annotations

import dataclasses
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path
from lowformer.calibrate.cache import quiet_ort

TARGETS = ("cpu", "tensorrt", "openvino")
WEIGHT_BITS = ("auto", "7", "8")  # `--weight-bits`: auto = 7 on x86 without VNNI (cpu/openvino targets, NNCF), else 8
WEIGHTED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]


@dataclass(frozen=True)
class TargetConfig:
    """How one deployment target wants its Q/DQ graph."""

    name: str
    activation_type: str  # "QInt8" | "QUInt8"
    weight_type: str
    op_types: Tuple[str, ...]
    extra_options: Dict[str, Any] = field(default_factory=dict)
    residual_adds_only: bool = True  # quantize Add only where both inputs are activations
    # 7-bit weights: no u8 x s8 pair-sum saturation on AVX2 without VNNI. None: decided by the ISA of
    # the machine that quantizes (`resolve_weight_bits`).
    reduce_range: Optional[bool] = False
    weight_bits_reason: str = ""

    def describe(self) -> Dict[str, Any]:
        return {"target": self.name, "format": "QDQ", "activation_type": self.activation_type,
                "weight_type": self.weight_type, "per_channel": True, "reduce_range": self.reduce_range,
                "weight_bits": 7 if self.reduce_range else 8, "weight_bits_reason": self.weight_bits_reason,
                "activation_symmetric":
                bool(self.extra_options.get("ActivationSymmetric")), "op_types": list(self.op_types),
                # s8 x s8 runs through ORT CPU's int8 kernels with saturation on x86 without VNNI (EffNet-Lite0:
                # cosine 0.72 vs 0.994): check a tensorrt-target model with ORT_DISABLE_ALL (reference math).
                "parity_needs_reference_math": self.activation_type == "QInt8"}


TARGET_CONFIGS: Dict[str, TargetConfig] = {
    # TensorRT: symmetric s8 everywhere (zero point 0); Q/DQ only on the inputs of weighted layers and of
    # residual Adds, which TensorRT fuses into int8 kernels (conv + residual add).
    "tensorrt": TargetConfig(
        "tensorrt", "QInt8", "QInt8", tuple(WEIGHTED_OPS + ["Add"]),
        # Biases stay float: TensorRT rejects int32 bias DequantizeLinear nodes (onnx-tensorrt#850) and
        # quantizes the bias itself when it fuses the conv (checked by engines/tensorrt/support.py).
        {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
         "OpTypesToExcludeOutputQuantization": WEIGHTED_OPS + ["Add"]}),
    # ONNX Runtime CPU: u8 activations x s8 per-channel weights (MLAS' u8s8 kernels; s8 activations ran
    # 2x slower than FP32 here). 7-bit weights (reduce_range): on x86 without VNNI (this AVX2 EPYC) the
    # u8s8 kernels sum pairs of products in int16 and saturate; measured on EfficientNet-Lite0, full
    # 8-bit weights dropped logit cosine from 0.994 (reference math) to 0.934, 7-bit gave 0.979 with
    # kernels matching reference math. Clip/Relu are listed so ORT folds them into the conv's output
    # range instead of quantizing the wide pre-activation range. ConvTranspose stays float: ORT's CPU
    # provider has no int8 ConvTranspose, so its Q/DQ pairs only add work.
    # With VNNI (or AMX) the kernels sum in int32 and full 8-bit weights are exact, so the default
    # follows the quantizing machine's ISA (`--weight-bits 7` for an artifact bound for an AVX2 CPU).
    "cpu": TargetConfig("cpu", "QUInt8", "QInt8", ("Conv", "MatMul", "Gemm", "Add", "Clip", "Relu"), {},
                        reduce_range=None),
    # OpenVINO CPU plugin (the Q/DQ alternative to NNCF, lowformer/calibrate/nncf.py): symmetric s8
    # activations and full 8-bit s8 weights, Q/DQ on the inputs of weighted layers and residual Adds.
    # The `cpu` graph's u8 activations with a zero point make the plugin subtract the zero point in a
    # separate (reference-kernel) Convert + Subtract before each convolution: B1 at 224 ran 1.3-1.7x
    # slower than with this graph, no faster than its own BF16 run of the FP32 ONNX. Measured against
    # NNCF's INT8 IR of the same model: 4-10 % faster, as accurate (lowformer/calibrate/nncf.py).
    # The plugin's oneDNN kernels are u8 x s8 too (s8 activations shifted by 128): without VNNI their
    # int16 pair sums saturate like ORT's (B1 on an AVX2 EPYC: IR cosine 0.852 with 8-bit weights), so
    # the weight range follows the ISA as for the cpu target.
    "openvino": TargetConfig(
        "openvino", "QInt8", "QInt8", tuple(WEIGHTED_OPS + ["Add"]),
        # Biases stay float: OpenVINO folds a float bias into the int8 convolution itself.
        {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
         "OpTypesToExcludeOutputQuantization": WEIGHTED_OPS + ["Add"]}, reduce_range=None),
}


def target_config(target: str, weight_bits: "str | int | None" = "auto") -> TargetConfig:
    """The target's Q/DQ configuration, its weight range resolved (`resolve_weight_bits`)."""
    if target not in TARGET_CONFIGS:
        raise LowformerError(f"unknown INT8 target {target!r} (use {', '.join(TARGETS)})")
    return resolve_weight_bits(TARGET_CONFIGS[target], weight_bits)


def resolve_weight_bits(cfg: TargetConfig, weight_bits: "str | int | None" = "auto") -> TargetConfig:
    """7- or 8-bit weights: asked for, the target's fixed choice (tensorrt: a GPU), or (auto) by this CPU."""
    if cfg.reduce_range is not None and (weight_bits is None or str(weight_bits).strip().lower() == "auto"):
        return dataclasses.replace(cfg, weight_bits_reason=f"fixed by the {cfg.name} target")
    bits, why = choose_weight_bits(weight_bits)
    return dataclasses.replace(cfg, reduce_range=bits == 7, weight_bits_reason=why)


def choose_weight_bits(weight_bits: "str | int | None" = "auto",
                       flags: Optional[List[str]] = None) -> Tuple[int, str]:
    """(7 or 8, why) for an x86 INT8 artifact: asked for, or (auto) by the quantizing CPU's ISA, the
    default for where the artifact runs. 7 on x86 without VNNI/AMX-INT8, whose u8 x s8 kernels
    (vpmaddubsw) sum pairs of products in int16 and saturate (255 x 127 x 2 > 32767; 255 x 64 x 2
    fits); 8 where VNNI/AMX sum in int32. One rule for the cpu and openvino Q/DQ and NNCF."""
    from lowformer.core.machine import cpu_flags, cpu_isa, has_int8_dot_product

    bits = "auto" if weight_bits is None else str(weight_bits).strip().lower()
    if bits not in WEIGHT_BITS:
        raise LowformerError(f"unknown weight bits {weight_bits!r} (use {', '.join(WEIGHT_BITS)})")
    if bits != "auto":
        return int(bits), f"--weight-bits {bits}"
    flags = cpu_flags() if flags is None else flags
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    if x86 and not has_int8_dot_product(flags):
        return 7, f"auto: this CPU ({cpu_isa(flags)}) has no VNNI, 7-bit weights avoid int16 saturation"
    return 8, f"auto: this CPU ({cpu_isa(flags)}) sums u8 x s8 in int32, full 8-bit weights"


def _constant_names(model) -> set:
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return consts


def non_residual_adds(model) -> List[str]:
    """Add nodes with a constant operand (biases, norm epsilons): not worth a Q/DQ pair."""
    consts = _constant_names(model)
    return [n.name for n in model.graph.node
            if n.op_type == "Add" and any(i in consts for i in n.input)]


def prepare_model(src: Path, dst: Path) -> None:
    """Constant nodes -> initializers (ORT's quantizer treats a Constant-fed weight as an activation)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    keep = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            arr = numpy_helper.to_array(value.t)
            model.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    onnx.save(model, str(dst))


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def quantize_with_ranges(prepared: Path, dst: Path, ranges: Dict[str, Tuple[float, float]], method: str,
                         target: "str | TargetConfig", nodes_to_exclude: Sequence[str] = (),
                         extra_options: Dict[str, Any] | None = None,
                         weight_bits: "str | int | None" = "auto") -> Dict[str, Any]:
    """Write the Q/DQ model of `prepared` to `dst` (atomically) using the given activation ranges.

    `target`: a target name or an explicit TargetConfig (the speed benchmark tries variants);
    `weight_bits`: auto, 7 or 8 (`resolve_weight_bits`)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    cfg = resolve_weight_bits(target, weight_bits) if isinstance(target, TargetConfig) else \
        target_config(target, weight_bits)
    model = onnx.load(str(prepared), load_external_data=False)
    exclude = list(dict.fromkeys(list(nodes_to_exclude) + (non_residual_adds(model) if cfg.residual_adds_only else [])))
    options = {**cfg.extra_options, **(extra_options or {})}
    data = {name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
            for name, (lo, hi) in ranges.items()}
    with tempfile.TemporaryDirectory(prefix="lowformer-q-") as tmp:
        ort_cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(_ort_method(method), data), ort_cache)
        with atomic_path(dst) as out, quiet_ort():
            try:
                quantize_static(str(prepared), str(out), calibration_data_reader=None,
                                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(cfg.op_types),
                                per_channel=True, reduce_range=cfg.reduce_range,
                                activation_type=getattr(QuantType, cfg.activation_type),
                                weight_type=getattr(QuantType, cfg.weight_type),
                                nodes_to_exclude=exclude, calibrate_method=_ort_method(method),
                                extra_options=options, calibration_cache_path=str(ort_cache))
            except (ValueError, RuntimeError, KeyError) as e:
                raise LowformerError(f"ONNX Runtime quantization failed: {str(e).splitlines()[0]}") from None
    return {**cfg.describe(), "method": method, "extra_options": {k: v for k, v in options.items()},
            "excluded_nodes": len(nodes_to_exclude)}


def qdq_summary(path: Path) -> Dict[str, Any]:
    """What the Q/DQ graph holds: counts, activation/weight dtypes, zero points, per-channel weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    act_types, weight_types, zero_points, per_channel = set(), set(), set(), 0
    for n in q:
        if len(n.input) > 2 and n.input[2] in inits:
            zp = inits[n.input[2]]
            act_types.add(str(zp.dtype))
            zero_points.update(int(v) for v in np.ravel(zp))
    for n in dq:
        if n.input[0] in inits and inits[n.input[0]].dtype in (np.int8, np.uint8):
            weight_types.add(str(inits[n.input[0]].dtype))
            if np.ndim(inits[n.input[1]]) == 1 and inits[n.input[1]].size > 1:
                per_channel += 1
    return {"quantize_nodes": len(q), "dequantize_nodes": len(dq), "activation_dtypes": sorted(act_types),
            "weight_dtypes": sorted(weight_types), "per_channel_weights": per_channel,
            "activation_zero_points": sorted(zero_points)[:8] if len(zero_points) <= 8 else "varied"}
