"""A per-layer profile of one artifact: rows mapped to LowFormer modules, groups, coverage, JSON.

JSON (`lowformer profile --json FILE`), schema 1: {"schema": 1, "reports": [ProfileReport.to_dict()]}, each
  {"artifact", "label", "backend", "format", "precision", "device", "provider", "batch_size", "iterations",
   "warmup", "threads", "source",
   "layer_total_ms"   (sum of the profiled layer times per call),
   "attributed_ms", "unattributed_ms", "coverage" (attributed / layer total),
   "profiled_run_ms"  (whole call as the profiler saw it, with its overhead; null for TensorRT),
   "latency_median_ms", "latency": {"n", "median_ms", "mean_ms", "p90_ms", "min_ms", "max_ms"} (un-instrumented),
   "groups": {"layer"|"block"|"stage"|"kind": [{"key", "ms", "share", "layers", "kind"}]},
   "rows": [{"name", "op", "module", "block", "stage", "kind", "ms", "calls", "how", "fused_from"}],
   "warnings": [...]}
All times are ms per call (per iteration). `how`: name | graph | order | line | fused-split | none.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from lowformer.profiling.structure import KINDS, UNATTRIBUTED

GROUPS = ("layer", "block", "stage", "kind")


@dataclass
class LayerRow:
    """One runtime layer/node, per profiled iteration."""

    name: str  # as the runtime reports it
    op: str
    module: str  # PyTorch module path; '' when unattributed
    block: str
    stage: str
    kind: str
    ms: float  # mean time per iteration
    calls: float  # per iteration
    how: str  # how `module` was found: name, graph, order, line, fused-split, none
    fused_from: List[str] = field(default_factory=list)

    @property
    def attributed(self) -> bool:
        return bool(self.module)


@dataclass
class GroupRow:
    key: str
    ms: float
    share: float  # of the profiled layer total
    layers: int
    kind: str = ""


def _stage_order(key: str) -> tuple:
    if key == "stem" or key.startswith("stem"):
        return (0, 0, key)
    if key.startswith("stages."):
        tail = key.split(".")[1]
        return (1, int(tail) if tail.isdigit() else 0, key)
    if key == "head":
        return (3, 0, key)
    if key == UNATTRIBUTED:
        return (5, 0, key)
    return (4, 0, key)


def group_order(by: str, keys: List[str]) -> List[str]:
    """Keys in model order (stages, kinds), for charts and stable tables."""
    if by == "kind":
        return sorted(keys, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))
    if by == "stage":
        return sorted(keys, key=_stage_order)
    return sorted(keys)


def _kinds_of(rows: List[LayerRow]) -> str:
    """The kinds in a group, in model order ('MBConv+attention+MLP' for a LowFormer block)."""
    kinds = group_order("kind", list({r.kind for r in rows}))
    named = [k for k in kinds if k != "other"]
    return "+".join(named) if named else "other"


@dataclass
class ProfileReport:
    artifact: str
    label: str
    backend: str
    format: str
    precision: str
    device: str
    provider: str
    batch_size: int
    iterations: int
    warmup: int
    threads: Optional[int]
    rows: List[LayerRow]
    profiled_run_ms: Optional[float]  # mean per-iteration total the profiler saw (with its overhead)
    latency: Dict[str, Any]  # un-instrumented run: TimingStats.to_dict()
    warnings: List[str] = field(default_factory=list)
    source: str = ""  # what measured the layers
    # sha256 of the artifact's bytes measured (its manifest entry's, as verified when it was opened; None:
    # no manifest entry): a record goes only onto an entry that still has it (lowformer.artifacts.record_runs)
    sha256: Optional[str] = None

    @property
    def layer_total_ms(self) -> float:
        return sum(r.ms for r in self.rows)

    @property
    def attributed_ms(self) -> float:
        return sum(r.ms for r in self.rows if r.attributed)

    @property
    def coverage(self) -> float:
        """Time attributed to named LowFormer layers / all profiled layer time."""
        total = self.layer_total_ms
        return self.attributed_ms / total if total > 0 else 0.0

    def group(self, by: str) -> List[GroupRow]:
        if by not in GROUPS:
            raise ValueError(f"group_by must be one of {GROUPS}")
        total = self.layer_total_ms or 1.0
        acc: Dict[str, List[LayerRow]] = {}
        for r in self.rows:
            key = {"layer": r.module or UNATTRIBUTED, "block": r.block, "stage": r.stage, "kind": r.kind}[by]
            acc.setdefault(key, []).append(r)
        out = [GroupRow(k, sum(r.ms for r in rs), sum(r.ms for r in rs) / total, len(rs),
                        _kinds_of(rs) if by in ("layer", "block") else "") for k, rs in acc.items()]
        return sorted(out, key=lambda g: -g.ms)

    def fused_rows(self) -> List[LayerRow]:
        return [r for r in self.rows if r.how == "fused-split"]

    def summary(self) -> Dict[str, Any]:
        return {"layer_total_ms": self.layer_total_ms, "attributed_ms": self.attributed_ms,
                "unattributed_ms": self.layer_total_ms - self.attributed_ms, "coverage": self.coverage,
                "profiled_run_ms": self.profiled_run_ms, "latency_median_ms": self.latency.get("median_ms")}

    def to_dict(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in ("artifact", "label", "backend", "format", "precision", "device",
                                           "provider", "batch_size", "iterations", "warmup", "threads", "source")}
        d.update(self.summary())
        d["latency"] = self.latency
        d["groups"] = {by: [asdict(g) for g in self.group(by)] for by in GROUPS}
        d["rows"] = [asdict(r) for r in sorted(self.rows, key=lambda r: -r.ms)]
        d["warnings"] = list(self.warnings)
        return d
