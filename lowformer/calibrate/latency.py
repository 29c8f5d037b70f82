"""Per-block latency of an ONNX model on ONNX Runtime's CPU provider, and what keeping a block in float costs.

The FP32 ONNX and the fully quantized INT8 ONNX are each profiled once (ORT session profiling, per-node
`kernel_time` events, median per node over a few warm runs). Nodes are placed in blocks like
everything else in calibration (`blocks.node_blocks` on the FP32 graph's names); nodes ORT renamed
or created (NCHWc reorders, QLinearConv from fused Q/DQ, `input_QuantizeLinear`) go through
`core.naming.attribute_names`, the placement the profiler uses: by scoped name, else by graph
neighbours in the optimized graph, else by execution order.

The float cost of a block is `ms_fp32(block) - ms_int8(block)`, floored at `MIN_FLOAT_COST_MS`
(a block whose INT8 version is no faster costs next to nothing to keep in float). A block's ms is its
share of the profiled kernel time times the model's end-to-end latency from a separate,
un-instrumented timing (profiling slows every node, and ORT's own work between kernels is spread
over the blocks with it), so the blocks of a model sum to its latency. A set's estimate is the
all-INT8 model's latency plus its blocks' float costs. It is an estimate:
the Q/DQ pairs at a float block's borders and ORT's fusions across blocks are not modelled, which
is why the chosen set is also timed end to end.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from lowformer.core.blocks import node_blocks
from lowformer.calibrate.search import MIN_COST_MS
from lowformer.core.naming import GraphNeighbours, attribute_names, module_of_name, module_path_of_node

log = logging.getLogger(__name__)

UNATTRIBUTED = "(unattributed)"
MIN_FLOAT_COST_MS = MIN_COST_MS  # floor of a block's float cost (its INT8 version may be no faster)
PROFILE_RUNS, PROFILE_WARMUP = 10, 3
TIMING_RUNS, TIMING_WARMUP = 30, 5


def latency_source(target: str) -> str:
    """Where the per-block figures come from, for the INT8 `target` (cpu, tensorrt, openvino): ONNX
    Runtime on this CPU, a stated proxy for the runtime the target is made for (Backend.int8_targets)."""
    from lowformer.engines import registry

    backend = next((b for b in registry.all_backends() if target in b.int8_targets), None)
    if backend is None:
        return f"onnxruntime-cpu (proxy for {target})"
    if "onnx" in backend.formats:
        return "onnxruntime-cpu"
    return f"onnxruntime-cpu (proxy for {backend.label}{'' if backend.runs_on_cpu else f': no {backend.label} here'})"


def block_resolver(node_names: Sequence[str]):
    """name -> block ('' when the name carries no module) for runtime node names of the graph
    whose original node names are `node_names` (module paths are matched by longest prefix)."""
    by_module: Dict[str, str] = {}
    for node, block in node_blocks(node_names).items():
        by_module.setdefault(module_path_of_node(node), block)

    def resolve(name: str) -> str:
        module = module_of_name(name)
        parts = module.split(".") if module else []
        for i in range(len(parts), 0, -1):
            block = by_module.get(".".join(parts[:i]))
            if block:
                return block
        if module and "/" not in name:  # parameter-named Q/DQ (`classifier.weight_DequantizeLinear`), wrapped
            hit = next((b for m, b in by_module.items() if m.endswith("." + module)), "")
            if hit:
                return hit
        return ""
    return resolve


@dataclass
class ModelProfile:
    """One model on ORT's CPU provider: per-block kernel ms (median per node over the profiled runs),
    and its un-instrumented end-to-end latency, over which `blocks` spreads the per-block shares."""

    kernel_blocks: Dict[str, float]  # block -> sum of its nodes' median kernel ms (profiling on)
    kernel_ms: float  # sum of the per-node medians
    run_ms: float  # median `model_run` of the profiled runs (kernels plus ORT's own work)
    latency_ms: float  # median of un-instrumented timed runs (engines.timing), batch 1
    placed_by: Dict[str, int] = field(default_factory=dict)  # how nodes were placed: name / graph / order / none

    @property
    def blocks(self) -> Dict[str, float]:
        """Each block's share of the kernel time, times the end-to-end latency (ms; sums to it)."""
        scale = self.latency_ms / self.kernel_ms if self.kernel_ms > 0 else 0.0
        return {b: v * scale for b, v in self.kernel_blocks.items()}

    def to_dict(self) -> Dict[str, Any]:
        return {"blocks": {b: round(v, 4) for b, v in self.blocks.items()},
                "kernel_blocks": {b: round(v, 4) for b, v in self.kernel_blocks.items()},
                "kernel_ms": round(self.kernel_ms, 4), "run_ms": round(self.run_ms, 4),
                "latency_ms": round(self.latency_ms, 4), "placed_by": dict(self.placed_by)}


def profile_blocks(path: Path, node_names: Sequence[str], threads: Optional[int] = None,
                   runs: int = PROFILE_RUNS, warmup: int = PROFILE_WARMUP) -> ModelProfile:
    """Per-block kernel time of the ONNX at `path` on ORT's CPU provider, batch 1 (the fixed batch if
    any), then its end-to-end latency from a separate, un-instrumented timing."""
    import numpy as np

    from lowformer.engines.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(str(path), device="cpu", threads=threads)
    prof = runner.profile_run(runner.input_spec.example(1), runs, warmup)
    per_node = prof.median_node_ms()
    placed = attribute_names(list(per_node), graph=GraphNeighbours(prof.graph) if prof.graph else None,
                             resolve=block_resolver(node_names))
    blocks: Dict[str, float] = {}
    how: Dict[str, int] = {}
    for node, ms in per_node.items():
        block, by = placed[node]
        blocks[block or UNATTRIBUTED] = blocks.get(block or UNATTRIBUTED, 0.0) + ms
        how[by] = how.get(by, 0) + 1
    latency = _time_runner(runner)
    return ModelProfile(blocks, float(sum(per_node.values())), float(np.median(prof.run_ms)), latency, how)


def _time_runner(runner, iterations: int = TIMING_RUNS, warmup: int = TIMING_WARMUP) -> float:
    from lowformer.engines.timing import time_runner

    return float(time_runner(runner, runner.input_spec.example(1), iterations, warmup).median_ms)


@dataclass
class BlockLatency:
    """What each block costs in FP32 and INT8 on the artifact's runtime, and so in float."""

    fp32: ModelProfile
    int8: ModelProfile
    order: List[str]  # the model's blocks, in model order
    source: str
    notes: List[str] = field(default_factory=list)

    @property
    def float_cost(self) -> Dict[str, float]:
        """ms that keeping each block in float adds to the INT8 model (floored at MIN_FLOAT_COST_MS)."""
        return {b: max(self.fp32.blocks.get(b, 0.0) - self.int8.blocks.get(b, 0.0), MIN_FLOAT_COST_MS)
                for b in self.order}

    @property
    def int8_ms(self) -> float:
        """The all-INT8 model's end-to-end latency (un-instrumented, batch 1)."""
        return self.int8.latency_ms

    def estimate(self, kept_float: Sequence[str]) -> float:
        """Estimated ms of the INT8 model with `kept_float` blocks in float: INT8 latency + their float costs."""
        cost = self.float_cost
        return self.int8_ms + sum(cost.get(b, 0.0) for b in kept_float)

    def rows(self) -> List[Dict[str, Any]]:
        cost = self.float_cost
        out = [{"block": b, "fp32_ms": round(self.fp32.blocks.get(b, 0.0), 4),
                "int8_ms": round(self.int8.blocks.get(b, 0.0), 4), "float_cost_ms": round(cost[b], 4)}
               for b in self.order]
        if UNATTRIBUTED in self.fp32.blocks or UNATTRIBUTED in self.int8.blocks:
            out.append({"block": UNATTRIBUTED, "fp32_ms": round(self.fp32.blocks.get(UNATTRIBUTED, 0.0), 4),
                        "int8_ms": round(self.int8.blocks.get(UNATTRIBUTED, 0.0), 4), "float_cost_ms": None})
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"source": self.source, "fp32": self.fp32.to_dict(), "int8": self.int8.to_dict(),
                "floor_ms": MIN_FLOAT_COST_MS, "blocks": self.rows(), "notes": list(self.notes)}


def measure_block_latency(fp32_onnx: Path, int8_onnx: Path, node_names: Sequence[str], order: Sequence[str],
                          target: str = "cpu", threads: Optional[int] = None) -> BlockLatency:
    """Profile the FP32 and the fully quantized INT8 ONNX once each (see the module docstring)."""
    fp32 = profile_blocks(fp32_onnx, node_names, threads)
    int8 = profile_blocks(int8_onnx, node_names, threads)
    notes = [f"float cost = FP32 block ms - INT8 block ms, floored at {MIN_FLOAT_COST_MS} ms; block ms = the block's "
             "share of the profiled kernel time x the model's un-instrumented latency; a set's estimate "
             "is the INT8 model's latency plus its blocks' float costs (Q/DQ at block borders not modelled)"]
    if target != "cpu":
        notes.append(f"--target {target}: per-block figures are ONNX Runtime CPU proxies, not {target} timings")
    cheaper = [b for b in order if fp32.blocks.get(b, 0.0) <= int8.blocks.get(b, 0.0)]
    if cheaper:
        notes.append(f"INT8 is no faster than FP32 on ONNX Runtime CPU for {len(cheaper)} block(s) "
                     f"({', '.join(cheaper[:4])}{', ...' if len(cheaper) > 4 else ''}): their float cost is the floor")
    return BlockLatency(fp32, int8, list(order), latency_source(target), notes)


def time_onnx(path: Path, threads: Optional[int] = None, iterations: int = TIMING_RUNS,
              warmup: int = TIMING_WARMUP) -> float:
    """End-to-end median latency (ms; batch 1, un-instrumented) of an ONNX on ORT's CPU provider."""
    from lowformer.engines.onnxruntime.runner import OnnxRuntimeRunner

    return _time_runner(OnnxRuntimeRunner(str(path), device="cpu", threads=threads), iterations, warmup)
