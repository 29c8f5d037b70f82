"""Where an artifact diverges from its PyTorch reference: block by block, on the validation images.

`explain` runs the unfused PyTorch reference (forward hooks on its block modules) and every artifact
on the same decoded images, the artifact with its block-boundary tensors exposed as extra outputs,
and compares each block's output: cosine, relative L2, SQNR (dB), max-abs, aggregated over the whole
data set (sums over all images, not means of per-batch ratios).

Blocks are those of lowformer.calibrate.blocks: `stem` (or LowFormer's `stem.N`), the numbered
children of the model's containers (`stages.S.B`, timm's `blocks.S.B`, `layerN.B`), `head` (from the
first plain module after the blocks on; its boundary is the logits). The torch side derives them from
the module tree (leaf modules in call order), the ONNX side from the module-scoped node names, so
both name the same blocks. Only block boundaries are exposed, never every tensor, so the fusions
inside a block (ORT's QLinearConv, OpenVINO's low-precision transformations) stay as they are; a
boundary produced by a DequantizeLinear is read from a cloned DequantizeLinear, so the original one
keeps its single consumer. The logits of the exposed copy are compared with the unmodified artifact
on the first batch (`logits_max_abs_vs_artifact`): the proof that exposing boundaries changed nothing.

Findings per artifact: the first block whose SQNR falls below the precision's floor; for an INT8
artifact, `suggested_exclude`: the blocks that *add* the most error (`added_db`: dB of SQNR lost
across the block), named largest first until they account for SUGGEST_SHARE of all the dB the blocks
lose (rule and numbers in `exclude_suggestion`); and, for every image whose top-1 flipped, the block where that
image's own SQNR drops most (the largest per-image `added_db`, same definition on that image alone).

TensorRT engines, TorchScript and pt2 artifacts do not expose their block boundaries here: they are
refused with the reason (explain the ONNX they were built from).

One cohesive job, hence its length: both sides' blocks, the exposed artifact, the pass, the record.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import shutil
import tempfile
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowformer import artifacts as _artifacts
from lowformer.artifacts import ArtifactEntry, Manifest
from lowformer.calibrate.blocks import module_blocks, node_blocks
from lowformer.compare import finite_or_none, nonfinite_rows
from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike
from lowformer.core.progress import Progress, no_progress
from lowformer.validate import (Item, _folder_of, _unique_names, calibration_images, resolve_reference,
                                default_workers)

log = logging.getLogger(__name__)

# SQNR floor (dB) of a block output, per precision: below it the block "diverges". Measured on
# EfficientNet-Lite0 (ImageNet weights, 1,300 val images): FP32 ONNX blocks sit at 105-140 dB (float
# reassociation only), the FP16 ONNX at 45-70 dB, the entropy-calibrated INT8 ONNX at 12-35 dB, the
# good INT8 blocks at 20 dB and above. The floors sit well under what a healthy artifact of that
# precision shows, and above what a real fault (a wrong weight, a broken fusion) gives.
DEFAULT_SQNR_FLOOR_DB: Dict[str, float] = {"fp32": 60.0, "fp16": 35.0, "bf16": 25.0, "int8": 20.0}
SQNR_CAP_DB = 150.0  # an exact match (no error at all) reads as this, never as infinity (JSON)
MAX_FLIPS = 50
SUGGEST_SHARE = 0.9  # the blocks named for --exclude lose at least this share of the SQNR (exclude_suggestion)
MIN_LOSS_DB = 1.0  # under this much SQNR lost in all, nothing is worth keeping in float
MIN_MATCHED_FRACTION = 0.5  # below it the artifact's node names are not ours: refused
UNEXPLAINABLE = {"tensorrt", "torchscript", "pt2", "aoti"}


# --------------------------------------------------------------------------- blocks of both sides

GraphNodes = Sequence[Tuple[str, Sequence[str], Sequence[str]]]


def block_boundaries(nodes: GraphNodes, logits: str) -> Dict[str, str]:
    """block -> its boundary tensor: the output of the last node of the block (graph order) that
    feeds a node of a later block; `head` -> the logits (the graph output)."""
    blocks = node_blocks([n for n, _, _ in nodes])
    order = list(OrderedDict.fromkeys(blocks.values()))
    rank = {b: i for i, b in enumerate(order)}
    consumers: Dict[str, List[str]] = defaultdict(list)
    for name, ins, _ in nodes:
        for t in ins:
            consumers[t].append(name)
    out: Dict[str, str] = {}
    for name, _, outs in nodes:
        b = blocks.get(name)
        if b is None or b == "head":
            continue
        for t in outs:
            if any(rank.get(blocks.get(c, ""), -1) > rank[b] for c in consumers.get(t, ())):
                out[b] = t  # a later node of the block overwrites: the last one
    ordered = {b: out[b] for b in order if b in out}
    ordered["head"] = logits
    return ordered


def reference_blocks(model, crop: int) -> List[str]:
    """The blocks of a PyTorch model in execution order, from its leaf modules in call order."""
    import torch

    order: List[str] = []
    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: order.append(n)) for n, m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, crop, crop))
    finally:
        for h in hooks:
            h.remove()
    names = list(OrderedDict.fromkeys(module_blocks(list(dict.fromkeys(order))).values()))
    if "head" in names:
        names.remove("head")
    return names + ["head"]  # the logits, whatever the model calls its last modules


class _ReferenceTaps:
    """Forward hooks on the reference's block modules: each block's output for the current batch.
    `stem` (the modules before the first numbered block) is read as the input of that block."""

    def __init__(self, model, blocks: Sequence[str]):
        self.model, self.out, self.hooks = model, {}, []
        for i, b in enumerate(blocks):
            if b == "head":
                continue
            if b == "stem":
                nxt = blocks[i + 1] if i + 1 < len(blocks) else "head"
                if nxt == "head":
                    continue
                mod = model.get_submodule(nxt)
                self.hooks.append(mod.register_forward_pre_hook(
                    lambda m, inp, b=b: self.out.__setitem__(b, _first_tensor(inp))))
            else:
                mod = model.get_submodule(b)
                self.hooks.append(mod.register_forward_hook(
                    lambda m, inp, outp, b=b: self.out.__setitem__(b, _first_tensor(outp))))

    def run(self, x) -> Dict[str, np.ndarray]:
        import torch

        self.out = {}
        with torch.no_grad():
            logits = self.model(x)
        out = {b: t.detach().float().cpu().numpy() for b, t in self.out.items() if t is not None}
        out["head"] = logits.detach().float().cpu().numpy()
        return out

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _first_tensor(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


# --------------------------------------------------------------------------- artifacts with boundaries

class _BoundaryRunner:
    """An artifact run with its block boundaries as extra outputs: `run(x) -> {block: array}`."""

    name: str = ""
    backend: str = ""
    variant: Optional[str] = None

    def __init__(self) -> None:
        self.boundaries: Dict[str, str] = {}
        self.tmp: Optional[str] = None
        self.fixed_batch: Optional[int] = None

    def _run(self, x: np.ndarray) -> List[np.ndarray]:
        raise NotImplementedError

    def original_logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        outs = _in_fixed_batches(self._run, x, self.fixed_batch)
        return {b: np.asarray(o, dtype=np.float32) for b, o in zip(self.boundaries, outs)}

    def close(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _in_fixed_batches(fn, x: np.ndarray, fixed: Optional[int]) -> List[np.ndarray]:
    if not fixed or len(x) == fixed:
        return fn(x)
    parts: List[List[np.ndarray]] = []
    for i in range(0, len(x), fixed):
        chunk = x[i:i + fixed]
        n = len(chunk)
        if n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *x.shape[1:]), x.dtype)])
        parts.append([o[:n] for o in fn(chunk)])
    return [np.concatenate(col) for col in zip(*parts)]


def exposed_onnx(src: PathLike, dst: PathLike, boundaries: Dict[str, str]) -> Dict[str, str]:
    """Write a copy of `src` whose outputs are the logits then each block boundary (not every tensor).
    A boundary made by a DequantizeLinear is read from a clone of it, so the original keeps its one
    consumer and the runtime fuses the graph as before. Returns block -> output name in `dst`."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(src))
    g = model.graph
    logits = g.output[0].name
    try:
        inferred = shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(g.output)}
    except Exception:  # noqa: BLE001 - outputs then go out typed float
        types = {}
    producer = {t: n for n in g.node for t in n.output}
    names: Dict[str, str] = {}
    new_outputs = []
    for block, tensor in boundaries.items():
        if tensor == logits:
            names[block] = logits
            continue
        node = producer.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear":
            out = f"{tensor}__explain"
            clone = helper.make_node("DequantizeLinear", list(node.input), [out], name=f"{node.name}__explain",
                                     domain=node.domain)
            clone.attribute.extend(node.attribute)
            g.node.append(clone)
            elem = onnx.TensorProto.FLOAT
        else:
            out = tensor
            elem = types.get(tensor) or onnx.TensorProto.FLOAT
        new_outputs.append(helper.make_tensor_value_info(out, elem, None))
        names[block] = out
    g.output.extend(new_outputs)
    onnx.save(model, str(dst))
    return names


class _OrtBoundaries(_BoundaryRunner):
    backend = "onnxruntime"

    def __init__(self, path: Path, boundaries: Dict[str, str], threads: Optional[int], exact: bool):
        import onnxruntime as ort

        from lowformer.engines.onnxrt import session_options

        super().__init__()
        self.path = path
        self.tmp = tempfile.mkdtemp(prefix="lowformer-explain-")
        copy = Path(self.tmp) / path.name
        outputs = exposed_onnx(path, copy, boundaries)
        so = session_options(threads, exact=exact)
        try:
            self.session = ort.InferenceSession(str(copy), so, providers=["CPUExecutionProvider"])
            self._original = None
            self._so = (threads, exact)
        except Exception as e:
            self.close()
            raise LowformerError(f"ONNX Runtime cannot load {path.name} with its block boundaries exposed: "
                                 f"{str(e).splitlines()[0]}") from None
        self.boundaries = dict(boundaries)
        self.outputs = [outputs[b] for b in boundaries]
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def _run(self, x: np.ndarray) -> List[np.ndarray]:
        return self.session.run(self.outputs, {self.input_name: np.ascontiguousarray(x, np.float32)})

    def original_logits(self, x: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        from lowformer.engines.onnxrt import session_options

        threads, exact = self._so
        sess = ort.InferenceSession(str(self.path), session_options(threads, exact=exact),
                                    providers=["CPUExecutionProvider"])
        name = sess.get_outputs()[0].name
        return _in_fixed_batches(lambda c: sess.run([name], {self.input_name: c}), x, self.fixed_batch)[0]


class _OpenVINOBoundaries(_BoundaryRunner):
    """OpenVINO (CPU plugin, at the inference precision `hint`, like the run validate scored): an ONNX
    via its exposed copy, an IR via `add_outputs` on the ops at the block boundaries."""

    backend = "openvino"

    def __init__(self, path: Path, boundaries: Dict[str, Tuple[str, int]], threads: Optional[int],
                 onnx_boundaries: Optional[Dict[str, str]] = None, weights: Optional[Dict[str, Any]] = None,
                 hint: str = "f32"):
        from lowformer.engines.openvino import check_ir, core, read_model

        super().__init__()
        self.path, self.threads = path, threads
        if onnx_boundaries is not None:  # an ONNX through OpenVINO: the same exposed copy ORT runs
            self.tmp = tempfile.mkdtemp(prefix="lowformer-explain-")
            copy = Path(self.tmp) / path.name
            outputs = exposed_onnx(path, copy, onnx_boundaries)
            model = read_model(str(copy))
            by_name = {n: o for o in model.outputs for n in o.get_names()}
            ports = [by_name[outputs[b]] for b in onnx_boundaries]
            self.boundaries = dict(onnx_boundaries)
        else:
            check_ir(path, weights)
            model = read_model(str(path))
            ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
            extra = [ops[name].output(idx) for b, (name, idx) in boundaries.items() if b != "head"]
            if extra:
                model.add_outputs(extra)
            logits = model.outputs[0]
            added = {(o.get_node().get_friendly_name(), o.get_index()) for o in extra}
            out_by = {}
            for o in model.outputs[1:]:
                src = o.get_node().input_value(0) if o.get_node().get_type_name() == "Result" else o
                out_by[(src.get_node().get_friendly_name(), src.get_index())] = o
            ports = [logits if b == "head" else out_by.get(boundaries[b]) for b in boundaries]
            if any(p is None for p in ports) or not added:
                ports = [logits] + list(model.outputs[1:])
            self.boundaries = dict(boundaries)
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

    def _run(self, x: np.ndarray) -> List[np.ndarray]:
        res = self.request.infer({0: np.ascontiguousarray(x, np.float32)})
        return [np.array(res[p], dtype=np.float32, copy=True) for p in self.ports]

    def original_logits(self, x: np.ndarray) -> np.ndarray:
        from lowformer.engines.openvino import read_model

        compiled = self._core.compile_model(read_model(str(self.path)), "CPU", self._cfg)
        req = compiled.create_infer_request()
        return _in_fixed_batches(lambda c: [np.array(req.infer({0: c})[compiled.outputs[0]], copy=True)],
                                 x, self.fixed_batch)[0]


def _onnx_graph(path: Path) -> Tuple[GraphNodes, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise LowformerError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return [(n.name, list(n.input), list(n.output)) for n in model.graph.node], model.graph.output[0].name


def _ir_graph(path: Path) -> Tuple[GraphNodes, str, Dict[str, Tuple[str, int]]]:
    """An OpenVINO IR as (friendly name, input ports, output ports); ports are `name:index`."""
    from lowformer.engines.openvino import read_model

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
    return nodes, logits, {}


# --------------------------------------------------------------------------- results

@dataclass
class _BlockTally:
    n: int = 0
    cos_sum: float = 0.0
    sq_ref: float = 0.0
    sq_diff: float = 0.0
    max_abs: float = 0.0

    def sqnr_db(self) -> float:
        return _sqnr(self.sq_ref, self.sq_diff)


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else spec.format(value)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """max |a - b|, NaN/Inf equal where both hold the same; None when they differ there."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)
    d[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    return finite_or_none(float(d.max())) if d.size else 0.0


def _sqnr(sq_ref: float, sq_diff: float) -> float:
    if sq_diff <= 0.0:
        return SQNR_CAP_DB
    if sq_ref <= 0.0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, max(-SQNR_CAP_DB, 10.0 * math.log10(sq_ref / sq_diff))))


@dataclass
class ArtifactExplanation:
    name: str
    path: str
    backend: str
    precision: str
    images: int = 0
    tolerance: Dict[str, Any] = field(default_factory=dict)
    blocks: List[Dict[str, Any]] = field(default_factory=list)
    first_diverging: Optional[str] = None
    flip_blocks: Dict[str, int] = field(default_factory=dict)
    flips: List[Dict[str, Any]] = field(default_factory=list)
    flipped: int = 0
    matched: int = 0
    total: int = 0
    unmatched: List[str] = field(default_factory=list)
    suggested_exclude: List[str] = field(default_factory=list)
    suggestion: Dict[str, Any] = field(default_factory=dict)  # exclude_suggestion's rule and its numbers
    top1: Optional[float] = None
    reference_top1: Optional[float] = None
    logits_max_abs_vs_artifact: Optional[float] = None
    runtime: Optional[str] = None
    inference_precision: Optional[str] = None  # OpenVINO's hint for the run (f32 | bf16 | f16)
    date: str = ""
    first_nonfinite: Optional[Dict[str, Any]] = None  # {block, side (reference/artifact), images}: NaN/Inf

    @property
    def variant(self) -> Optional[str]:
        """None for the artifact run as exported; else `openvino/<hint>`, the key it is recorded under
        (as validate's runs)."""
        hint = self.inference_precision or "f32"
        if self.runtime is None and hint == "f32":
            return None
        return f"openvino/{hint}"

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready record (the manifest's `facts["explain"]`; lowformer.report reads these keys)."""
        return {"date": self.date, "images": self.images, "boundaries_kept": True, "tolerance": self.tolerance,
                "blocks": self.blocks, "first_diverging": self.first_diverging, "flip_blocks": self.flip_blocks,
                "flips": self.flips[:MAX_FLIPS], "flipped": self.flipped, "matched": self.matched,
                "total": self.total, "unmatched": self.unmatched, "suggested_exclude": self.suggested_exclude,
                "suggestion": self.suggestion,
                "top1": self.top1, "reference_top1": self.reference_top1,
                "logits_max_abs_vs_artifact": self.logits_max_abs_vs_artifact,
                "name": self.name, "path": self.path, "backend": self.backend, "precision": self.precision,
                "runtime": self.runtime, "inference_precision": self.inference_precision,
                "first_nonfinite": self.first_nonfinite}

    COLUMNS = ["block", "cosine", "rel L2", "SQNR dB", "added dB", "max|Δ|", "flips", "note"]

    def rows(self) -> List[List[str]]:
        floor = self.tolerance.get("sqnr_db")
        out = []
        for b in self.blocks:
            notes = []
            if b.get("nonfinite"):
                notes.append("NaN/Inf in " + " and ".join(k for k, v in b["nonfinite"].items() if v))
            if b["block"] == self.first_diverging:
                notes.append("first diverging")
            elif floor is not None and b["sqnr_db"] < floor:
                notes.append("below floor")
            if b["block"] in self.suggested_exclude:
                notes.append("suggest --exclude")
            out.append([b["block"], _fmt(b["cosine"], "{:.6f}"), _fmt(b["rel_l2"], "{:.3g}"), f"{b['sqnr_db']:.1f}",
                        _fmt(b.get("added_db"), "{:.1f}"), _fmt(b["max_abs"], "{:.3g}"),
                        str(self.flip_blocks.get(b["block"], 0)) if self.flipped else "-", ", ".join(notes)])
        return out

    def suggestion_reason(self) -> str:
        s = self.suggestion or {}
        if not s.get("loss_db"):
            return "the first block, below the floor"
        return (f"blocks that lose >= {s['min_added_db']:.2f} dB, largest first until >= {100 * s['share']:.0f}% "
                f"of the {s['loss_db']:.1f} dB the blocks lose; together {100 * s['covered']:.0f}% of the loss")

    def findings(self) -> List[str]:
        floor = self.tolerance.get("sqnr_db")
        lines = [f"{self.matched} of {self.total} blocks matched ({', '.join(self.unmatched)} not found)"
                 if self.unmatched else f"all {self.total} blocks matched; only block boundaries were exposed "
                                       f"(fusions inside blocks kept)"]
        if self.first_nonfinite:
            nf = self.first_nonfinite
            lines.append(f"non-finite values (NaN/Inf) first appear at block {nf['block']}, in the {nf['side']} "
                         f"({nf['images']} of {self.images} images)")
        if self.first_diverging:
            lines.append(f"first block below the {self.precision} floor of {floor:g} dB SQNR: {self.first_diverging}")
        else:
            lines.append(f"every block stays above the {self.precision} floor of {floor:g} dB SQNR")
        if self.flipped:
            top = sorted(self.flip_blocks.items(), key=lambda kv: -kv[1])[:3]
            lines.append(f"{self.flipped} flipped image(s) diverge most in " +
                         ", ".join(f"{b} ({n})" for b, n in top))
        if self.suggested_exclude:
            lines.append(f"suggested --exclude: {' '.join(self.suggested_exclude)} ({self.suggestion_reason()})")
        return lines


@dataclass
class ExplainResult:
    data: Dict[str, Any]
    artifacts: List[ArtifactExplanation]
    warnings: List[str]
    seconds: float
    date: str
    items: List[Tuple[Item, ArtifactExplanation]] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        return {"date": self.date, "seconds": round(self.seconds, 2), "data": self.data,
                "artifacts": [a.to_dict() for a in self.artifacts], "warnings": self.warnings}

    COLUMNS = ["artifact"] + ArtifactExplanation.COLUMNS

    def rows(self) -> List[List[str]]:
        return [[a.name] + r for a in self.artifacts for r in a.rows()]


# --------------------------------------------------------------------------- planning and the pass

@dataclass
class _Planned:
    item: Item
    name: str
    precision: str
    runtime: Optional[str]
    boundaries: Dict[str, Any]  # block -> tensor (ONNX name, or (op, port) of an IR)
    matched: int
    total: int
    unmatched: List[str]
    open: Any  # () -> _BoundaryRunner
    hint: Optional[str] = None  # OpenVINO's inference precision; None for ONNX Runtime


def _refusal(path: Path, entry: Optional[ArtifactEntry], fmt: str) -> str:
    src = ((entry.facts.get("source") or {}).get("path") if entry else None) or "the ONNX it was built from"
    if fmt == "tensorrt":
        from lowformer.engines.tensorrt import tensorrt_status

        ok, reason = tensorrt_status()
        if not ok:
            return (f"{path.name}: explain needs a GPU with TensorRT to run a TensorRT engine ({reason}); explain "
                    f"{src} instead (its block boundaries are ONNX tensors)")
        return (f"{path.name}: a TensorRT engine does not expose its block boundaries (its layers are fused when "
                f"it is built); explain {src} instead")
    kind = "TorchScript" if fmt == "torchscript" else "pt2"
    return (f"{path.name}: a {kind} artifact does not expose its block boundaries to explain (no named "
            f"intermediate outputs to add); explain the model's ONNX instead")


def _match(boundaries: Dict[str, Any], ref_blocks: Sequence[str], path: Path, example: Sequence[str]):
    matched = [b for b in ref_blocks if b in boundaries]
    unmatched = [b for b in ref_blocks if b not in boundaries]
    if len(matched) < max(2, MIN_MATCHED_FRACTION * len(ref_blocks)):
        names = ", ".join(repr(n) for n in list(example)[:2]) or "none"
        raise LowformerError(f"{path.name}: only {len(matched)} of {len(ref_blocks)} blocks of the reference found "
                             f"among its node names (explain needs module-scoped names like "
                             f"'/blocks/blocks.1/blocks.1.0/conv/Conv'; this graph has {names}, ...)")
    return {b: boundaries[b] for b in ref_blocks if b in boundaries}, len(matched), unmatched


class ExplainPlan:
    """Everything checked before any image is run: the artifacts can be explained, their blocks
    match the reference's, there are images. `run` does the pass."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    def run(self, progress: Progress = no_progress, record: bool = True,
            lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S) -> "ExplainResult":
        return _run(self, progress, record, lock_timeout)


def prepare_explain(artifacts: Sequence[str], data: PathLike, *, labels: Optional[PathLike] = None,
                    limit: Optional[int] = None, batch_size: int = 25, workers: Optional[int] = None,
                    seed: int = 0, threads: Optional[int] = None, skip_missing: bool = False,
                    reference: Optional[str] = None, checkpoint: Optional[str] = None,
                    runtimes: Sequence[str] = (), precisions: Sequence[str] = (), skip_bad_images: bool = False,
                    crop_ratio: Optional[float] = None, interpolation: Optional[str] = None,
                    mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> ExplainPlan:
    from lowformer.data.imagenet import list_samples, stratified_subset
    from lowformer.engines import resolve_artifacts
    from lowformer.engines.openvino import effective_precision
    from lowformer.engines.runtimes import check_applicable, normalize_precisions, normalize_runtimes, run_specs

    if batch_size < 1:
        raise LowformerError("batch size must be at least 1")
    if limit is not None and limit < 1:
        raise LowformerError("limit must be at least 1")
    if not artifacts:
        raise LowformerError("name at least one artifact, export folder or manifest")
    listed = list_samples(data, labels)
    warnings: List[str] = list(getattr(listed, "warnings", []))
    resolved = resolve_artifacts(list(artifacts), skip_missing, warnings)
    runtimes = normalize_runtimes(runtimes)
    precisions = normalize_precisions(precisions)
    # before any work, as validate: options that run nothing, bf16 / f16 on a CPU without them
    check_applicable([e.format if e else _artifacts.format_of(p) for p, e, _ in resolved], runtimes, precisions)
    refused = []
    items: List[Item] = []
    for p, e, m in resolved:
        fmt = e.format if e else _artifacts.format_of(p)
        if fmt in UNEXPLAINABLE:
            refused.append(_refusal(p, e, fmt))
        else:
            items.append((p, e, m))
    if not items:
        raise LowformerError(refused[0] if len(refused) == 1 else "; ".join(refused))
    warnings += [f"not explained: {r}" for r in refused]
    held_out = calibration_images(items, data, listed.samples)
    samples = stratified_subset(listed.samples, limit, seed=seed, exclude=held_out)
    if not samples:
        raise LowformerError(f"no images to explain in {data}" + (" (every image calibrated an INT8 artifact)"
                                                                   if held_out else ""))
    ref_model, manifest, ref_name, _, pre = resolve_reference(items, reference, checkpoint, 224, crop_ratio,
                                                              interpolation, mean, std)
    ref_model.eval()
    ref_blocks = reference_blocks(ref_model, pre.crop)

    paths = list(dict.fromkeys(p for p, _, _ in items))
    short = dict(zip(paths, _unique_names(paths)))
    planned: List[_Planned] = []
    for item in items:
        p, e, m = item
        fmt = e.format if e else _artifacts.format_of(p)
        precision = e.precision if e else "fp32"
        exact = bool(e and e.int8.get("parity_needs_reference_math"))
        # The runs validate scores: each runtime asked, OpenVINO at each precision asked.
        specs = [(s.runtime, s.precision or "f32") for s in run_specs(fmt, runtimes, precisions)]
        if fmt == "onnx":
            nodes, logits = _onnx_graph(p)
            bounds, k, unmatched = _match(block_boundaries(nodes, logits), ref_blocks, p, [n for n, _, _ in nodes])
            for rt, hint in specs:
                if rt == "openvino":
                    open_ = (lambda p=p, b=bounds, h=hint: _OpenVINOBoundaries(p, {}, threads, onnx_boundaries=b,
                                                                               hint=h))
                    planned.append(_Planned(item, f"{short[p]} (openvino/{hint})", effective_precision(precision, hint),
                                            "openvino", bounds, k, len(ref_blocks), unmatched, open_, hint))
                else:
                    open_ = (lambda p=p, b=bounds, x=exact: _OrtBoundaries(p, b, threads, x))
                    planned.append(_Planned(item, short[p], precision, None, bounds, k, len(ref_blocks),
                                            unmatched, open_))
        else:  # an OpenVINO IR
            nodes, logits, _ = _ir_graph(p)
            raw = block_boundaries(nodes, logits)
            ports = {b: (t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for b, t in raw.items()}
            bounds, k, unmatched = _match(ports, ref_blocks, p, [n for n, _, _ in nodes])
            w = e.fact("weights") if e else None
            for _, hint in specs:
                open_ = (lambda p=p, b=bounds, w=w, h=hint: _OpenVINOBoundaries(p, b, threads, weights=w, hint=h))
                planned.append(_Planned(item, short[p] if hint == "f32" else f"{short[p]} (openvino/{hint})",
                                        effective_precision(precision, hint), None, bounds, k, len(ref_blocks),
                                        unmatched, open_, hint))
    return ExplainPlan(items=items, planned=planned, samples=samples, data=data, listed=listed, held_out=held_out,
                       ref_model=ref_model, ref_name=ref_name, pre=pre, ref_blocks=ref_blocks, warnings=warnings,
                       limit=limit, seed=seed, batch_size=batch_size, threads=threads,
                       workers=default_workers() if workers is None else max(0, workers),
                       skip_bad_images=skip_bad_images)


def explain(artifacts: Sequence[str], data: PathLike, *, labels: Optional[PathLike] = None,
            limit: Optional[int] = None, batch_size: int = 25, workers: Optional[int] = None, seed: int = 0,
            threads: Optional[int] = None, skip_missing: bool = False, record: bool = True,
            reference: Optional[str] = None, checkpoint: Optional[str] = None, runtimes: Sequence[str] = (),
            precisions: Sequence[str] = (), skip_bad_images: bool = False, progress: Progress = no_progress,
            **preprocessing: Any) -> ExplainResult:
    """Block-by-block divergence of every artifact from the PyTorch reference, on the images
    `validate` would use (the same stratified subset, calibration images held out). With `record`,
    each artifact's explanation goes into its manifest entry (`facts["explain"]`)."""
    plan = prepare_explain(artifacts, data, labels=labels, limit=limit, batch_size=batch_size, workers=workers,
                           seed=seed, threads=threads, skip_missing=skip_missing, reference=reference,
                           checkpoint=checkpoint, runtimes=runtimes, precisions=precisions,
                           skip_bad_images=skip_bad_images, **preprocessing)
    return plan.run(progress, record)


class _Accumulator:
    """One artifact's running sums over the pass."""

    def __init__(self, planned: _Planned):
        self.planned = planned
        self.blocks = list(planned.boundaries)
        self.tally = {b: _BlockTally() for b in self.blocks}
        self.flips: List[Dict[str, Any]] = []
        self.flip_sqnr: List[List[float]] = []
        self.correct = self.ref_correct = self.n = 0
        self.shape_mismatch: set = set()
        self.logits_vs_artifact: Optional[float] = None
        self.nonfinite: Dict[str, Dict[str, int]] = {}  # block -> images with NaN/Inf, per side

    def add(self, ref: Dict[str, np.ndarray], art: Dict[str, np.ndarray], labels: np.ndarray,
            paths: Sequence[str]) -> None:
        n = len(labels)
        per_image = np.full((len(self.blocks), n), SQNR_CAP_DB)
        for k, b in enumerate(self.blocks):
            if b in self.shape_mismatch or b not in ref or b not in art:
                continue
            r, a = ref[b], art[b]
            if r.shape != a.shape:
                self.shape_mismatch.add(b)
                continue
            r = r.reshape(n, -1)
            a = a.reshape(n, -1)
            r_bad, a_bad = nonfinite_rows(r)[0], nonfinite_rows(a)[0]
            keep = ~(r_bad | a_bad)
            if not keep.all():  # NaN/Inf: no metric for this block, its images at the SQNR floor
                counts = self.nonfinite.setdefault(b, {"reference": 0, "artifact": 0})
                counts["reference"] += int(r_bad.sum())
                counts["artifact"] += int(a_bad.sum())
                per_image[k][~keep] = -SQNR_CAP_DB
                r, a = r[keep], a[keep]
            d = a - r
            rr = np.einsum("ij,ij->i", r, r, dtype=np.float64)
            dd = np.einsum("ij,ij->i", d, d, dtype=np.float64)
            aa = np.einsum("ij,ij->i", a, a, dtype=np.float64)
            ar = np.einsum("ij,ij->i", a, r, dtype=np.float64)
            denom = np.sqrt(aa * rr)
            cos = np.where(denom > 0, ar / np.where(denom > 0, denom, 1.0), np.where((aa == 0) & (rr == 0), 1.0, 0.0))
            t = self.tally[b]
            t.n += len(r)
            t.cos_sum += float(cos.sum())
            t.sq_ref += float(rr.sum())
            t.sq_diff += float(dd.sum())
            t.max_abs = max(t.max_abs, float(np.abs(d).max()) if d.size else 0.0)
            per_image[k][keep] = [_sqnr(x, y) for x, y in zip(rr, dd)]
        ref_pred, pred = ref["head"].argmax(1), art["head"].argmax(1)
        self.n += n
        self.correct += int((pred == labels).sum())
        self.ref_correct += int((ref_pred == labels).sum())
        for i in np.flatnonzero(ref_pred != pred):
            self.flips.append({"path": paths[i], "label": int(labels[i]), "reference": int(ref_pred[i]),
                               "artifact": int(pred[i])})
            self.flip_sqnr.append([float(v) for v in per_image[:, i]])

    def result(self, date: str) -> ArtifactExplanation:
        p = self.planned
        path, entry, _ = p.item
        floor = DEFAULT_SQNR_FLOOR_DB.get(p.precision, DEFAULT_SQNR_FLOOR_DB["fp32"])
        kept = [b for b in self.blocks if b not in self.shape_mismatch and (self.tally[b].n or b in self.nonfinite)]
        # a block with NaN/Inf reads as the floor of the SQNR scale (no signal), its other metrics null
        sqnrs = [-SQNR_CAP_DB if b in self.nonfinite else self.tally[b].sqnr_db() for b in kept]
        added = added_db(sqnrs)
        rows = []
        for b, s, a in zip(kept, sqnrs, added):
            t = self.tally[b]
            if b in self.nonfinite:
                rows.append({"block": b, "cosine": None, "rel_l2": None, "sqnr_db": round(s, 2), "max_abs": None,
                             "added_db": round(a, 2), "nonfinite": dict(self.nonfinite[b])})
                continue
            rows.append({"block": b, "cosine": round(t.cos_sum / t.n, 6),
                         "rel_l2": float(math.sqrt(t.sq_diff / t.sq_ref)) if t.sq_ref > 0 else 0.0,
                         "sqnr_db": round(s, 2), "max_abs": finite_or_none(t.max_abs), "added_db": round(a, 2)})
        first = next((r["block"] for r in rows if r.get("nonfinite") or r["sqnr_db"] < floor), None)
        first_nonfinite = next(({"block": r["block"], "side": " and ".join(k for k, v in r["nonfinite"].items() if v),
                                 "images": max(r["nonfinite"].values())} for r in rows if r.get("nonfinite")), None)
        idx = {b: i for i, b in enumerate(self.blocks)}
        flip_blocks: Dict[str, int] = {}
        for flip, per in zip(self.flips, self.flip_sqnr):
            mine = added_db([per[idx[b]] for b in kept])
            block = kept[int(np.argmax(mine))] if kept else None
            flip["block"] = block
            if block is not None:
                flip_blocks[block] = flip_blocks.get(block, 0) + 1
        unmatched = list(p.unmatched) + sorted(self.shape_mismatch)
        suggestion = exclude_suggestion(rows, floor, p.precision)
        return ArtifactExplanation(
            name=p.name, path=str(path), backend="openvino" if p.runtime == "openvino" or
            str(path).endswith(".xml") else "onnxruntime", precision=p.precision, images=self.n,
            tolerance={"sqnr_db": floor, "metric": "sqnr_db", "per_precision": dict(DEFAULT_SQNR_FLOOR_DB)},
            blocks=rows, first_diverging=first, flip_blocks=dict(sorted(flip_blocks.items(), key=lambda kv: -kv[1])),
            flips=self.flips, flipped=len(self.flips), matched=len(kept), total=p.total, unmatched=unmatched,
            suggested_exclude=suggestion["blocks"], suggestion=suggestion,
            top1=round(100.0 * self.correct / self.n, 4) if self.n else None,
            reference_top1=round(100.0 * self.ref_correct / self.n, 4) if self.n else None,
            logits_max_abs_vs_artifact=self.logits_vs_artifact, runtime=p.runtime, inference_precision=p.hint,
            date=date, first_nonfinite=first_nonfinite)


def _run(plan: ExplainPlan, progress: Progress, record: bool,
         lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S) -> ExplainResult:
    import torch

    from lowformer.data.imagenet import ImageDataset

    started = time.perf_counter()
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if plan.threads:
        torch.set_num_threads(plan.threads)
    blocks_needed = list(dict.fromkeys(b for p in plan.planned for b in p.boundaries))
    taps = _ReferenceTaps(plan.ref_model, [b for b in plan.ref_blocks if b in blocks_needed])
    runners: List[_BoundaryRunner] = []
    accs = [_Accumulator(p) for p in plan.planned]
    bad: List[Dict[str, str]] = []
    try:
        for p in plan.planned:
            runners.append(p.open())
        loader = torch.utils.data.DataLoader(ImageDataset(plan.samples, plan.pre), batch_size=plan.batch_size,
                                             shuffle=False, num_workers=plan.workers,
                                             prefetch_factor=2 if plan.workers else None)
        first = True
        with progress.task("explaining", total=len(plan.samples)) as task:
            for x, y, idx, errors in loader:
                ok = np.array([not e for e in errors], dtype=bool)
                for i in np.flatnonzero(~ok):
                    bad.append({"path": str(plan.samples[int(idx[i])].path), "error": errors[i]})
                if bad and not plan.skip_bad_images:
                    raise LowformerError(f"unreadable image: {Path(bad[0]['path']).name} ({bad[0]['error']}); "
                                         "rerun with skip_bad_images to skip it")
                if ok.any():
                    xb = x[torch.from_numpy(ok)] if not ok.all() else x
                    labels = y.numpy()[ok]
                    paths = [str(plan.samples[int(i)].path) for i in idx.numpy()[ok]]
                    ref = taps.run(xb)
                    xn = xb.numpy()
                    for r, acc in zip(runners, accs):
                        art = r.run(xn)
                        if first:  # exposing the boundaries must not change what the artifact computes
                            acc.logits_vs_artifact = _max_abs_diff(art["head"], r.original_logits(xn))
                        acc.add(ref, art, labels, paths)
                    first = False
                task.advance(len(errors))
    finally:
        taps.close()
        for r in runners:
            r.close()
    if not accs or accs[0].n == 0:
        raise LowformerError("no readable images to explain")
    results = [a.result(date) for a in accs]
    warnings = list(plan.warnings)
    if plan.held_out:
        warnings.append(f"held out {len(plan.held_out)} calibration image(s); explained on the other "
                        f"{len(plan.samples)}")
    for r in results:
        if r.logits_max_abs_vs_artifact and r.logits_max_abs_vs_artifact > 1e-3:
            hint = r.inference_precision or "f32"
            why = ("the runtime fused across a boundary" if hint == "f32" else
                   f"at {hint}, an exposed tensor changes where OpenVINO rounds; the block figures come from a "
                   "run that differs that much from the validated one")
            warnings.append(f"{r.name}: exposing the block boundaries changed its logits by up to "
                            f"{r.logits_max_abs_vs_artifact:.3g}: {why}")
    data_info = {**plan.listed.describe(), "images": results[0].images, "limit": plan.limit, "seed": plan.seed,
                 "held_out_calibration_images": len(plan.held_out), "bad_images": bad,
                 "reference": plan.ref_name, "blocks": list(plan.ref_blocks)}
    result = ExplainResult(data_info, results, warnings, time.perf_counter() - started, date)
    result.items = [(p.item, r) for p, r in zip(plan.planned, results)]
    if record:
        record_explanation(result, lock_timeout)
    return result


def record_explanation(result: ExplainResult, lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S) -> None:
    """Each artifact's explanation into its manifest entry: `facts["explain"]` (another runtime's
    or precision's run of it: `facts["explain_runs"]["openvino/<hint>"]`)."""
    by_folder: Dict[Path, List[Tuple[ArtifactEntry, ArtifactExplanation]]] = {}
    for (path, entry, _), r in result.items:
        if entry is not None:
            by_folder.setdefault(_folder_of(path, entry), []).append((entry, r))
    for folder, pairs in by_folder.items():
        def apply(manifest: Manifest, pairs=pairs) -> None:
            for entry, r in pairs:
                target = manifest.entry(entry.path)
                if target is None:
                    continue
                if r.variant:
                    runs = dict(target.facts.get("explain_runs") or {})
                    runs[r.variant] = r.to_dict()
                    target.facts["explain_runs"] = runs
                else:
                    target.facts["explain"] = r.to_dict()
        _artifacts.update(folder, apply, timeout=lock_timeout)


def added_db(sqnrs: Sequence[float]) -> List[float]:
    """The error each block adds, as the dB of SQNR lost across it: `SQNR(input) - SQNR(output)`,
    the input's SQNR being the previous block's output's. The first block's input is the image,
    exact in every artifact: its drop is counted from nothing (0), so a first block is ranked only by
    the floor test, not against an infinite input SQNR that would put every first block on top.
    Negative when a block attenuates the error (ReLU6 clipping, pooling)."""
    out: List[float] = []
    prev: Optional[float] = None
    for s in sqnrs:
        out.append(0.0 if prev is None else prev - s)
        prev = s
    return out


def exclude_suggestion(rows: Sequence[Dict[str, Any]], floor: float, precision: str,
                       share: Optional[float] = None) -> Dict[str, Any]:
    """INT8 only (what `export --int8 --exclude` keeps in float). The rule: the *loss* is the SQNR the
    lossy blocks lose, the sum of every positive `added_db` (input to logits; a block that attenuates
    the error, negative `added_db`, takes nothing off it). Blocks are named greedily, the one that
    loses the most dB first, until the named ones account for at least `share` (SUGGEST_SHARE, 90%)
    of that loss. A first block below the floor is named too (its own drop is not measured: see
    `added_db`). Nothing is named when the loss is under MIN_LOSS_DB.

    Returns {"blocks", "share" (the fraction asked), "covered" (what the named blocks account for),
    "loss_db", "min_added_db" (the smallest named block's added dB)}."""
    share = SUGGEST_SHARE if share is None else share
    out: Dict[str, Any] = {"blocks": [], "share": share, "covered": 0.0, "loss_db": 0.0, "min_added_db": None}
    if precision != "int8" or not rows:
        return out
    loss = sum(max(0.0, float(r["added_db"])) for r in rows)
    out["loss_db"] = round(loss, 2)
    named: List[str] = []
    got = 0.0
    if loss >= MIN_LOSS_DB:
        for r in sorted(rows, key=lambda r: -r["added_db"]):
            if got >= share * loss - 1e-9 or r["added_db"] <= 0:
                break
            named.append(r["block"])
            got += float(r["added_db"])
            out["min_added_db"] = round(float(r["added_db"]), 2)
        out["covered"] = round(got / loss, 4)
    if rows[0]["sqnr_db"] < floor and rows[0]["block"] not in named:
        named.insert(0, rows[0]["block"])
    out["blocks"] = named
    return out


def suggest_exclude(rows: Sequence[Dict[str, Any]], floor: float, precision: str) -> List[str]:
    """The blocks `exclude_suggestion` names (see its rule)."""
    return exclude_suggestion(rows, floor, precision)["blocks"]
