#!/usr/bin/env python
"""What does `validate --merge` cost at the size of the full ImageNet validation set? 50,000 images x
(the PyTorch reference + 6 artifacts), as the records of N shards, merged into one report.

The merge reads records whose size is images x artifacts, whatever the network: a tiny timm model at
32 px on generated 48 px images (1,000 classes of 50, as ImageNet's val set) stands in for it, so the shards
can be scored here in minutes (scored once, not timed). Then, alternating, --repeats times each:
- the command `lowformer validate --merge FILES --report R --no-record` (its wall time, Python's
  start-up and imports included), and
- the Python call `lowformer.validate.merge_validation(FILES)` after the imports: reading and
  verifying every file (sha256), the checks that they are one run's shards, and the figures of one
  process over all images (bootstrap intervals, McNemar).
The records' sizes are kept too. Run it on an otherwise idle machine.

    python benchmarks/merge_scale.py                        # 50,000 images, 8 shards, 3 repeats
    python benchmarks/merge_scale.py --images 5000 --shards 2 --repeats 1   # a quick look
"""
from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
MODEL, SIZE, IMAGE_PX, CLASSES = "timm:test_efficientnet", 32, 48, 1000  # the model at 32 px, images of 48
ARTIFACTS = ["model.onnx", "model.ts", "model.pt2", "model_fp16.onnx", "model_int8.onnx", "model.xml"]


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def prepare(cache: Path, images: int) -> Path:
    """The generated images and the 6 artifacts (once; reused when present). Returns the export folder."""
    from lowformer.data.synthetic import generate_images
    from lowformer.export.pipeline import export_model

    data = cache / f"images-{images}" / "val"
    log(f"generating {images} images ({CLASSES} classes, {IMAGE_PX} px) in {data}")
    generate_images(data, count=images, size=IMAGE_PX, classes=CLASSES)
    folder = cache / "export"
    if not all((folder / a).is_file() for a in ARTIFACTS):
        calib = generate_images(cache / "calib", count=32, size=IMAGE_PX, classes=4)
        log("exporting the stand-in model to 6 artifacts")
        result = export_model(MODEL, to=("onnx", "torchscript", "pt2", "openvino"), fp16=True, int8=True,
                              image_size=SIZE, out=str(folder), calib={"calib_data": str(calib), "calib_size": 32})
        if result.failed:
            raise SystemExit(f"the export failed: {result.errors}")
    return folder


def score_shards(lowformer: str, folder: Path, data: Path, shards: int, out: Path) -> List[Path]:
    """Every shard's records (`validate --shard K/N --records FILE`), one process after another."""
    files = []
    for k in range(1, shards + 1):
        files.append(out / f"shard{k}.json")
        if files[-1].is_file():
            continue
        log(f"scoring shard {k}/{shards}")
        cmd = [lowformer, "validate", *[str(folder / a) for a in ARTIFACTS], "--data", str(data),
               "--batch-size", "50", "--shard", f"{k}/{shards}", "--records", str(files[-1])]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"shard {k} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return files


def merge_command(lowformer: str, files: List[Path], report: Path) -> float:
    started = time.perf_counter()
    p = subprocess.run([lowformer, "validate", "--merge", *map(str, files), "--report", str(report), "--no-record"],
                       capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if p.returncode not in (0, 1) or not report.is_file():  # 1: a gate (none apply on generated images)
        raise SystemExit(f"the merge failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return seconds


def merge_call(files: List[Path], images: int) -> float:
    from lowformer.validate import merge_validation

    started = time.perf_counter()
    result = merge_validation([str(f) for f in files], record=False)
    seconds = time.perf_counter() - started
    if result.data["images"] != images:
        raise SystemExit(f"the merged result holds {result.data['images']} images, not {images}")
    return seconds


def spread(values: List[float]) -> Dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", default=str(REPO / "artifacts" / "merge-scale"))
    p.add_argument("--out", default=str(REPO / "benchmarks"))
    args = p.parse_args(argv)
    from lowformer.core.files import write_json
    from lowformer.core.machine import cpu_isa, machine_info

    cache = Path(args.cache)
    folder = prepare(cache, args.images)
    lowformer = str(Path(sys.executable).parent / "lowformer")
    records = cache / f"records-{args.images}-{args.shards}"
    records.mkdir(parents=True, exist_ok=True)
    files = score_shards(lowformer, folder, folder.parent / f"images-{args.images}" / "val", args.shards, records)
    merge_call(files, args.images)  # warm: the imports and the page cache, not timed
    runs: Dict[str, List[float]] = {"command_s": [], "python_call_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            log(f"merge, run {i + 1} of {args.repeats}")
            runs["command_s"].append(round(merge_command(lowformer, files, Path(tmp) / "report.json"), 2))
            runs["python_call_s"].append(round(merge_call(files, args.images), 2))
            log(f"  command {runs['command_s'][-1]} s, call {runs['python_call_s'][-1]} s")
    sizes = [f.stat().st_size for f in files]
    machine = machine_info()
    result = {"date": _dt.date.today().isoformat(), "isa": cpu_isa(machine.get("cpu_flags")), "machine": machine,
              "stand_in_model": f"{MODEL} at {SIZE} px, generated {IMAGE_PX} px images, {CLASSES} classes",
              "artifacts": ARTIFACTS, "images": args.images, "shards": args.shards, "repeats": args.repeats,
              "records_mb_total": round(sum(sizes) / 1e6, 1), "records_mb_per_shard": round(max(sizes) / 1e6, 1),
              "runs": runs, "merge_seconds": {k: spread(v) for k, v in runs.items()}}
    slug = result["isa"].lower().replace(" + ", "-").replace(" ", "-")
    out = Path(args.out) / f"merge_scale-{slug}.json"
    write_json(out, result)
    print(f"{args.images} images x (reference + {len(ARTIFACTS)} artifacts), {args.shards} shards, "
          f"{result['records_mb_total']} MB of records")
    for k, v in result["merge_seconds"].items():
        print(f"  {k}: {v['median']} s median ({v['min']}-{v['max']}, {args.repeats} runs)")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
