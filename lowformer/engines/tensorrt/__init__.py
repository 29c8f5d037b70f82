"""TensorRT: engine build from ONNX, an engine runner, and parsers for TensorRT's profile JSON.

Written against the TensorRT 10.x and 11.x Python API and checked here only with a fake
`tensorrt` module (tests/fake_tensorrt.py): no GPU was available while writing it. `tensorrt`
is imported lazily, so this module imports fine without it.

Precision: TensorRT 11 builds strongly typed networks only (BuilderFlag.FP16/INT8 and the INT8
calibrators are gone), so the precision must be in the ONNX (model_fp16.onnx, Q/DQ model_int8.onnx).
TensorRT 10 also accepts a plain FP32 ONNX with --fp16 (weakly typed, BuilderFlag.FP16).
"""

from lowformer.engines.tensorrt.build import DEFAULT_TIMING_CACHE, build_engine
from lowformer.engines.tensorrt.environment import (default_engine_path, gpu_info,
                                                    next_step_command, tensorrt_status, trt_major)
from lowformer.engines.tensorrt.inspector import EngineLayer, engine_layers, parse_engine_layers
from lowformer.engines.tensorrt.onnx_facts import BuildPlan, OnnxFacts, check_request, inspect_onnx, plan_build
from lowformer.engines.tensorrt.runner import TensorRTRunner, TorchCudaIO, torch_dtype

__all__ = ["build_engine", "DEFAULT_TIMING_CACHE", "default_engine_path", "gpu_info", "next_step_command",
           "tensorrt_status", "trt_major", "EngineLayer", "engine_layers", "parse_engine_layers", "BuildPlan",
           "OnnxFacts", "check_request", "inspect_onnx", "plan_build", "TensorRTRunner", "TorchCudaIO", "torch_dtype"]
