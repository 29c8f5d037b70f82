"""Which blocks hurt INT8 accuracy: quantize one block at a time (or all but one) and compare with FP32.

Every variant is re-quantized from the calibration cache (never re-calibrated) and run on a small
held-out split, so the cost is one quantization + one evaluation per block.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lowformer.compare import compare_logits, nonfinite, require_finite
from lowformer.core.batching import run_in_fixed_batches
from lowformer.data.imagenet import load_images
from lowformer.core.errors import LowformerError
from lowformer.data.preprocess import Preprocessing
from lowformer.core.blocks import blocks_in_order, nodes_of_blocks
from lowformer.core.blocks import nodes_matching
from lowformer.core.config import Config
from lowformer.calibrate.data import ImageSet, split_eval_and_calibration
from lowformer.calibrate.session import calibrated, check_calibration_args
from lowformer.core.progress import Progress, no_progress

log = logging.getLogger(__name__)
MODES = ("quantize-one", "float-one")
MAX_AUTO_STEPS = 8  # auto-exclude keeps at most this many blocks in float


def run_onnx(path: Path, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Logits of an ONNX model on the CPU (fixed-batch models get padded chunks)."""
    import onnxruntime as ort

    from lowformer.engines.onnxruntime.runner import session_options

    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    out = run_in_fixed_batches(lambda x: sess.run(None, {inp.name: x})[0], images, fixed or batch)
    return out.astype(np.float32)


@dataclass
class EvalData:
    """Held-out images with the FP32 model's logits (and labels when they are ImageNet classes)."""

    images: np.ndarray
    labels: Optional[np.ndarray]
    fp32_logits: np.ndarray
    eval_set: ImageSet

    @classmethod
    def build(cls, fp32_onnx: Path, eval_set: ImageSet, preprocessing: Preprocessing) -> "EvalData":
        images = load_images(eval_set.samples, preprocessing)
        logits = run_onnx(fp32_onnx, images)
        # the FP32 model is the reference of every variant: NaN/Inf there leaves nothing to compare with
        require_finite(logits, f"the FP32 reference {Path(fp32_onnx).name}", "held-out image")
        labels = None
        # Folder labels are only the model's classes for ImageNet wnids and a 1000-class model.
        if eval_set.labelled and eval_set.imagenet and logits.shape[1] == 1000 and len(images) == len(eval_set):
            labels = np.array([s.label for s in eval_set.samples])
        return cls(images, labels, logits, eval_set)

    @property
    def fp32_top1(self) -> Optional[float]:
        return None if self.labels is None else float((self.fp32_logits.argmax(1) == self.labels).mean())

    def score(self, logits: np.ndarray, where: str = "the INT8 variant") -> Dict[str, Any]:
        bad = nonfinite(logits, where, "held-out image")
        if bad:  # a failure, ranked the most harmful: no agreement, cosine -1, every image lost
            out_bad: Dict[str, Any] = {"agreement": 0.0, "cosine": -1.0, "n": len(logits), "drop": 100.0,
                                       "failure": bad}
            if self.labels is not None:
                out_bad.update(top1=0.0, fp32_top1=self.fp32_top1)  # drop stays 100: above any gate
            return out_bad
        cmp = compare_logits(self.fp32_logits, logits)
        out: Dict[str, Any] = {"agreement": cmp.top1_agreement, "cosine": cmp.cosine, "n": cmp.n}
        if self.labels is not None:
            top1 = float((logits.argmax(1) == self.labels).mean())
            out.update(top1=top1, fp32_top1=self.fp32_top1, drop=round((self.fp32_top1 - top1) * 100, 3))
        else:
            out["drop"] = round((1 - cmp.top1_agreement) * 100, 3)  # no labels: disagreement in points
        return out


def _evaluate(session, data: EvalData, method: str, target: str, exclude: Sequence[str], tmp: Path,
              tag: str) -> Dict[str, Any]:
    path = tmp / f"{tag}.onnx"
    session.quantize(path, method, target, exclude)
    metrics = data.score(run_onnx(path, data.images))
    path.unlink()
    return metrics


def block_sensitivity(session, data: EvalData, method: str, target: str, base_exclude: Sequence[str] = (),
                      mode: str = "quantize-one", progress: Progress = no_progress) -> List[Dict[str, Any]]:
    """One row per block: metrics with only that block quantized (or only that block in float)."""
    if mode not in MODES:
        raise LowformerError(f"unknown sensitivity mode {mode!r} (use {', '.join(MODES)})")
    blocks = blocks_in_order(session.node_names)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lowformer-sens-") as tmp, \
            progress.task(f"sensitivity ({mode})", total=len(blocks)) as task:
        for block in blocks:
            t0 = time.perf_counter()
            inside = nodes_of_blocks(session.node_names, [block])
            if mode == "quantize-one":
                inside_set = set(inside)
                exclude = [n for n in session.node_names if n not in inside_set] + list(base_exclude)
            else:
                exclude = inside + list(base_exclude)
            metrics = _evaluate(session, data, method, target, exclude, Path(tmp), "variant")
            rows.append({"block": block, "nodes": len(inside), **metrics,
                         "seconds": round(time.perf_counter() - t0, 2)})
            task.advance(status=f"{block}: cosine {metrics['cosine']:.5f}")
    return rows


def harm_order(rows: List[Dict[str, Any]], mode: str) -> List[str]:
    """Blocks from most to least harmful, by logit cosine (top-1 on a small split moves in whole
    images and ties a lot), then agreement."""
    if mode == "quantize-one":  # the block alone quantized: the lower the cosine, the more harm
        ranked = sorted(rows, key=lambda r: (r["cosine"], r["agreement"]))
    else:  # the block alone in float: the higher the cosine, the more keeping it in float helps
        ranked = sorted(rows, key=lambda r: (-r["cosine"], -r["agreement"]))
    return [r["block"] for r in ranked]


@dataclass(frozen=True)
class AutoExcludeConfig(Config):
    """How `auto_exclude_blocks` searches. `max_steps`: the most blocks kept in float; `latency_aware`:
    rank blocks by harm per ms of float cost (profiled on ONNX Runtime's CPU provider) and search for
    the cheapest passing set (False: the plain greedy over the harm order); `threads`: ONNX Runtime
    threads of those profiles (None: its default). What was measured before, reused rather than
    measured again: `rows`, the quantize-one sensitivity rows (`block_sensitivity`); `latency`, a
    `calibrate.latency.BlockLatency` (with `latency_aware=False` its sets still get estimates)."""

    max_steps: int = MAX_AUTO_STEPS
    latency_aware: bool = True
    threads: Optional[int] = None
    rows: Optional[List[Dict[str, Any]]] = None
    latency: Any = None


def auto_exclude_blocks(session, data: EvalData, method: str, target: str, base_exclude: Sequence[str],
                        gate_top1_drop: float, config: Optional[AutoExcludeConfig] = None,
                        **fields: Any) -> Dict[str, Any]:
    """The cheapest set of blocks to keep in float so that the drop is <= the gate.

    `config`: an AutoExcludeConfig, or its fields as keywords (max_steps, latency_aware, threads,
    rows, latency; an unknown one is one LowformerError).

    Latency-aware (the default): profile the FP32 and the all-INT8 model once each on ONNX Runtime's
    CPU provider (the artifact's runtime for --target cpu; a stated proxy for tensorrt / openvino),
    rank blocks by harm (quantize-one cosine loss) per ms that keeping them in float costs, then
    search (calibrate.search: greedy, prune, cheaper harm-order prefixes). `latency_aware=False`: the
    plain greedy over the harm order (with `latency` given, a `calibrate.latency.BlockLatency` measured
    before, its sets still get estimates). Every candidate is one quantization and one evaluation; the
    result's `tried` has one row each, and the chosen model is timed end to end once.
    """
    from lowformer.calibrate.latency import measure_block_latency, time_onnx
    from lowformer.calibrate.search import harm_per_ms_table, search_exclusion

    config = AutoExcludeConfig.build(config, **fields)
    rows, max_steps, latency_aware, threads = config.rows, config.max_steps, config.latency_aware, config.threads
    latency = config.latency
    metric = "top1_drop" if data.labels is not None else "disagreement"
    with tempfile.TemporaryDirectory(prefix="lowformer-auto-") as tmp:
        full_path = Path(tmp) / "full.onnx"
        session.quantize(full_path, method, target, base_exclude)
        full = data.score(run_onnx(full_path, data.images), "the all-INT8 model")
        if full.get("failure"):
            log.warning("%s", full["failure"])
        log.info("INT8 (all blocks): drop %.2f pt (%s); gate %s pt", full["drop"], metric, gate_top1_drop)
        result: Dict[str, Any] = {"gate_top1_drop": gate_top1_drop, "metric": metric, "eval": data.eval_set.facts(),
                                  "initial": full, "kept_float": [], "steps": [], "final": full,
                                  "passed": full["drop"] <= gate_top1_drop, "search": "latency-aware" if latency_aware
                                  else "harm-order", "latency": None, "latency_source": None,
                                  "ranking_table": [], "tried": [], "estimated_ms": None, "measured_ms": None}
        if result["passed"]:
            result["tried"] = [_tried_row([], full, gate_top1_drop, "int8", None)]
            result["conclusion"] = _conclusion(result)
            return result
        rows = rows if rows is not None else block_sensitivity(session, data, method, target, base_exclude,
                                                               "quantize-one")
        harm_ranking = harm_order(rows, "quantize-one")
        lat = latency
        if latency_aware and lat is None:
            lat = measure_block_latency(session.prepared, full_path, session.node_names,
                                        blocks_in_order(session.node_names), target, threads)
        if lat is not None:
            result.update(latency=lat.to_dict(), latency_source=lat.source)
        if latency_aware:
            table = harm_per_ms_table(rows, lat.float_cost)
            ranking = [t["block"] for t in table]
            result.update(ranking_table=[{k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.items()}
                                         for t in table])
        else:
            ranking = harm_ranking
        result.update(ranking=ranking, harm_ranking=harm_ranking)

        def evaluate(kept: List[str]) -> Dict[str, Any]:
            exclude = list(base_exclude) + nodes_of_blocks(session.node_names, kept)
            metrics = _evaluate(session, data, method, target, exclude, Path(tmp), "auto")
            log.info("  %s in float: drop %.2f pt, agreement %.1f%%", ", ".join(kept) or "nothing",
                     metrics["drop"], 100 * metrics["agreement"])
            return metrics

        found = search_exclusion(evaluate, gate_top1_drop, ranking, harm_ranking,
                                 lat.float_cost if latency_aware else None, initial=full,
                                 base_ms=lat.int8_ms if latency_aware else 0.0, max_steps=max_steps)
        result["steps"] = [{"kept_float": list(k), **found.metrics_of(k)["metrics"]} for k in found.greedy
                           if found.metrics_of(k)]
        kept = found.chosen if found.chosen is not None else (found.greedy[-1] if found.greedy else [])
        final = found.metrics_of(kept)
        result.update(kept_float=list(kept), final=final["metrics"] if final else full,
                      passed=found.chosen is not None, stopped=found.stopped,
                      tried=[{**{k: v for k, v in t.items() if k != "metrics"},
                              "estimated_ms": round(lat.estimate(t["kept_float"]), 4) if lat else None}
                             for t in found.tried])
        if lat:
            result["estimated_ms"] = round(lat.estimate(kept), 4)
            chosen_path = Path(tmp) / "chosen.onnx"
            session.quantize(chosen_path, method, target,
                             list(base_exclude) + nodes_of_blocks(session.node_names, kept))
            result["measured_ms"] = {"chosen": round(time_onnx(chosen_path, threads), 4),
                                     "int8": round(lat.int8.latency_ms, 4), "fp32": round(lat.fp32.latency_ms, 4),
                                     "source": lat.source, "batch": 1}
    if not result["passed"]:
        log.warning("the INT8 gate (%s pt) does not hold even with %d blocks in float", gate_top1_drop, len(kept))
    result["conclusion"] = _conclusion(result)
    return result


def _tried_row(kept: List[str], metrics: Dict[str, Any], gate: float, phase: str,
               est: Optional[float]) -> Dict[str, Any]:
    return {"phase": phase, "kept_float": list(kept), "drop": metrics["drop"], "agreement": metrics["agreement"],
            "cosine": metrics["cosine"], "estimated_ms": est, "passed": metrics["drop"] <= gate}


def _conclusion(auto: Dict[str, Any]) -> str:
    """One line: what stays in float, the drop against the gate, the latency (estimated and measured)."""
    kept = ", ".join(auto["kept_float"]) or "nothing"
    verdict = "meets" if auto["passed"] else "does not meet"
    line = (f"keep {kept} in float: drop {auto['final']['drop']:.2f} pt ({auto['metric']}) {verdict} the gate "
            f"{auto['gate_top1_drop']} pt")
    measured = auto.get("measured_ms")
    if auto.get("estimated_ms") is not None and measured:
        line += (f"; latency {auto['estimated_ms']:.3g} ms estimated, {measured['chosen']:.3g} ms measured "
                 f"(all INT8 {measured['int8']:.3g} ms, FP32 {measured['fp32']:.3g} ms; {measured['source']}, batch 1)")
    line += f"; {len(auto.get('tried') or [])} candidate(s) evaluated"
    return line


@dataclass
class SensitivityConfig:
    """What `sensitivity_report` measures (the options of `lowformer calibrate sensitivity`)."""

    calib_data: str
    eval_data: Optional[str] = None
    calib_size: int = 256
    eval_size: int = 200
    target: str = "cpu"
    method: str = "percentile"
    mode: str = "quantize-one"
    exclude: Sequence[str] = ()
    auto_exclude: bool = False
    gate_top1_drop: float = 1.0


def sensitivity_report(src: Path, preprocessing: Preprocessing, checkpoint: str, cfg: SensitivityConfig,
                       model_name: str = "", progress: Progress = no_progress) -> Dict[str, Any]:
    """The per-block table of the FP32 ONNX `src` (exported with module-scoped node names)."""
    check_calibration_args(cfg.method, cfg.target, cfg.calib_data)
    if cfg.mode not in MODES:
        raise LowformerError(f"unknown sensitivity mode {cfg.mode!r} (use {', '.join(MODES)})")
    calib, eval_set = split_eval_and_calibration(cfg.calib_data, cfg.calib_size, cfg.eval_data, cfg.eval_size)
    t0 = time.perf_counter()
    with calibrated(src, calib, preprocessing, checkpoint, None, progress) as session:
        data = EvalData.build(src, eval_set, preprocessing)
        base = nodes_matching(session.node_names, cfg.exclude)
        log.info("sensitivity (%s) of %d blocks on %d held-out images", cfg.mode,
                 len(blocks_in_order(session.node_names)), len(eval_set))
        rows = block_sensitivity(session, data, cfg.method, cfg.target, base, cfg.mode, progress)
        auto = None
        if cfg.auto_exclude:
            auto = auto_exclude_blocks(session, data, cfg.method, cfg.target, base, cfg.gate_top1_drop,
                                       rows=rows if cfg.mode == "quantize-one" else None)
        cache = {"path": str(session.cache.path), "hit": session.cache.hit}
    return {"model": model_name, "onnx": str(src), "mode": cfg.mode,
            "target": cfg.target, "method": cfg.method, "exclude": list(cfg.exclude),
            "calibration": calib.facts(), "eval": eval_set.facts(), "labels": data.labels is not None,
            "fp32_top1": data.fp32_top1, "cache": cache, "blocks": rows,
            "most_harmful": harm_order(rows, cfg.mode)[:5], "auto_exclude": auto,
            "seconds": round(time.perf_counter() - t0, 1)}
