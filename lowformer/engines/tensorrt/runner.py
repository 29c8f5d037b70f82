"""A Runner for serialized engines: torch CUDA tensors as I/O buffers on a torch stream."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lowformer.core.errors import LowformerError, NeedsTargetDevice
from lowformer.engines.base import InputSpec, LayerTiming, Runner


from lowformer.engines.tensorrt.environment import _Logger, _import_trt, gpu_info, tensorrt_status
from lowformer.engines.tensorrt.inspector import _nodes_from_name, engine_layers

# --------------------------------------------------------------------------- runner

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                 "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    name = str(getattr(trt_dtype, "name", trt_dtype)).split(".")[-1].upper()
    if name not in _TORCH_DTYPES:
        raise LowformerError(f"unsupported TensorRT tensor type {name}")
    return _TORCH_DTYPES[name]


class TorchCudaIO:
    """Device buffers and the stream TensorRT runs on, all from torch (no pycuda).

    The only place the runner touches CUDA memory: tests replace it with a CPU version.
    """

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)

    @property
    def handle(self) -> int:
        return self.stream.cuda_stream

    def to_device(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # x may come from another stream
        with torch.cuda.stream(self.stream):
            return x.to(self.device, dtype, non_blocking=True).contiguous()

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            return torch.empty(tuple(shape), dtype=dtype, device=self.device)

    def synchronize(self) -> None:
        self.stream.synchronize()


def _rebuild_hint(path: Path, entry: Optional[Dict[str, Any]]) -> str:
    src = ((entry or {}).get("source") or {}).get("path")
    onnx = str(path.parent / src) if src and not os.path.isabs(src) else (src or "MODEL.onnx")
    return f"lowformer build-engine {shlex.quote(onnx)}"


class TensorRTRunner(Runner):
    """Runs a serialized engine with torch CUDA tensors as I/O buffers on a torch stream."""

    backend = "tensorrt"
    format = "tensorrt"
    profile_naming = "fused-layers"
    profile_source = "TensorRT IProfiler per engine layer, fused layers split over their ONNX nodes"
    native = "torch"
    io_factory = TorchCudaIO  # replaced by tests (no CUDA here)

    def __init__(self, engine, trt, logger, path: str, device: str = "cuda",
                 entry: Optional[Dict[str, Any]] = None):
        self.engine, self._trt, self._logger, self.entry = engine, trt, logger, entry or {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) < 1:
            raise LowformerError(f"{path}: expected one input and at least one output, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = tuple(None if int(d) < 0 else int(d) for d in engine.get_tensor_shape(self.input_name))
        super().__init__(InputSpec(self.input_name, shape, "float32"), self.entry.get("precision", "fp32"),
                         device, None, path)
        self.provider = "tensorrt"
        self._in_dtype = torch_dtype(engine.get_tensor_dtype(self.input_name))
        self._out_dtype = torch_dtype(engine.get_tensor_dtype(self.output_name))
        self._batch_range = self._profile_batch_range()
        self.io = self.io_factory(device)
        self.context = engine.create_execution_context()
        if self.context is None:
            raise LowformerError(f"{path}: TensorRT could not create an execution context ({logger.last_error()})")

    @classmethod
    def from_file(cls, path: str, device: str = "cuda", entry: Optional[Dict[str, Any]] = None) -> "TensorRTRunner":
        p = Path(path)
        if not p.is_file():
            raise LowformerError(f"engine not found: {p}")
        ok, reason = tensorrt_status()
        if not ok:
            raise NeedsTargetDevice(f"{reason}; TensorRT engines run only on a GPU with TensorRT: run this on the "
                                    f"device the engine was built for ({p.name})")
        warn = None
        if not str(device).startswith("cuda"):
            warn = f"TensorRT runs on the GPU: device {device!r} was replaced by 'cuda'"
            device = "cuda"
        trt = _import_trt()
        here = {"tensorrt": str(trt.__version__), **gpu_info(device)}
        built = {k: (entry or {}).get(k) for k in ("tensorrt", "gpu")}
        stale = [f"{k} {built[k]} (here {here[k]})" for k in ("tensorrt", "gpu") if built[k] and built[k] != here[k]]
        if stale:
            raise LowformerError(f"{p.name} was built with another TensorRT version or GPU ({', '.join(stale)}); "
                                 f"rebuild it on this device: {_rebuild_hint(p, entry)}")
        logger = _Logger.create(trt)
        runtime = trt.Runtime(logger)
        try:
            engine = runtime.deserialize_cuda_engine(p.read_bytes())
        except Exception:
            engine = None
        if engine is None:
            raise LowformerError(f"cannot load {p.name}: it was built with another TensorRT version or GPU (or is not "
                                 f"a TensorRT engine); rebuild it on this device: {_rebuild_hint(p, entry)}")
        runner = cls(engine, trt, logger, str(p), device, entry)
        runner._runtime = runtime  # the engine must not outlive its runtime
        if warn:
            runner.warnings.append(warn)
        return runner

    def _profile_batch_range(self) -> Tuple[int, int]:
        fixed = self.input_spec.fixed_batch
        if fixed:
            return fixed, fixed
        try:
            mn, _, mx = self.engine.get_tensor_profile_shape(self.input_name, 0)
            return int(mn[0]), int(mx[0])
        except Exception:
            b = self.entry.get("build", {})
            return int(b.get("min_batch", 1)), int(b.get("max_batch", 1))

    def _execute(self, context, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._batch_range
        if not lo <= x.shape[0] <= hi:
            raise LowformerError(f"batch {x.shape[0]} is outside the engine's range {lo}..{hi}; rebuild with "
                                 f"lowformer build-engine --min-batch/--max-batch")
        xin = self.io.to_device(x, self._in_dtype)
        if not context.set_input_shape(self.input_name, tuple(xin.shape)):
            raise LowformerError(f"the engine rejects input shape {tuple(xin.shape)}")
        out = self.io.empty([int(d) for d in context.get_tensor_shape(self.output_name)], self._out_dtype)
        context.set_tensor_address(self.input_name, xin.data_ptr())
        context.set_tensor_address(self.output_name, out.data_ptr())
        if not context.execute_async_v3(self.io.handle):
            raise LowformerError(f"TensorRT execution failed: {self._logger.last_error()}")
        self.io.synchronize()
        return out

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        # Logits come back where the batch came from (a CPU batch gets CPU logits).
        return self._execute(self.context, x).float().to(x.device)

    def inspector_json(self) -> Dict[str, Any]:
        inspector = self.engine.create_engine_inspector()
        return json.loads(inspector.get_engine_information(self._trt.LayerInformationFormat.JSON))

    def profile_layers(self, batch: np.ndarray, iterations: int = 10) -> List[LayerTiming]:
        """Per-layer GPU times from TensorRT's IProfiler, with the ONNX nodes each fused layer covers."""
        trt = self._trt

        class Profiler(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)
                self.total: Dict[str, float] = {}
                self.calls: Dict[str, int] = {}

            def report_layer_time(self, layer_name, ms):
                self.total[layer_name] = self.total.get(layer_name, 0.0) + float(ms)
                self.calls[layer_name] = self.calls.get(layer_name, 0) + 1

        info = {l.name: l for l in engine_layers(self.inspector_json())}
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        context = self.engine.create_execution_context()  # a separate context keeps run() unprofiled
        self._execute(context, x)  # warm-up, not recorded
        profiler = Profiler()
        context.profiler = profiler
        for _ in range(iterations):
            self._execute(context, x)
        out = []
        for name, total in profiler.total.items():
            layer = info.get(name)
            nodes = layer.onnx_nodes if layer else _nodes_from_name(name, None)
            out.append(LayerTiming(name, layer.layer_type if layer else "", total, profiler.calls[name], list(nodes)))
        return out

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(tensorrt=str(self._trt.__version__), gpu=self.entry.get("gpu"),
                 batch_range=list(self._batch_range))
        return d
