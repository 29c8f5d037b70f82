"""ONNX Runtime runner (CPU; CUDA and TensorRT execution providers where installed)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowformer.core.errors import LowformerError
from lowformer.engines.base import InputSpec, LayerTiming, Runner

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def session_options(threads: Optional[int] = None, profile_prefix: Optional[str] = None, exact: bool = False):
    """`exact`: no graph optimizations, so a Q/DQ graph is computed as written (dequantize, float
    op, quantize), the arithmetic TensorRT performs, instead of by ORT's fused int8 CPU kernels."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if exact
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.log_severity_level = 3
    return so


@dataclass
class OrtProfile:
    """One profiled stretch of runs: per-node times (execution order), per-run totals, and the
    graph ONNX Runtime actually ran (after its fusions), which places nodes it created."""

    timings: List[LayerTiming]
    run_ms: List[float]
    graph: List[Tuple[str, Sequence[str], Sequence[str]]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    per_run: List[Dict[str, float]] = field(default_factory=list)  # node -> kernel ms, one dict per run

    def median_node_ms(self) -> Dict[str, float]:
        """Each node's median kernel time over the profiled runs (ms; 0 in runs that skipped it)."""
        if not self.per_run:
            n = max(len(self.run_ms), 1)
            return {t.name: t.total_ms / n for t in self.timings}
        return {t.name: float(np.median([run.get(t.name, 0.0) for run in self.per_run])) for t in self.timings}


def parse_ort_profile(events: List[Dict[str, Any]], iterations: int) -> Tuple[List[LayerTiming], List[float]]:
    """Per-node kernel times of the last `iterations` `model_run`s of an ORT profile (Chrome trace)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[-iterations:]
    if not runs:
        raise LowformerError("the ONNX Runtime profile holds no model_run event")
    start, end = runs[0]["ts"], runs[-1]["ts"] + runs[-1]["dur"]
    total: Dict[str, float] = {}
    calls: Dict[str, int] = {}
    ops: Dict[str, str] = {}
    for e in sorted(events, key=lambda e: e.get("ts", 0)):
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or not start <= e["ts"] <= end:
            continue
        node = name[: -len("_kernel_time")]
        total[node] = total.get(node, 0.0) + e["dur"] / 1000.0
        calls[node] = calls.get(node, 0) + 1
        ops.setdefault(node, str((e.get("args") or {}).get("op_name", "")))
    timings = [LayerTiming(n, ops[n], total[n], calls[n]) for n in total]
    return timings, [r["dur"] / 1000.0 for r in runs]


def node_ms_by_run(events: List[Dict[str, Any]], iterations: int) -> List[Dict[str, float]]:
    """Per-node kernel ms of each of the last `iterations` `model_run`s (one dict per run, in order)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[-iterations:]
    out: List[Dict[str, float]] = [{} for _ in runs]
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        for i, r in enumerate(runs):
            if r["ts"] <= e["ts"] <= r["ts"] + r["dur"]:
                node = name[: -len("_kernel_time")]
                out[i][node] = out[i].get(node, 0.0) + e["dur"] / 1000.0
                break
    return out


def input_spec_of(session) -> InputSpec:
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    return InputSpec(inp.name, tuple(shape), "float32")


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"
    format = "onnx"
    profile_naming = "onnx-nodes"
    profile_source = "ONNX Runtime session profiling (per-node kernel_time events)"

    def __init__(self, path: str, precision: str = "fp32", device: str = "cpu",
                 threads: Optional[int] = None, exact: bool = False):
        import onnxruntime as ort

        if device not in _PROVIDERS:
            raise LowformerError(f"unknown device {device!r} for ONNX Runtime (cpu, cuda, tensorrt)")
        wanted = _PROVIDERS[device]
        available = ort.get_available_providers()
        providers = [p for p in wanted if p in available]
        self._path, self._providers = path, providers
        try:
            self.session = ort.InferenceSession(path, session_options(threads, exact=exact), providers=providers)
        except Exception as e:
            raise LowformerError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
        super().__init__(input_spec_of(self.session), precision, device, threads, path)
        used = self.session.get_providers()
        self.provider = used[0].replace("ExecutionProvider", "").lower()
        if used[0] != wanted[0]:
            # ONNX Runtime silently falls back to the CPU: say so.
            self.warnings.append(f"{wanted[0]} is not available here; ONNX Runtime ran on {used[0]}")
        self.output_name = self.session.get_outputs()[0].name
        self.exact = exact
        if exact:
            self.warnings.append("ONNX Runtime graph optimizations are off: the Q/DQ graph is computed as "
                                 "written (the arithmetic TensorRT performs), not by ORT's int8 CPU kernels")

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_spec.name: x})[0]
        return out.astype(np.float32, copy=False)

    def timed_call(self, batch: np.ndarray):
        """`session.run` itself (synchronous): no conversions timed."""
        fixed = self.input_spec.fixed_batch
        if fixed and fixed != len(batch):
            return super().timed_call(batch)
        feed = {self.input_spec.name: np.ascontiguousarray(batch, np.float32)}
        names, session = [self.output_name], self.session
        return lambda: session.run(names, feed)

    def profile_run(self, batch: np.ndarray, iterations: int = 10, warmup: int = 2) -> OrtProfile:
        """Profile `iterations` runs (after `warmup`) in a separate profiling session; that session
        also saves its optimized graph, whose node names are the ones the profile reports."""
        import onnx
        import onnxruntime as ort

        x = np.ascontiguousarray(batch.detach().cpu().numpy() if hasattr(batch, "detach") else batch, np.float32)
        tmp = tempfile.mkdtemp(prefix="lowformer-ortprof-")
        notes: List[str] = []
        try:
            so = session_options(self.threads, os.path.join(tmp, "ort"))
            so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
            try:
                session = ort.InferenceSession(self._path, so, providers=self._providers)
            except Exception as e:
                raise LowformerError(f"ONNX Runtime cannot profile {self._path}: {str(e).splitlines()[0]}") from None
            feed = {self.input_spec.name: x}
            for _ in range(max(warmup, 0) + max(iterations, 1)):
                session.run([self.output_name], feed)
            with open(session.end_profiling()) as f:
                events = json.load(f)
            timings, run_ms = parse_ort_profile(events, max(iterations, 1))
            per_run = node_ms_by_run(events, max(iterations, 1))
            graph: List[Tuple[str, Sequence[str], Sequence[str]]] = []
            try:
                proto = onnx.load(so.optimized_model_filepath, load_external_data=False)
                graph = [(n.name, list(n.input), list(n.output)) for n in proto.graph.node]
            except Exception as e:  # the profile stands without it; unscoped nodes go by order
                notes.append(f"optimized graph unavailable ({type(e).__name__}); unscoped nodes placed by order")
            return OrtProfile(timings, run_ms, graph, notes, per_run)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def profile_layers(self, batch: np.ndarray, iterations: int = 10) -> List[LayerTiming]:
        """Per-node times from ONNX Runtime's profiler (total over `iterations` runs)."""
        return self.profile_run(batch, iterations).timings
