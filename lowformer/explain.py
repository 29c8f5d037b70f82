"""Where an artifact diverges from its PyTorch reference: block by block, on the validation images.

`explain` runs the unfused PyTorch reference (forward hooks on its block modules) and every artifact
on the same decoded images, the artifact with its block-boundary tensors exposed as extra outputs,
and compares each block's output: cosine, relative L2, SQNR (dB), max-abs, aggregated over the whole
data set (sums over all images, not means of per-batch ratios).

Blocks are those of lowformer.core.blocks: `stem` (or LowFormer's `stem.N`), the numbered
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

The pass (images, decoding, reference taps, boundary runners, per-block sums) is lowformer.evaluate's,
shared with validate: `validate(..., explain_plan=prepare_explain(...))` explains in validate's pass.
Here: both sides' blocks, the plan, the findings, the record.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field, fields as dataclass_fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowformer import artifacts as _artifacts
from lowformer.artifacts import ArtifactEntry, ExplainRecord, Manifest
from lowformer.core.blocks import module_blocks, node_blocks
from lowformer.core.config import Config
from lowformer.compare import finite_or_none
from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike
from lowformer.core.progress import Progress, no_progress
from lowformer.evaluate import Images, Item, default_workers, folder_of, resolve_reference, run_pass, select_images
from lowformer.evaluate import unique_names
from lowformer.evaluate.config import DataConfig, ReferenceConfig
from lowformer.evaluate.shards import pass_order
from lowformer.engines.config import RunConfig
from lowformer.evaluate.divergence import BlockSums, Divergence
from lowformer.evaluate.tally import SQNR_CAP_DB

log = logging.getLogger(__name__)

# SQNR floor (dB) of a block output, per precision: below it the block "diverges". Measured on
# EfficientNet-Lite0 (ImageNet weights, 1,300 val images): FP32 ONNX blocks sit at 105-140 dB (float
# reassociation only), the FP16 ONNX at 45-70 dB, the entropy-calibrated INT8 ONNX at 12-35 dB, the
# good INT8 blocks at 20 dB and above. The floors sit well under what a healthy artifact of that
# precision shows, and above what a real fault (a wrong weight, a broken fusion) gives.
DEFAULT_SQNR_FLOOR_DB: Dict[str, float] = {"fp32": 60.0, "fp16": 35.0, "bf16": 25.0, "int8": 20.0}
MAX_FLIPS = 50
SUGGEST_SHARE = 0.9  # the blocks named for --exclude lose at least this share of the SQNR (exclude_suggestion)
MIN_LOSS_DB = 1.0  # under this much SQNR lost in all, nothing is worth keeping in float
MIN_MATCHED_FRACTION = 0.5  # below it the artifact's node names are not ours: refused


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


# --------------------------------------------------------------------------- results

def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else spec.format(value)


@dataclass
class ArtifactExplanation(ExplainRecord):
    """One artifact's explanation: the manifest's ExplainRecord (every block's divergence, the flips,
    the suggestion, the run's runtime and precision) and where it is recorded (`variant`)."""

    variant: Optional[str] = None  # None for the artifact run as exported; else the key it is recorded under

    def to_record(self) -> ExplainRecord:
        """What the manifest keeps of it (`facts["explain"]` or `facts["explain_runs"][variant]`)."""
        kept = {f.name: getattr(self, f.name) for f in dataclass_fields(ExplainRecord)}
        return ExplainRecord(**{**kept, "boundaries_kept": True, "flips": self.flips[:MAX_FLIPS]})

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready record (the manifest's `facts["explain"]`: ExplainRecord, which lowformer.report reads)."""
        return self.to_record().to_dict()

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

    def record(self, lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S) -> None:
        """Into the manifests (`record_explanation`)."""
        record_explanation(self, lock_timeout)

    COLUMNS = ["artifact"] + ArtifactExplanation.COLUMNS

    def rows(self) -> List[List[str]]:
        return [[a.name] + r for a in self.artifacts for r in a.rows()]


# --------------------------------------------------------------------------- planning and the pass

@dataclass
class _Planned:
    item: Item
    name: str
    precision: str
    runtime: Optional[str]  # the runtime asked for when it is not the format's own
    boundaries: Dict[str, str]  # block -> tensor of the artifact's graph (Backend.graph)
    matched: int
    total: int
    unmatched: List[str]
    open: Any  # () -> BoundaryRunner
    backend: str = ""  # the runtime that runs it
    hint: Optional[str] = None  # the runtime's inference-precision setting, where it has one
    run_key: Optional[str] = None  # None: recorded on the entry; else under facts["explain_runs"][run_key]


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
    match the reference's, there are images. `run` does the pass; `consumer` joins another one
    (`lowformer.validate.validate(..., explain_plan=plan)`: one decode for both)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    def images(self) -> Images:
        return Images(self.listed, self.samples, self.held_out, self.pre, self.limit, self.seed)

    def merged(self, shards: Sequence[Dict[str, Any]], items: Dict[str, Item],
               bad: List[Dict[str, str]]) -> "ExplainResult":
        """The explanation of a run from its shards' records (`explanation_from_records`)."""
        return explanation_from_records(shards, items, bad)

    def consumer(self, images: Optional[Images] = None) -> "_Explaining":
        """The pass consumer that explains on `images` (default: the plan's own); `.result(bad)` after."""
        return _Explaining(self, images or self.images())

    def run(self, progress: Progress = no_progress, record: bool = True,
            lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S) -> "ExplainResult":
        consumer = self.consumer()
        # validate's order (one image of each class per round), so `validate --explain` has these figures
        order = pass_order(self.samples)
        bad = run_pass([self.samples[i] for i in order], self.pre, self.batch_size, self.workers, [consumer],
                       progress, self.skip_bad_images, "explaining")
        at = {str(s.path): i for i, s in enumerate(self.samples)}
        bad.sort(key=lambda b: at[b["path"]])
        result = consumer.result(bad)
        if record:
            record_explanation(result, lock_timeout)
        return result


EXPLAIN_BATCH_SIZE = 25


@dataclass(frozen=True)
class ExplainConfig(Config):
    """Everything `explain` is asked, one typed object (its nested configs' fields also as flat
    keywords: `explain(paths, data, limit=8, workers=0)`).

    `images`: which images and their preprocessing (lowformer.evaluate.config.DataConfig: labels,
    limit, batch_size (default 25), workers, seed, skip_bad_images, crop_ratio, interpolation, mean,
    std: the same images `validate` would use); `run`: how the artifacts run
    (lowformer.engines.config.RunConfig: threads, runtimes, precisions; device is cpu, the only one
    explain runs on); `ref`: the PyTorch reference (lowformer.evaluate.config.ReferenceConfig:
    reference, checkpoint, verify). `skip_missing`: skip manifest entries whose file is missing (else
    an error); `record`: write each artifact's explanation into its manifest entry."""

    images: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ref: ReferenceConfig = field(default_factory=ReferenceConfig)
    skip_missing: bool = False
    record: bool = True

    def __post_init__(self) -> None:
        if self.images.batch_size is None:
            object.__setattr__(self, "images", self.images.replace(batch_size=EXPLAIN_BATCH_SIZE))


def prepare_explain(artifacts: Sequence[str], data: PathLike, config: Optional[ExplainConfig] = None,
                    **fields: Any) -> ExplainPlan:
    """Everything `explain` checks before any image is run (the artifacts can be explained, their
    blocks match the reference's, there are images), as a plan: `plan.run()` explains;
    `lowformer.validate.validate(..., explain_plan=plan)` explains in validate's pass.

    `config`: an ExplainConfig, or its fields (and its nested configs' fields) as keywords: labels,
    limit, batch_size, workers, seed, skip_bad_images, crop_ratio, interpolation, mean, std, threads,
    runtimes, precisions, reference, checkpoint, verify, skip_missing (`record` is `run`'s)."""
    from lowformer.data.imagenet import list_samples
    from lowformer.engines import LoadRequest, registry, resolve_artifacts
    from lowformer.engines.runtimes import (check_applicable, normalize_precisions, normalize_runtimes, run_specs,
                                            runtime_for)

    config = ExplainConfig.build(config, **fields)
    images, run = config.images.checked(), config.run
    if not artifacts:
        raise LowformerError("name at least one artifact, export folder or manifest")
    ref = config.ref.checked()
    if run.device != "cpu":
        raise LowformerError(f"explain runs on the CPU, not {run.device!r}")
    limit, seed, threads = images.limit, images.seed, run.threads
    listed = list_samples(data, images.labels)
    warnings: List[str] = list(getattr(listed, "warnings", []))
    resolved = resolve_artifacts(list(artifacts), config.skip_missing, warnings, ref.full)
    runtimes = normalize_runtimes(run.runtimes)
    precisions = normalize_precisions(run.precisions)
    # before any work, as validate: options that run nothing, bf16 / f16 on a CPU without them
    check_applicable([e.format if e else registry.format_of(p) for p, e, _ in resolved], runtimes, precisions)
    refused = []
    items: List[Item] = []
    for p, e, m in resolved:
        refusal = registry.owner(e.format if e else registry.format_of(p)).explain_refusal(p, e)
        if refusal:
            refused.append(refusal)
        else:
            items.append((p, e, m))
    if not items:
        raise LowformerError(refused[0] if len(refused) == 1 else "; ".join(refused))
    warnings += [f"not explained: {r}" for r in refused]
    samples, held_out = select_images(listed, items, data, limit, seed)  # validate's images, for the same items
    if not samples:
        raise LowformerError(f"no images to explain in {data}" + (" (every image calibrated an INT8 artifact)"
                                                                   if held_out else ""))
    ref_model, manifest, ref_name, _, pre = resolve_reference(items, ref, 224, images=images)
    ref_model.eval()
    ref_blocks = reference_blocks(ref_model, pre.crop)

    paths = list(dict.fromkeys(p for p, _, _ in items))
    short = dict(zip(paths, unique_names(paths)))
    planned: List[_Planned] = []
    for item in items:
        p, e, m = item
        fmt = e.format if e else registry.format_of(p)
        precision = e.precision if e else "fp32"
        nodes, logits = registry.owner(fmt).graph(p)
        bounds, k, unmatched = _match(block_boundaries(nodes, logits), ref_blocks, p, [n for n, _, _ in nodes])
        # The runs validate scores: each runtime asked, at each precision setting asked.
        for spec in run_specs(fmt, runtimes, precisions):
            backend = registry.get(runtime_for(fmt, spec.runtime))
            hint = spec.precision or (backend.inference_precisions[0] if backend.inference_precisions else None)
            request = LoadRequest(p, fmt, "cpu", threads, e, m, hint)
            key = backend.run_key(request)
            open_ = (lambda b=backend, r=request, bo=bounds: b.open_boundaries(r, bo))
            planned.append(_Planned(item, short[p] if key is None else f"{short[p]} ({key})",
                                    backend.effective_precision(precision, hint), spec.runtime, bounds, k,
                                    len(ref_blocks), unmatched, open_, backend.name, hint, key))
    return ExplainPlan(items=items, planned=planned, samples=samples, data=data, listed=listed, held_out=held_out,
                       ref_model=ref_model, ref_name=ref_name, pre=pre, ref_blocks=ref_blocks, warnings=warnings,
                       limit=limit, seed=seed, batch_size=images.batch_size, threads=threads,
                       workers=default_workers() if images.workers is None else max(0, images.workers),
                       skip_bad_images=images.skip_bad_images)


def explain(artifacts: Sequence[str], data: PathLike, config: Optional[ExplainConfig] = None,
            progress: Progress = no_progress, **fields: Any) -> ExplainResult:
    """Block-by-block divergence of every artifact from the PyTorch reference, on the images
    `validate` would use (the same stratified subset, calibration images held out). With `record`,
    each artifact's explanation goes into its manifest entry (`facts["explain"]`).

    `config`: an ExplainConfig, or its fields (and its nested configs' fields) as keywords (as
    `prepare_explain`, and `record`)."""
    config = ExplainConfig.build(config, **fields)
    return prepare_explain(artifacts, data, config).run(progress, config.record)


class _Explaining(Divergence):
    """The pass consumer of a plan (reference taps, boundary runners, per-block sums) on `images`;
    `result(bad)` after the pass: the ExplainResult."""

    def __init__(self, plan: ExplainPlan, images: Images):
        super().__init__(plan.ref_model, plan.ref_blocks, [list(p.boundaries) for p in plan.planned],
                         [p.open for p in plan.planned], plan.threads)
        self.plan, self.images = plan, images

    def setup(self) -> Dict[str, Any]:
        """What the result needs besides the sums, as JSON (a shard's records keep it): each planned
        run, the warnings known before the pass, the data, the reference and its blocks."""
        plan, images = self.plan, self.images
        warnings = list(plan.warnings)
        if [s.path for s in images.samples] != [s.path for s in plan.samples]:
            warnings.append(f"explained on the {len(images.samples)} images validate ran, not the "
                            f"{len(plan.samples)} chosen for the explainable artifacts alone")
        if images.held_out:
            warnings.append(f"held out {len(images.held_out)} calibration image(s); explained on the other "
                            f"{len(images.samples)}")
        planned = [{"path": str(p.item[0]), "name": p.name, "precision": p.precision, "runtime": p.runtime,
                    "total": p.total, "unmatched": list(p.unmatched), "backend": p.backend, "hint": p.hint,
                    "run_key": p.run_key} for p in plan.planned]
        return {"planned": planned, "warnings": warnings,
                "data": {**images.listed.describe(), "images": 0, "limit": images.limit, "seed": images.seed,
                         "held_out_calibration_images": len(images.held_out), "bad_images": [],
                         "reference": plan.ref_name, "blocks": list(plan.ref_blocks)}}

    def to_records(self) -> Dict[str, Any]:
        """This pass's explanation as a shard's records keep it (`explanation_from_records` merges)."""
        return {"setup": self.setup(), "sums": [s.to_records() for s in self.sums], "date": self.date,
                "seconds": time.perf_counter() - self.started}

    def result(self, bad: List[Dict[str, str]]) -> ExplainResult:
        items = {str(p.item[0]): p.item for p in self.plan.planned}
        return _result(self.setup(), self.sums, items, bad, time.perf_counter() - self.started, self.date)


def explanation_from_records(shards: Sequence[Dict[str, Any]], items: Dict[str, Item],
                             bad: List[Dict[str, str]]) -> ExplainResult:
    """The explanation of a run from its shards' records (`_Explaining.to_records`, in shard order):
    the block sums replayed in pass order, so the figures are those of one process over all images.
    `items`: path -> (path, entry, manifest) of the artifacts, for recording (entry None: not recorded)."""
    sums = [BlockSums.merged([shard["sums"][i] for shard in shards]) for i in range(len(shards[0]["sums"]))]
    return _result(shards[0]["setup"], sums, items, bad, max(s["seconds"] for s in shards),
                   min(s["date"] for s in shards))


def _result(setup: Dict[str, Any], sums: Sequence[BlockSums], items: Dict[str, Item], bad: List[Dict[str, str]],
            seconds: float, date: str) -> ExplainResult:
    """The ExplainResult of a pass: each planned run's findings from its sums."""
    if not sums or sums[0].n == 0:
        raise LowformerError("no readable images to explain")
    planned = [_Planned(items.get(d["path"], (d["path"], None, None)), d["name"], d["precision"], d["runtime"], {},
                        0, d["total"], d["unmatched"], None, d["backend"], d["hint"], d["run_key"])
               for d in setup["planned"]]
    results = [_explanation(p, s, date) for p, s in zip(planned, sums)]
    warnings = list(setup["warnings"])
    for r in results:
        if r.logits_max_abs_vs_artifact and r.logits_max_abs_vs_artifact > 1e-3:
            hint = r.inference_precision or "f32"
            why = ("the runtime fused across a boundary" if hint == "f32" else
                   f"at {hint}, an exposed tensor changes where OpenVINO rounds; the block figures come from a "
                   "run that differs that much from the validated one")
            warnings.append(f"{r.name}: exposing the block boundaries changed its logits by up to "
                            f"{r.logits_max_abs_vs_artifact:.3g}: {why}")
    data_info = {**setup["data"], "images": results[0].images, "bad_images": bad}
    result = ExplainResult(data_info, results, warnings, seconds, date)
    result.items = [(p.item, r) for p, r in zip(planned, results)]
    return result


def _explanation(p: _Planned, sums: BlockSums, date: str) -> ArtifactExplanation:
    """One artifact's findings from its sums over the pass."""
    path, entry, _ = p.item
    floor = DEFAULT_SQNR_FLOOR_DB.get(p.precision, DEFAULT_SQNR_FLOOR_DB["fp32"])
    kept = [b for b in sums.blocks if b not in sums.shape_mismatch and (sums.tally[b].n or b in sums.nonfinite)]
    # a block with NaN/Inf reads as the floor of the SQNR scale (no signal), its other metrics null
    sqnrs = [-SQNR_CAP_DB if b in sums.nonfinite else sums.tally[b].sqnr_db() for b in kept]
    added = added_db(sqnrs)
    rows = []
    for b, s, a in zip(kept, sqnrs, added):
        t = sums.tally[b]
        if b in sums.nonfinite:
            rows.append({"block": b, "cosine": None, "rel_l2": None, "sqnr_db": round(s, 2), "max_abs": None,
                         "added_db": round(a, 2), "nonfinite": dict(sums.nonfinite[b])})
            continue
        rows.append({"block": b, "cosine": round(t.cos_sum / t.n, 6),
                     "rel_l2": float(math.sqrt(t.sq_diff / t.sq_ref)) if t.sq_ref > 0 else 0.0,
                     "sqnr_db": round(s, 2), "max_abs": finite_or_none(t.max_abs), "added_db": round(a, 2)})
    first = next((r["block"] for r in rows if r.get("nonfinite") or r["sqnr_db"] < floor), None)
    first_nonfinite = next(({"block": r["block"], "side": " and ".join(k for k, v in r["nonfinite"].items() if v),
                             "images": max(r["nonfinite"].values())} for r in rows if r.get("nonfinite")), None)
    idx = {b: i for i, b in enumerate(sums.blocks)}
    flip_blocks: Dict[str, int] = {}
    for flip, per in zip(sums.flips, sums.flip_sqnr):
        mine = added_db([per[idx[b]] for b in kept])
        block = kept[int(np.argmax(mine))] if kept else None
        flip["block"] = block
        if block is not None:
            flip_blocks[block] = flip_blocks.get(block, 0) + 1
    unmatched = list(p.unmatched) + sorted(sums.shape_mismatch)
    suggestion = exclude_suggestion(rows, floor, p.precision)
    return ArtifactExplanation(
        name=p.name, path=str(path), backend=p.backend, precision=p.precision, images=sums.n,
        tolerance={"sqnr_db": floor, "metric": "sqnr_db", "per_precision": dict(DEFAULT_SQNR_FLOOR_DB)},
        blocks=rows, first_diverging=first, flip_blocks=dict(sorted(flip_blocks.items(), key=lambda kv: -kv[1])),
        flips=sums.flips, flipped=len(sums.flips), matched=len(kept), total=p.total, unmatched=unmatched,
        suggested_exclude=suggestion["blocks"], suggestion=suggestion,
        top1=round(100.0 * sums.correct / sums.n, 4) if sums.n else None,
        reference_top1=round(100.0 * sums.ref_correct / sums.n, 4) if sums.n else None,
        logits_max_abs_vs_artifact=sums.logits_vs_artifact, runtime=p.runtime, inference_precision=p.hint,
        date=date, first_nonfinite=first_nonfinite, variant=p.run_key)


def record_explanation(result: ExplainResult, lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S) -> None:
    """Each artifact's explanation into its manifest entry: `facts["explain"]` (another runtime's
    or precision's run of it: `facts["explain_runs"]["openvino/<hint>"]`), only when the entry still
    records the bytes that were explained (the sha256 of the entry as verified when the artifact was
    resolved; a file re-exported meanwhile is one warning line, not recorded)."""
    by_folder: Dict[Path, List[Tuple[ArtifactEntry, ArtifactExplanation]]] = {}
    for (path, entry, _), r in result.items:
        if entry is not None:
            by_folder.setdefault(folder_of(path, entry), []).append((entry, r))
    for folder, pairs in by_folder.items():
        def apply(manifest: Manifest, pairs=pairs) -> None:
            for entry, r in pairs:
                target = manifest.entry(entry.path)
                if target is None or not _artifacts.recordable(target, entry.sha256, r.path):
                    continue
                target.set_explanation(r.to_record(), r.variant or None)
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


from lowformer.core.command_module import callable_as_command  # noqa: E402

callable_as_command(__name__)  # `lowformer.explain(...)` stays the API function
