#!/usr/bin/env python
"""Two remedies for INT8 accuracy, on accuracy and on speed: quantization-aware distillation (an all-INT8
graph, `--qat-steps`) against `--auto-exclude` (blocks kept in float until a tighter gate holds).

    python benchmarks/qat_accuracy.py --variants cpu/percentile      # first: the distilled export
    python benchmarks/qat_vs_auto_exclude.py --gate 0.3               # then this

Reads the folder qat_accuracy.py wrote for `--variant` (model.onnx, model_int8_ptq.onnx,
model_int8.onnx), exports the same model with `--auto-exclude --gate-top1-drop GATE` into a sibling
folder (its own calibration: auto-exclude draws a 200-image evaluation split first), validates the
four models in one pass (every folder's calibration images held out) and times each at batch 1 with
`lowformer bench --latency` (one worker process each, nothing else running). Writes
benchmarks/qat_vs_auto_exclude-<isa>.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "imagenet-val-1300" / "val"))
    p.add_argument("--folder", default=str(REPO / "artifacts" / "qat-accuracy"))
    p.add_argument("--variant", default="cpu/percentile")
    p.add_argument("--gate", type=float, default=0.3, help="--gate-top1-drop of the auto-exclude export (points)")
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of timed calls per model")
    p.add_argument("--json-out", help="default: benchmarks/qat_vs_auto_exclude-<isa>.json")
    args = p.parse_args(argv)

    import lowformer
    from lowformer.core.files import write_json
    from lowformer.core.machine import cpu_isa, machine_info, slug
    from lowformer.export.pipeline import export_model

    target, method = args.variant.split("/")
    distilled = Path(args.folder) / args.variant.replace("/", "-")
    if not (distilled / "model_int8_ptq.onnx").is_file():
        print(f"error: no distilled export in {distilled}: run benchmarks/qat_accuracy.py --variants {args.variant}",
              file=sys.stderr)
        return 1
    checkpoint = Path(args.folder) / "effnet_lite0.pt"
    auto = distilled.with_name(distilled.name + "-auto-exclude")
    log(f"export with --auto-exclude --gate-top1-drop {args.gate} -> {auto}")
    result = export_model("timm:tf_efficientnet_lite0", to=("onnx",), int8=True, checkpoint=str(checkpoint),
                          out=str(auto), calib=dict(calib_data=args.data, calib_size=args.calib_size, method=method,
                                                     target=target, auto_exclude=True, gate_top1_drop=args.gate))
    kept = next(a for a in result.artifacts if a.path == "model_int8.onnx").int8["auto_exclude"]["kept_float"]
    models = {"FP32 ONNX": distilled / "model.onnx", "post-training INT8": distilled / "model_int8_ptq.onnx",
              "distilled INT8": distilled / "model_int8.onnx",
              f"auto-exclude INT8 ({len(kept)} block(s) float)": auto / "model_int8.onnx"}
    log(f"validating {len(models)} models on {args.data} ...")
    report = lowformer.validate([str(m) for m in models.values()], args.data, record=False).to_dict()
    log("timing each at batch 1 ...")
    timed = lowformer.bench([str(m) for m in models.values()], latency=True, duration=args.duration, record=False)
    rows = []
    for (name, path), score, t in zip(models.items(), report["artifacts"], timed.results):
        rows.append({"model": name, "path": str(path), "top1": score["top1"], "top1_delta": score["top1_delta"],
                     "top1_delta_ci": score.get("top1_delta_ci"), "median_ms": t.median_ms, "p10_ms": t.p10_ms,
                     "p90_ms": t.p90_ms})
    doc = {"date": report["date"], "variant": args.variant, "gate_top1_drop": args.gate, "kept_float": kept,
           "images": report["data"]["images"], "reference_top1": report["reference"]["top1"], "rows": rows,
           "bench": {"latency": True, "batch": 1, "duration_s": args.duration}, "machine": machine_info()}
    write_json(args.json_out or REPO / "benchmarks" / f"qat_vs_auto_exclude-{slug(cpu_isa())}.json", doc)
    print(f"{args.variant}: {doc['images']} held-out images, reference {doc['reference_top1']:.2f} %; "
          f"auto-exclude kept in float: {', '.join(kept) or 'nothing'}; {doc['machine']['cpu']} ({doc['machine']['isa']})\n")
    print("| model | top-1 % | Δ vs reference (95% CI) | batch-1 median ms (p10-p90) |\n|---|---:|---|---|")
    for r in rows:
        ci = r["top1_delta_ci"] or [float("nan")] * 2
        print(f"| {r['model']} | {r['top1']:.2f} | {r['top1_delta']:+.2f} pt [{ci[0]:+.2f}, {ci[1]:+.2f}] | "
              f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
