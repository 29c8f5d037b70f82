"""OpenVINO for `validate --explain`: an IR's named ops (ports `name:index`), and the artifact run
with its block boundaries as outputs (an IR through `add_outputs`; an ONNX through the same exposed
copy ONNX Runtime runs), compiled at the inference precision of the run validate scored."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lowformer.core.batching import run_in_fixed_batches_multi
from lowformer.core.errors import LowformerError
from lowformer.engines.backend import BoundaryRunner, GraphNodes
from lowformer.engines.onnxruntime.boundaries import exposed_onnx
from lowformer.engines.openvino.runner import check_ir, core, read_model


def ir_graph(path: Path) -> Tuple[GraphNodes, str]:
    """An OpenVINO IR as (friendly name, input ports, output ports); ports are `name:index`."""
    model = read_model(str(path))
    nodes = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        name = op.get_friendly_name()
        ins = [f"{i.get_source_output().get_node().get_friendly_name()}:{i.get_source_output().get_index()}"
               for i in op.inputs()]
        nodes.append((name, ins, [f"{name}:{i}" for i in range(op.get_output_size())]))
    res = model.outputs[0].get_node()
    src = res.input_value(0) if res.get_type_name() == "Result" else model.outputs[0]
    logits = f"{src.get_node().get_friendly_name()}:{src.get_index()}"
    return nodes, logits


class OpenVINOBoundaries(BoundaryRunner):
    """OpenVINO (CPU plugin, at the inference precision `hint`, like the run validate scored): an ONNX
    via its exposed copy, an IR via `add_outputs` on the ops at the block boundaries."""

    def __init__(self, path: Path, boundaries: Dict[str, str], threads: Optional[int], hint: str = "f32",
                 weights: Optional[Dict[str, Any]] = None):
        self.path, self.threads, self.tmp = path, threads, None
        self.boundaries = dict(boundaries)
        if path.suffix.lower() != ".xml":  # an ONNX through OpenVINO: the same exposed copy ORT runs
            self.tmp = tempfile.mkdtemp(prefix="lowformer-explain-")
            copy = Path(self.tmp) / path.name
            outputs = exposed_onnx(path, copy, boundaries)
            model = read_model(str(copy))
            by_name = {n: o for o in model.outputs for n in o.get_names()}
            ports = [by_name[outputs[b]] for b in boundaries]
        else:  # an IR: boundaries are output ports `op:index` (ir_graph)
            check_ir(path, weights)
            at = {b: (t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for b, t in boundaries.items()}
            model = read_model(str(path))
            ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
            extra = [ops[name].output(idx) for b, (name, idx) in at.items() if b != "head"]
            if extra:
                model.add_outputs(extra)
            logits = model.outputs[0]
            added = {(o.get_node().get_friendly_name(), o.get_index()) for o in extra}
            out_by = {}
            for o in model.outputs[1:]:
                src = o.get_node().input_value(0) if o.get_node().get_type_name() == "Result" else o
                out_by[(src.get_node().get_friendly_name(), src.get_index())] = o
            ports = [logits if b == "head" else out_by.get(at[b]) for b in at]
            if any(p is None for p in ports) or not added:
                ports = [logits] + list(model.outputs[1:])
        cfg: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        self._core, self._cfg = core(), cfg
        try:
            self.compiled = core().compile_model(model, "CPU", cfg)
        except Exception as e:
            self.close()
            raise LowformerError(f"OpenVINO cannot compile {path.name} with its block boundaries exposed: "
                                 f"{str(e).strip().splitlines()[0][:200]}") from None
        self.ports = [self.compiled.outputs[list(model.outputs).index(p)] for p in ports]
        self.request = self.compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self.fixed_batch = int(shape[0].get_length()) if shape[0].is_static else None

    def outputs(self, x: np.ndarray) -> List[np.ndarray]:
        res = self.request.infer({0: np.ascontiguousarray(x, np.float32)})
        return [np.array(res[p], dtype=np.float32, copy=True) for p in self.ports]

    def original_logits(self, x: np.ndarray) -> np.ndarray:
        compiled = self._core.compile_model(read_model(str(self.path)), "CPU", self._cfg)
        req = compiled.create_infer_request()
        return run_in_fixed_batches_multi(lambda c: [np.array(req.infer({0: c})[compiled.outputs[0]], copy=True)],
                                          x, self.fixed_batch)[0]

    def close(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
