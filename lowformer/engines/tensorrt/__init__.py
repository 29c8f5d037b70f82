"""TensorRT: engine build from ONNX, an engine runner, and parsers for TensorRT's profile JSON.

Every TensorRT name this package uses (classes, methods, properties, enum members, call signatures,
overrides) is checked against the real Python bindings of TensorRT 10.3, 10.16 and 11.4
(tests/engines/tensorrt/test_tensorrt_bindings.py, which imports PyPI's bindings wheels against stub
libraries); the build and runner logic runs only against a fake `tensorrt` (tests/fakes/fake_tensorrt.py,
itself checked to offer no API the real module lacks) until a GPU with TensorRT runs `pytest -m gpu`. `tensorrt` is
imported lazily, so this module imports fine without it. support.py checks an ONNX against the
operators and Q/DQ rules onnx-tensorrt documents, on any machine, before a build.

Precision: TensorRT 11 builds strongly typed networks only (BuilderFlag.FP16/INT8 and the INT8
calibrators are gone), so the precision must be in the ONNX (model_fp16.onnx, Q/DQ model_int8.onnx).
TensorRT 10 also accepts a plain FP32 ONNX with --fp16 (weakly typed, BuilderFlag.FP16).
"""

from lowformer.engines.tensorrt.build import DEFAULT_TIMING_CACHE, build_engine
from lowformer.engines.tensorrt.config import TrtBuildConfig
from lowformer.engines.tensorrt.environment import (default_engine_path, gpu_info,
                                                    next_step_command, tensorrt_status, trt_major)
from lowformer.engines.tensorrt.inspector import EngineLayer, engine_layers, parse_engine_layers
from lowformer.engines.tensorrt.onnx_facts import BuildPlan, OnnxFacts, check_request, inspect_onnx, plan_build
from lowformer.engines.tensorrt.runner import TensorRTRunner, TorchCudaIO, torch_dtype
from lowformer.engines.tensorrt.support import check_onnx_for_tensorrt, require_tensorrt_support

__all__ = ["build_engine", "TrtBuildConfig", "DEFAULT_TIMING_CACHE", "default_engine_path", "gpu_info", "next_step_command",
           "tensorrt_status", "trt_major", "EngineLayer", "engine_layers", "parse_engine_layers", "BuildPlan",
           "OnnxFacts", "check_request", "inspect_onnx", "plan_build", "TensorRTRunner", "TorchCudaIO", "torch_dtype",
           "check_onnx_for_tensorrt", "require_tensorrt_support"]
