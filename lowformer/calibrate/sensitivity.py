"""Which blocks hurt INT8 accuracy: quantize one block at a time (or all but one) and compare with FP32.

Every variant is re-quantized from the calibration cache (never re-calibrated) and run on a small
held-out split, so the cost is one quantization + one evaluation per block.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from lowformer.compare import compare_logits
from lowformer.data.imagenet import load_images
from lowformer.core.errors import LowformerError
from lowformer.data.preprocess import Preprocessing
from lowformer.calibrate.blocks import blocks_in_order, nodes_of_blocks
from lowformer.calibrate.data import ImageSet

Log = Callable[[str], None]
MODES = ("quantize-one", "float-one")
MAX_AUTO_STEPS = 8  # auto-exclude keeps at most this many blocks in float


def run_onnx(path: Path, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Logits of an ONNX model on the CPU (fixed-batch models get padded chunks)."""
    import onnxruntime as ort

    from lowformer.engines.onnxrt import session_options

    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch
    outs = []
    for start in range(0, len(images), step):
        x = images[start:start + step]
        n = len(x)
        if fixed and n < fixed:
            x = x[np.arange(fixed) % n]
        outs.append(sess.run(None, {inp.name: np.ascontiguousarray(x)})[0][:n])
    return np.concatenate(outs).astype(np.float32)


@dataclass
class EvalData:
    """Held-out images with the FP32 model's logits (and labels when they are ImageNet classes)."""

    images: np.ndarray
    labels: Optional[np.ndarray]
    fp32_logits: np.ndarray
    eval_set: ImageSet

    @classmethod
    def build(cls, fp32_onnx: Path, eval_set: ImageSet, preprocessing: Preprocessing,
              log: Log = lambda s: None) -> "EvalData":
        images = load_images(eval_set.samples, preprocessing, log)
        logits = run_onnx(fp32_onnx, images)
        labels = None
        # Folder labels are only the model's classes for ImageNet wnids and a 1000-class model.
        if eval_set.labelled and eval_set.imagenet and logits.shape[1] == 1000 and len(images) == len(eval_set):
            labels = np.array([s.label for s in eval_set.samples])
        return cls(images, labels, logits, eval_set)

    @property
    def fp32_top1(self) -> Optional[float]:
        return None if self.labels is None else float((self.fp32_logits.argmax(1) == self.labels).mean())

    def score(self, logits: np.ndarray) -> Dict[str, Any]:
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
                      mode: str = "quantize-one", log: Log = lambda s: None) -> List[Dict[str, Any]]:
    """One row per block: metrics with only that block quantized (or only that block in float)."""
    if mode not in MODES:
        raise LowformerError(f"unknown sensitivity mode {mode!r} (use {', '.join(MODES)})")
    blocks = blocks_in_order(session.node_names)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lowformer-sens-") as tmp:
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
            log(f"  {block:<14} agreement {metrics['agreement']:.1%}  cosine {metrics['cosine']:.5f}  "
                f"drop {metrics['drop']:.2f} pt")
    return rows


def harm_order(rows: List[Dict[str, Any]], mode: str) -> List[str]:
    """Blocks from most to least harmful, by logit cosine (top-1 on a small split moves in whole
    images and ties a lot), then agreement."""
    if mode == "quantize-one":  # the block alone quantized: the lower the cosine, the more harm
        ranked = sorted(rows, key=lambda r: (r["cosine"], r["agreement"]))
    else:  # the block alone in float: the higher the cosine, the more keeping it in float helps
        ranked = sorted(rows, key=lambda r: (-r["cosine"], -r["agreement"]))
    return [r["block"] for r in ranked]


def auto_exclude_blocks(session, data: EvalData, method: str, target: str, base_exclude: Sequence[str],
                        gate_top1_drop: float, log: Log = lambda s: None,
                        rows: Optional[List[Dict[str, Any]]] = None,
                        max_steps: int = MAX_AUTO_STEPS) -> Dict[str, Any]:
    """Keep the most harmful blocks in float, one at a time, until the drop is <= the gate
    (at most `max_steps` blocks: each step is one quantization and one evaluation)."""
    metric = "top1_drop" if data.labels is not None else "disagreement"
    with tempfile.TemporaryDirectory(prefix="lowformer-auto-") as tmp:
        full = _evaluate(session, data, method, target, base_exclude, Path(tmp), "full")
        log(f"INT8 (all blocks): drop {full['drop']:.2f} pt ({metric}); gate {gate_top1_drop} pt")
        result: Dict[str, Any] = {"gate_top1_drop": gate_top1_drop, "metric": metric, "eval": data.eval_set.facts(),
                                  "initial": full, "kept_float": [], "steps": [], "final": full,
                                  "passed": full["drop"] <= gate_top1_drop}
        if result["passed"]:
            return result
        rows = rows if rows is not None else block_sensitivity(session, data, method, target, base_exclude,
                                                               "quantize-one", log)
        ranking = harm_order(rows, "quantize-one")
        result["ranking"] = ranking
        kept: List[str] = []
        for block in ranking[:max_steps]:
            kept.append(block)
            exclude = list(base_exclude) + nodes_of_blocks(session.node_names, kept)
            metrics = _evaluate(session, data, method, target, exclude, Path(tmp), "auto")
            result["steps"].append({"kept_float": list(kept), **metrics})
            log(f"  + {block} in float: drop {metrics['drop']:.2f} pt, agreement {metrics['agreement']:.1%}")
            result.update(kept_float=list(kept), final=metrics, passed=metrics["drop"] <= gate_top1_drop)
            if result["passed"]:
                break
    if not result["passed"]:
        log(f"[yellow]warning:[/yellow] the INT8 gate ({gate_top1_drop} pt) does not hold even with "
            f"{len(kept)} blocks in float")
    return result


def sensitivity_report(model: str, calib_data: str, eval_data: Optional[str] = None,
                       checkpoint: Optional[str] = None, calib_size: int = 256, eval_size: int = 200,
                       target: str = "cpu", method: str = "percentile", image_size: int = 224,
                       mode: str = "quantize-one", exclude: Sequence[str] = (), auto_exclude: bool = False,
                       gate_top1_drop: float = 1.0, out: Optional[str] = None,
                       log: Log = lambda s: None) -> Dict[str, Any]:
    """The per-block table for MODEL (a model name, or an export folder holding model.onnx)."""
    from lowformer.calibrate.blocks import nodes_matching
    from lowformer.calibrate.data import split_eval_and_calibration
    from lowformer.calibrate.quantize import _check_args, calibrated, checkpoint_id, preprocessing_for

    _check_args(method, target, calib_data)
    if mode not in MODES:
        raise LowformerError(f"unknown sensitivity mode {mode!r} (use {', '.join(MODES)})")
    src, manifest, spec = _fp32_onnx(model, checkpoint, image_size, out, log)
    preprocessing = preprocessing_for(spec, image_size, manifest)
    calib, eval_set = split_eval_and_calibration(calib_data, calib_size, eval_data, eval_size, log)
    t0 = time.perf_counter()
    with calibrated(src, calib, preprocessing, checkpoint_id(manifest), None, log) as session:
        data = EvalData.build(src, eval_set, preprocessing, log)
        base = nodes_matching(session.node_names, exclude)
        log(f"sensitivity ({mode}) of {len(blocks_in_order(session.node_names))} blocks on "
            f"{len(eval_set)} held-out images:")
        rows = block_sensitivity(session, data, method, target, base, mode, log)
        auto = None
        if auto_exclude:
            auto = auto_exclude_blocks(session, data, method, target, base, gate_top1_drop, log,
                                       rows if mode == "quantize-one" else None)
        cache = {"path": str(session.cache.path), "hit": session.cache.hit}
    return {"model": (manifest or {}).get("model", {}).get("name", model), "onnx": str(src), "mode": mode,
            "target": target, "method": method, "exclude": list(exclude),
            "calibration": calib.facts(), "eval": eval_set.facts(), "labels": data.labels is not None,
            "fp32_top1": data.fp32_top1, "cache": cache, "blocks": rows,
            "most_harmful": harm_order(rows, mode)[:5], "auto_exclude": auto,
            "seconds": round(time.perf_counter() - t0, 1)}


def _fp32_onnx(model: str, checkpoint: Optional[str], image_size: int, out: Optional[str], log: Log):
    """(model.onnx, manifest, spec): from an export folder, or exported now (fused, checked)."""
    from lowformer.artifacts import MANIFEST_NAME, load_manifest
    from lowformer.models.registry import resolve

    folder = Path(model)
    if folder.is_dir():
        if not (folder / MANIFEST_NAME).is_file() or not (folder / "model.onnx").is_file():
            raise LowformerError(f"{model}: an export folder needs manifest.json and model.onnx "
                                 "(run `lowformer export MODEL --to onnx` first)")
        manifest = load_manifest(folder)
        return folder / "model.onnx", manifest, resolve(manifest["model"]["name"])
    from lowformer.export.pipeline import Exporter

    ex = Exporter(model, checkpoint, image_size, out=out, log=log)
    return ex.ensure_onnx(), ex.manifest, ex.spec
