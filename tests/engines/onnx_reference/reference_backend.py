"""A backend on ONNX's own reference runtime (`onnx.reference.ReferenceEvaluator`), defined and
registered from the tests alone: the acceptance test of the backend registry (issue #30).

It writes `model.onnxref` (the export's ONNX, for the reference runtime), runs it, profiles it node
by node, and exposes any tensor as a block boundary for `validate --explain`, through the Backend
interface only: nothing in lowformer names it.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from lowformer.engines import Backend, BoundaryRunner, InputSpec, LayerTiming, LoadRequest, Runner

NAME = "onnx-reference"
SUFFIX = ".onnxref"


def _evaluator(path: Path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(path))
    return proto, ReferenceEvaluator(proto)


class ReferenceRunner(Runner):
    backend = NAME
    format = NAME
    profile_naming = "onnx-nodes"  # module-scoped ONNX node names
    profile_source = "onnx.reference.ReferenceEvaluator, each node timed as it runs"

    def __init__(self, path: Path, precision: str, threads: Any = None):
        self.proto, self.evaluator = _evaluator(path)
        inp = self.proto.graph.input[0]
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim)
        super().__init__(InputSpec(inp.name, dims), precision, "cpu", threads, str(path))
        self.output = self.proto.graph.output[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.evaluator.run([self.output], {self.input_spec.name: x})[0], dtype=np.float32)

    def profile_layers(self, batch: np.ndarray, iterations: int = 10) -> List[LayerTiming]:
        """Each node timed as the evaluator's own loop would run it (initializers, then nodes in order)."""
        feed = np.ascontiguousarray(batch, np.float32)
        totals: Dict[str, float] = {}
        ops: Dict[str, str] = {}
        for _ in range(max(iterations, 1)):
            results: Dict[str, Any] = {"": None, **self.evaluator.rt_inits_, self.input_spec.name: feed}
            for node in self.evaluator.rt_nodes_:
                t0 = time.perf_counter()
                outs = node.run(*[results[i] for i in node.input])
                name = node.onnx_node.name
                totals[name] = totals.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
                ops[name] = node.onnx_node.op_type
                results.update(zip(node.output, outs))
        return [LayerTiming(n, ops[n], ms, max(iterations, 1)) for n, ms in totals.items()]


class ReferenceBoundaries(BoundaryRunner):
    def __init__(self, path: Path, boundaries: Dict[str, str]):
        self.proto, self.evaluator = _evaluator(path)
        self.boundaries = dict(boundaries)
        self.input = self.proto.graph.input[0].name
        self.logits = self.proto.graph.output[0].name

    def outputs(self, x: np.ndarray) -> List[np.ndarray]:
        every = self.evaluator.run(None, {self.input: np.ascontiguousarray(x, np.float32)}, intermediate=True)
        return [every[t] for t in self.boundaries.values()]

    def original_logits(self, x: np.ndarray) -> np.ndarray:
        return self.evaluator.run([self.logits], {self.input: np.ascontiguousarray(x, np.float32)})[0]


class ReferenceBackend(Backend):
    name = NAME
    title = "ONNX reference runtime"
    formats = (NAME,)
    suffixes = {SUFFIX: NAME}
    export_targets = (NAME,)
    export_order = 35
    export_needs = ("onnx",)  # written from the export's checked ONNX
    can_explain = True
    artifact_names = {(NAME, "fp32"): f"model{SUFFIX}"}

    def load(self, request: LoadRequest) -> Runner:
        return ReferenceRunner(request.path, request.precision, request.threads)

    def export(self, ctx, request) -> None:
        src = ctx.ensure_onnx()
        path = ctx.path(NAME, "fp32")
        shutil.copyfile(src, path)
        ctx.check_and_record(path, NAME, "fp32", {"source": src.name})

    def graph(self, path: Path) -> Tuple[List[Tuple[str, List[str], List[str]]], str]:
        proto, _ = _evaluator(path)
        return [(n.name, list(n.input), list(n.output)) for n in proto.graph.node], proto.graph.output[0].name

    def open_boundaries(self, request: LoadRequest, boundaries: Dict[str, str]) -> BoundaryRunner:
        return ReferenceBoundaries(request.path, boundaries)
