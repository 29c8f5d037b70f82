"""`validate --explain` for `.pte` programs: block boundaries as extra outputs of a debug program.

The shipped program is never changed. Its ETRecord holds the program it was lowered from (for INT8,
the converted PT2E program with its quantize/dequantize pairs); the debug program is that graph with
each block's boundary tensor added as an output, lowered the same way (XNNPACK) and run on the same
runtime. Quantize/dequantize pairs are transparent in the graph `explain` reads, and a boundary
exposes the dequantized tensor the next block reads: what INT8 made of it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lowformer.core.errors import LowformerError, first_line
from lowformer.engines.backend import BoundaryRunner, GraphNodes
from lowformer.engines.executorch.runner import ExecuTorchRunner
from lowformer.engines.executorch.writer import fx_names, lower

log = logging.getLogger(__name__)

_QDQ = ("quantize_per_tensor", "quantize_per_channel", "dequantize_per_tensor", "dequantize_per_channel")


def _is_qdq(node) -> bool:
    return node.op == "call_function" and any(q in str(node.target) for q in _QDQ)


def _is_quantize(node) -> bool:
    return _is_qdq(node) and "dequantize" not in str(node.target)


def source_program(etrecord: Path):
    """The ExportedProgram an ETRecord says the program was lowered from."""
    from lowformer.engines.executorch.env import native_stderr, require

    require()
    from executorch.devtools.etrecord import parse_etrecord

    try:
        with native_stderr():
            record = parse_etrecord(str(etrecord))
    except Exception as e:
        raise LowformerError(f"{etrecord}: not a readable ETRecord ({first_line(e, limit=160)})") from None
    if record.exported_program is None:
        raise LowformerError(f"{etrecord.name}: an ETRecord without the exported program (export it again)")
    return record.exported_program


def _float_source(node):
    """Through quantize/dequantize nodes back to the float tensor they carry."""
    while _is_qdq(node) and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def _logits(graph):
    out = next(n for n in graph.nodes if n.op == "output")
    first = out.args[0][0] if isinstance(out.args[0], (list, tuple)) else out.args[0]
    return first


def program_graph(pte: Path, etrecord: Path) -> Tuple[GraphNodes, str]:
    """The source program's nodes as (module-scoped name, inputs, [its own tensor]) and the logits
    tensor; quantize/dequantize nodes left out (their consumers read the float tensor behind them)."""
    graph = source_program(etrecord).graph
    scoped = fx_names(graph)
    nodes = []
    for n in graph.nodes:
        if n.op != "call_function" or _is_qdq(n):
            continue
        ins = [_float_source(a).name for a in n.all_input_nodes]
        nodes.append((scoped.get(n.name, n.name), ins, [n.name]))
    return nodes, _float_source(_logits(graph)).name


Exposed = Tuple[int, Optional[Tuple[float, int]]]  # (output index, (scale, zero point) of an int8 output)


def _exposed(node) -> Tuple[Any, Optional[Tuple[float, int]]]:
    """(the node to output, how to dequantize it): where INT8 quantizes this tensor, its quantize
    node (the int8 tensor the next block reads; a dequantized copy as a delegate output fails XNNPACK's
    shape propagation), dequantized on the host."""
    for q in node.users:
        if _is_quantize(q) and "per_tensor" in str(q.target) and len(q.args) >= 3:
            scale, zero = q.args[1], q.args[2]
            if isinstance(scale, (int, float)) and isinstance(zero, int):
                return q, (float(scale), int(zero))
    return node, None


def debug_program(etrecord: Path, tensors: List[str], example: torch.Tensor) -> Tuple[bytes, List[Exposed]]:
    """(the source program with `tensors` as outputs, lowered to XNNPACK; where each one is). The
    logits stay output 0; a tensor that is already an output is not added twice."""
    gm = source_program(etrecord).module()
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [t for t in tensors if t not in by_name]
    if missing:
        raise LowformerError(f"{etrecord.name}: no tensor {missing[0]} in its program")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    logits = _logits(gm.graph)
    outputs = [logits]
    where: List[Exposed] = []
    for t in tensors:
        if _float_source(by_name[t]) is _float_source(logits):
            where.append((0, None))
            continue
        node, dequant = _exposed(by_name[t])
        if node not in outputs:
            outputs.append(node)
        where.append((outputs.index(node), dequant))
    out.args = (tuple(outputs),)
    gm.graph._codegen = torch.fx.graph.CodeGen()  # flat outputs: the pytree spec of one logits tensor no longer holds
    gm.recompile()
    from lowformer.engines.executorch.writer import capture

    lowered = lower(capture(gm, example), what=f"the debug program of {etrecord.name} ({len(tensors)} boundaries)")
    return lowered.buffer, where


def _as_float(t: torch.Tensor, dequant: Optional[Tuple[float, int]]) -> np.ndarray:
    a = t.detach().numpy()
    if dequant is None:
        return a
    scale, zero = dequant
    return (a.astype(np.float32) - zero) * np.float32(scale)


class ExecuTorchBoundaries(BoundaryRunner):
    """The debug program (boundaries as outputs) beside the shipped program (the original logits)."""

    def __init__(self, pte: Path, etrecord: Path, boundaries: Dict[str, str], threads: Optional[int] = None):
        self.boundaries = dict(boundaries)
        self.shipped = ExecuTorchRunner(Path(pte), threads=threads, etrecord=etrecord)
        shape = self.shipped.input_spec.shape
        self.fixed_batch = int(shape[0])
        example = torch.zeros(*[int(s) for s in shape])
        tensors = [t for b, t in self.boundaries.items()]
        buffer, self._where = debug_program(etrecord, tensors, example)
        from lowformer.engines.executorch.env import native_stderr
        from executorch.runtime import Runtime

        try:
            with native_stderr() as said:
                self._program = Runtime.get().load_program(buffer)
                self._method = self._program.load_method("forward")
        except Exception as e:
            raise LowformerError(f"the debug program of {Path(pte).name} does not load: "
                                 f"{said.last or first_line(e, limit=160)}") from None

    def outputs(self, x: Any) -> List[Any]:
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        try:
            outs = self._method.execute([t])
        except Exception as e:
            raise LowformerError(f"the debug program of {self.shipped.pte.name} failed to run: "
                                 f"{first_line(e, limit=160)}") from None
        return [_as_float(outs[i], dq) for i, dq in self._where]

    def original_logits(self, x: Any) -> Any:
        return self.shipped.run(np.ascontiguousarray(x, np.float32))

    def close(self) -> None:
        self.shipped.close()

