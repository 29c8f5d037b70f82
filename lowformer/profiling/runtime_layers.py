"""Runtime layers (OpenVINO's per-layer counters, `LayerProfile.naming` "runtime-layers") -> report
rows, and which blocks really ran INT8 / BF16.

The CPU plugin reports one time per runtime layer (PERF_COUNT); each layer lists the ONNX nodes it
was made from (`originalLayersNames`, the runner's `fused_from`) and the precision it ran in
(`runtimePrecision`). A layer fused from several nodes is split over their modules like a TensorRT
layer (collect.rows_from_fused). Layers OpenVINO created without an ONNX name (`Convert_1839`, a
zero-point `Subtract`) are placed by the runtime graph: the module of the layer they feed, else of
the one that feeds them. Every row's op carries its runtime precision: `Convolution [i8]`.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from lowformer.engines.base import LayerTiming
from lowformer.profiling.collect import rows_from_fused
from lowformer.profiling.names import GraphNeighbours, module_of_name
from lowformer.profiling.report import LayerRow
from lowformer.profiling.structure import ModelStructure

# The layers that do the arithmetic: whether they ran INT8 / BF16 is what decides the speed.
HEAVY_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul",
                "Deconvolution")
INT_PRECISIONS = ("i8", "u8")
_PRECISION = re.compile(r"\[(?P<p>[a-z0-9]+)\]$")


def _shown(t: LayerTiming) -> LayerTiming:
    return replace(t, op=f"{t.op} [{t.precision}]") if t.precision else t


def _module_of_runtime_name(name: str, structure: ModelStructure) -> str:
    """A runtime layer's own name: OpenVINO names a reorder it inserts `<source>_<layouts>_<consumer>`
    (`input/fq_output_0_abcd_acdb_/stem/stem.0/conv/Conv/WithoutBiases`): the consumer's scope wins."""
    cut = name.rfind("_/")
    for candidate in ([name[cut + 1:]] if cut >= 0 else []) + [name]:
        m = module_of_name(candidate, structure)
        if m:
            return m
    return ""


def rows_from_runtime_layers(timings: Sequence[LayerTiming], iterations: int, structure: ModelStructure,
                       graph: Optional[GraphNeighbours] = None) -> List[LayerRow]:
    n = max(iterations, 1)
    originals: Dict[str, List[str]] = {t.name: list(t.fused_from) for t in timings}

    def module_of_layer(name: str) -> str:
        for x in originals.get(name, []):
            m = module_of_name(x, structure)
            if m:
                return m
        return _module_of_runtime_name(name, structure)

    rows: List[LayerRow] = []
    for t in map(_shown, timings):
        if any(module_of_name(x, structure) for x in t.fused_from):
            rows += rows_from_fused([t], structure, iterations)  # split over the ONNX nodes it fused
            continue
        module, how = _module_of_runtime_name(t.name, structure), "name"
        if not module and graph is not None:
            module, how = graph.place(t.name, module_of_layer), "graph"
        p = structure.place(module)
        rows.append(LayerRow(t.name, t.op, p.module, p.block, p.stage, p.kind, t.total_ms / n, t.calls / n,
                             how if module else "none", list(t.fused_from)))
    return rows


def precision_of_row(row: LayerRow) -> str:
    m = _PRECISION.search(row.op)
    return m.group("p") if m else ""


def precision_shares(rows: Sequence[LayerRow]) -> Dict[str, float]:
    """Share of the profiled layer time per runtime precision."""
    total = sum(r.ms for r in rows) or 1.0
    acc: Dict[str, float] = defaultdict(float)
    for r in rows:
        acc[precision_of_row(r) or "?"] += r.ms / total
    return dict(sorted(acc.items(), key=lambda kv: -kv[1]))


def precision_notes(rows: Sequence[LayerRow], precision: str) -> List[str]:
    """One line with the time share per runtime precision; for an INT8 (or BF16) run, one more
    naming the blocks whose heavy layers (convolutions, matmuls) mostly ran in another precision."""
    if not rows:
        return []
    shares = precision_shares(rows)
    notes = ["runtime precision (share of layer time): " +
             ", ".join(f"{p} {100 * s:.0f}%" for p, s in shares.items() if s >= 0.005)]
    wanted = INT_PRECISIONS if precision == "int8" else ("bf16",) if precision == "bf16" else \
        ("f16",) if precision == "fp16" else ()
    if not wanted:
        return notes
    heavy: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        op = r.op.split(" [")[0]
        if op in HEAVY_LAYERS:
            heavy[r.block or "(unattributed)"][precision_of_row(r)] += r.ms
    other = []
    for block, by in heavy.items():
        total = sum(by.values())
        off = sum(ms for p, ms in by.items() if p not in wanted)
        if total > 0 and off / total > 0.5:
            main = max((p for p in by if p not in wanted), key=lambda p: by[p])
            other.append(f"{block} ({main})")
    label = "INT8" if precision == "int8" else precision.upper()
    if other:
        notes.append(f"blocks whose convolutions/matmuls ran mostly outside {label}: " + ", ".join(other))
    else:
        notes.append(f"every block's convolutions/matmuls ran {label} ({'/'.join(wanted)})")
    return notes
