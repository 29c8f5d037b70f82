"""The formats of the benchmark table: their names, titles, files and how each is loaded for timing.

One list for `benchmarks/run.py` and `lowformer sweep`: a cell's format is one of FORMATS.
"""
from __future__ import annotations

from typing import List, Optional

FORMATS = ["eager", "torchscript", "pt2", "aoti", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16",
           "openvino-int8", "executorch-fp32", "executorch-int8"]
FORMAT_TITLES = {"eager": "eager", "torchscript": "TorchScript", "pt2": "torch.export", "aoti": "AOTInductor",
                 "onnx-fp32": "ORT FP32", "onnx-fp16": "ORT FP16", "onnx-int8": "ORT INT8",
                 "openvino-fp32": "OV FP32", "openvino-bf16": "OV BF16", "openvino-int8": "OV INT8",
                 "executorch-fp32": "XNNPACK FP32", "executorch-int8": "XNNPACK INT8"}
FP32_FORMATS = ("eager", "torchscript", "pt2", "aoti", "onnx-fp32", "openvino-fp32", "executorch-fp32")
INT8_FORMATS = ("onnx-int8", "openvino-int8", "executorch-int8")
# ExecuTorch programs have a static batch of 1 (what a phone runs): their other batch cells say so
STATIC_BATCH_1 = ("executorch-fp32", "executorch-int8")
STATIC_BATCH_STATUS = "static batch 1 (a phone's program)"
FILES = {"torchscript": "model.ts", "pt2": "model.pt2", "aoti": "model_aoti_cpu.pt2", "onnx-fp32": "model.onnx",
         "onnx-fp16": "model_fp16.onnx", "onnx-int8": "model_int8.onnx", "openvino-fp32": "model.onnx",
         "openvino-bf16": "model.onnx", "openvino-int8": "model_int8_openvino.onnx",
         "executorch-fp32": "model.pte", "executorch-int8": "model_int8.pte"}
NEEDS_ONNX = ("onnx-fp16", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
# the formats built from INT8 calibration images (none without them)
CALIBRATED = ("onnx-int8", "openvino-int8", "executorch-int8")
# (runtime, OpenVINO inference precision) a format's file is loaded with (lowformer.engines.load); else its own
RUNS = {"openvino-fp32": ("openvino", "f32"), "openvino-bf16": ("openvino", "bf16"),
        "openvino-int8": ("openvino", "f32")}


def prerequisite(fmt: str) -> Optional[str]:
    """The format whose artifact `fmt` is made from (AOTInductor from torch.export, the ONNX-based ones
    from the FP32 ONNX), or None."""
    return "pt2" if fmt == "aoti" else "onnx-fp32" if fmt in NEEDS_ONNX else None


def standard_notes(isa: str) -> List[str]:
    """The notes every benchmark table carries: the ISA, and how each format is built and run."""
    return [f"CPU ISA: {isa}.",
            "ONNX FP16 is built and parity-checked but not timed: ONNX Runtime's CPU provider runs FP16 "
            "convolutions through its FP32 kernels with casts around them; FP16 is a GPU/TensorRT format.",
            "TorchScript is scripted, frozen and `torch.jit.optimize_for_inference`d when loaded "
            "(the paper's `--optit`). torch.export runs the exported program's module (eager kernels); "
            "AOTInductor is that program compiled ahead of time for this CPU (-march=native).",
            "OpenVINO (CPU plugin, LATENCY hint) reads the FP32 ONNX at f32 and at bf16 inference precision "
            "(bf16 needs AVX-512-BF16/AMX: n/a elsewhere), and the INT8 Q/DQ ONNX of the `openvino` target "
            "(symmetric s8).",
            "Peers are timm models (the six the paper benchmarks that timm lacks are lowformer.models.peers, "
            "registered in timm), reparameterized for inference (`timm.utils.model.reparameterize_model`).",
            "XNNPACK: ExecuTorch `.pte` programs on its Python runtime (XNNPACK delegate), FP32 and PT2E INT8 "
            "(16 ImageNet calibration images, ReLU6 fused, attention explicit); a phone's static batch of 1, so "
            "their batch-16 cells are n/a."]


def int8_note(isa: str) -> str:
    """The note of the ORT INT8 column: the `cpu` target's Q/DQ as this CPU's ISA makes it."""
    from lowformer.calibrate.qdq import target_config

    bits = target_config("cpu").describe()["weight_bits"]  # follows this CPU's ISA (--weight-bits auto)
    return (f"ORT INT8: the `cpu` target's Q/DQ (u8 activations, {bits}-bit s8 weights, min-max ranges from "
            f"16 ImageNet images) run by ONNX Runtime's CPU provider on this {isa} CPU.")
