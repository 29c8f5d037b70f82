"""Runtime timings (`LayerTiming`s) -> report rows placed in the model."""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

from lowformer.engines.base import LayerTiming
from lowformer.profiling.names import GraphNeighbours, attribute_names, module_of_name
from lowformer.profiling.report import LayerRow
from lowformer.profiling.structure import ModelStructure

# A fused layer's time is split over its nodes by these weights: the convolutions and matmuls do
# nearly all the work; the activations, adds and Q/DQ fused into them almost none.
_HEAVY_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "QLinearConv", "QLinearMatMul",
              "MatMulInteger", "ConvInteger", "Attention", "Softmax")
_HEAVY_WEIGHT, _LIGHT_WEIGHT = 10.0, 1.0
_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (?P<layer>.+)$")


def _row(t: LayerTiming, module: str, how: str, ms: float, calls: float, structure: ModelStructure,
         fused_from: Optional[List[str]] = None) -> LayerRow:
    p = structure.place(module)
    return LayerRow(t.name, t.op, p.module, p.block, p.stage, p.kind, ms, calls, how if module else "none",
                    list(fused_from or []))


def rows_from_modules(timings: Sequence[LayerTiming], iterations: int, structure: ModelStructure) -> List[LayerRow]:
    """Eager PyTorch: each timing is already a module path ('' = the model's own glue)."""
    n = max(iterations, 1)
    return [_row(t, t.name, "name", t.total_ms / n, t.calls / n, structure) for t in timings]


def rows_from_nodes(timings: Sequence[LayerTiming], iterations: int, structure: ModelStructure,
                    graph: Optional[GraphNeighbours] = None) -> List[LayerRow]:
    """ONNX Runtime nodes: by scoped name, else by graph neighbours, else by execution order."""
    n = max(iterations, 1)
    placed = attribute_names([t.name for t in timings], structure, graph)
    return [_row(t, placed[t.name][0], placed[t.name][1], t.total_ms / n, t.calls / n, structure)
            for t in timings]


def rows_from_lines(timings: Sequence[LayerTiming], iterations: int, structure: ModelStructure,
                    line_map: Optional[Dict[str, str]]) -> List[LayerRow]:
    """TorchScript: `code/...py:LINE` names, placed by the line -> module map of the export."""
    n = max(iterations, 1)
    rows = []
    for t in timings:
        module = (line_map or {}).get(t.name, "")
        rows.append(_row(t, module, "line", t.total_ms / n, t.calls / n, structure))
    return rows


def rows_from_graph(timings: Sequence[LayerTiming], iterations: int, structure: ModelStructure) -> List[LayerRow]:
    """torch.export programs and AOTInductor packages: each timing (a graph node, or a compiled
    kernel) carries the modules of its source nodes in `fused_from`, read from the exported graph's
    nn_module_stack (exact). A kernel fused from several modules is split evenly over them
    (`kernel-split`); a timing without a module is the model's own glue (unattributed)."""
    n = max(iterations, 1)
    rows: List[LayerRow] = []
    for t in timings:
        modules = list(dict.fromkeys(t.fused_from)) or [""]
        how = "kernel-split" if len(modules) > 1 else "name"
        for mod in modules:
            rows.append(_row(t, mod, how, t.total_ms / len(modules) / n, t.calls / n, structure,
                             modules if len(modules) > 1 else None))
    return rows


def _weight(node: str) -> float:
    op = node.rstrip("/").rsplit("/", 1)[-1].split("_")[0]
    return _HEAVY_WEIGHT if op in _HEAVY_OPS else _LIGHT_WEIGHT


def rows_from_fused(timings: Sequence[LayerTiming], structure: ModelStructure,
                    iterations: Optional[int] = None) -> List[LayerRow]:
    """TensorRT layers: a fused layer's time is split over the modules of the ONNX nodes it covers
    (weighted by op, see _HEAVY_OPS) and its rows say `fused-split`. Reformat layers belong to the
    layer they feed. Without `iterations`, each layer's own call count is the number of runs."""
    by_layer = {t.name: t.fused_from for t in timings}
    rows: List[LayerRow] = []
    for t in timings:
        n = max(iterations or t.calls or 1, 1)
        nodes = list(t.fused_from)
        how = "fused-split" if len(nodes) > 1 else "name"
        if not nodes:
            m = _REFORMAT.match(t.name)
            target = m.group("layer") if m else None
            nodes = list(by_layer.get(target, [])) or ([target] if target else [])
            how = "graph" if m else "name"
        modules = [module_of_name(x, structure) for x in nodes] if nodes else [module_of_name(t.name, structure)]
        weights = [_weight(x) for x in nodes] if nodes else [1.0]
        # Unscoped members of a fused layer (`input_QuantizeLinear`) belong to the layer itself.
        first = next((m for m in modules if m), "")
        modules = [m or first for m in modules]
        total_w = sum(weights) or 1.0
        share: Dict[str, float] = {}
        for mod, w in zip(modules, weights):
            share[mod] = share.get(mod, 0.0) + w / total_w
        for mod, frac in share.items():
            rows.append(_row(t, mod, how, t.total_ms * frac / n, t.calls / n if iterations else 1.0, structure,
                             t.fused_from))
    return rows
