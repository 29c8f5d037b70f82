"""ONNX Runtime runner (CPU; CUDA and TensorRT execution providers where installed)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..errors import LowformerError
from .base import InputSpec, Runner

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def session_options(threads: Optional[int] = None, profile_prefix: Optional[str] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.log_severity_level = 3
    return so


def input_spec_of(session) -> InputSpec:
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    return InputSpec(inp.name, tuple(shape), "float32")


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str, precision: str = "fp32", device: str = "cpu",
                 threads: Optional[int] = None):
        import onnxruntime as ort

        if device not in _PROVIDERS:
            raise LowformerError(f"unknown device {device!r} for ONNX Runtime (cpu, cuda, tensorrt)")
        wanted = _PROVIDERS[device]
        available = ort.get_available_providers()
        providers = [p for p in wanted if p in available]
        self._path, self._providers = path, providers
        try:
            self.session = ort.InferenceSession(path, session_options(threads), providers=providers)
        except Exception as e:
            raise LowformerError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
        super().__init__(input_spec_of(self.session), precision, device, threads, path)
        used = self.session.get_providers()
        self.provider = used[0].replace("ExecutionProvider", "").lower()
        if used[0] != wanted[0]:
            # ONNX Runtime silently falls back to the CPU: say so.
            self.warnings.append(f"{wanted[0]} is not available here; ONNX Runtime ran on {used[0]}")
        self.output_name = self.session.get_outputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_spec.name: x})[0]
        return out.astype(np.float32, copy=False)

    def profiling_session(self, prefix: str):
        """A second session of the same model with ONNX Runtime's per-node profiler on."""
        import onnxruntime as ort

        return ort.InferenceSession(self._path, session_options(self.threads, prefix), providers=self._providers)

    def node_names(self) -> List[str]:
        import onnx

        return [n.name for n in onnx.load(self._path, load_external_data=False).graph.node]
