#!/usr/bin/env python
"""Regenerate benchmarks/RESULTS-<isa>.md and results-<isa>.json on this machine's CPU (one pair per ISA).

LowFormer B0/B1/B1.5/B3/E1/E2/E3 and the paper's 17 peers (timm's and the six in lowformer.models.peers),
each as eager PyTorch, TorchScript (optimize_for_inference), ONNX FP32 and ONNX INT8 (Q/DQ, when the
calibration images are there) in ONNX Runtime, torch.export (`model.pt2`) and AOTInductor
(`model_aoti_cpu.pt2`), and OpenVINO on the FP32 ONNX (f32 and bf16 inference precision) and on the INT8
ONNX of the `openvino` target, and ExecuTorch `.pte` programs (XNNPACK FP32 and PT2E INT8; a phone's
static batch of 1, so batch 1 only), at batch 1 (latency) and 16 (throughput); plus the physical-limit line:
achieved GFLOP/s of the best artifact against this CPU's measured FP32 and INT8 matmul peaks. ONNX FP16
is built and parity-checked but not timed: on a CPU it runs FP32 kernels plus casts (a GPU format).

Bounded: every cell is timed for about --cell-seconds (at least 3 calls) after one warm-up call, and
--budget-minutes stops starting new models (results so far are written; --resume goes on from them).
Artifacts are built once into --cache and reused. Weights are random: speed does not depend on them.

    python benchmarks/run.py --quick          # b1 and MobileNetV3-L only, a few minutes
    python benchmarks/run.py                  # the whole table (tens of minutes on 2 cores)
    python benchmarks/run.py --build-only     # only write and check the artifacts (no timing: any load)
    python benchmarks/run.py --report-only    # rewrite every RESULTS-<isa>.md from its results-<isa>.json
    python benchmarks/run.py --resume --retry-failed   # measure again only what failed (after a fix)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from lowformer.bench import int8_peak_gops, matmul_peak_gflops
from lowformer.core.errors import first_line
from lowformer.core.files import write_json
from lowformer.core.harness import JobFailed, interleaved
from lowformer.core.machine import machine_info
from lowformer.sweep.build import build, cache_folder, model_facts
from lowformer.sweep.cells import timed_cell, timing_job
from lowformer.sweep.formats import FORMAT_TITLES, FORMATS, STATIC_BATCH_1, int8_note, standard_notes
from lowformer.sweep.matrix import Cell
from lowformer.sweep.table import DRIFT_LISTED, physical_limits, report_path, results_name, write_report

REPO = Path(__file__).resolve().parents[1]

LOWFORMERS = ["b0", "b1", "b15", "b3", "e1", "e2", "e3"]
QUICK_MODELS = ["b1", "timm:mobilenetv3_large_100"]
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))
DEFAULT_CALIB = SHARED / "data" / "imagenet-val-1300" / "val"
__all__ = ["DRIFT_LISTED", "FORMAT_TITLES", "FORMATS", "LOWFORMERS", "QUICK_MODELS", "main", "peer_models",
           "physical_limits", "report_path", "results_name", "write_report"]


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def peer_models() -> List[str]:
    from lowformer.models.catalog import peer_table

    return [f"timm:{r['timm_name']}" for r in peer_table() if r["available"]]


# --------------------------------------------------------------------------- timing
# The artifacts are built by lowformer.sweep.build, the cells written by lowformer.sweep.cells and the
# report by lowformer.sweep.table: the same code as `lowformer sweep`, which times one cell at a time
# (on a Ray cluster); here every format of a model is timed in rounds interleaved across the formats.


def bench_model(name: str, args, results: Dict[str, Any], save: Callable[[], None]) -> None:
    from lowformer.models.registry import resolve

    spec = resolve(name)
    folder = cache_folder(Path(args.cache), spec.name, args.image_size)
    log(f"{spec.display}: building artifacts in {folder}")
    record = build(spec.name, folder, args.image_size, args.calib)
    results["models"][spec.name] = {**model_facts(spec.name, args.image_size), "artifacts": record["artifacts"]}
    macs = results["models"][spec.name]["macs"]
    todo: Dict[str, List[int]] = {}
    jobs = []
    for fmt in FORMATS:
        bss = [bs for bs in args.batch_sizes if f"{spec.name}|{fmt}|{bs}" not in results["cells"]]
        art = record["artifacts"].get(fmt, {})
        status = "ok" if fmt == "eager" else art.get("status", "not built")
        if fmt in STATIC_BATCH_1:
            for bs in [b for b in bss if b != 1]:
                results["cells"][f"{spec.name}|{fmt}|{bs}"] = Cell(spec.name, fmt, bs).not_timed()
            bss = [b for b in bss if b == 1]
        if not bss:
            continue
        if status != "ok":
            for bs in bss:
                results["cells"][f"{spec.name}|{fmt}|{bs}"] = {**Cell(spec.name, fmt, bs).head(), "status": status}
            continue
        todo[fmt] = bss
        jobs.append(timing_job(spec.name, fmt, None if fmt == "eager" else str(folder / art["path"]), args.image_size,
                               args.threads))

    def progress(fmt: str, bs: int, r: int, samples: Dict[str, List[float]]) -> None:
        log(f"  {fmt:13s} batch {bs:3d} round {r + 1}: {np.median(samples['wall_ms']):.2f} ms")

    batch_sizes = sorted({bs for bss in todo.values() for bs in bss})
    done = interleaved(jobs, batch_sizes, args.rounds, {bs: args.cell_seconds for bs in batch_sizes},
                       args.max_iterations, progress, needs=todo)
    for fmt, value in done.items():
        art = record["artifacts"].get(fmt, {})
        for bs in todo[fmt]:
            cell = Cell(spec.name, fmt, bs)
            if isinstance(value, JobFailed) or bs not in value:  # a runtime that cannot run it: a result
                status = f"failed: {value}" if isinstance(value, JobFailed) else "failed"
                results["cells"][cell.key] = {**cell.head(), "status": status}
                continue
            result = results["cells"][cell.key] = timed_cell(cell, value[bs], macs, art)
            note = result.get("warning")
            log(f"  {fmt:13s} batch {bs:3d}: {result['median_ms']:9.2f} ms median, {result['images_per_s']:8.1f} img/s"
                + (f" ({note})" if note else ""))
    save()


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_MODELS)}, shorter cells")
    p.add_argument("--models", help="comma-separated model names (default: LowFormers and available peers)")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--cell-seconds", type=float, default=4.0, help="timed calls per cell, over all rounds")
    p.add_argument("--rounds", type=int, default=8,
                   help="short rounds per cell, interleaved across the formats (lowformer/core/harness.py)")
    p.add_argument("--max-iterations", type=int, default=50)
    p.add_argument("--budget-minutes", type=float, default=120.0, help="stop starting new models after this")
    p.add_argument("--calib-data", default=str(DEFAULT_CALIB), help="INT8 calibration images (16 are used)")
    p.add_argument("--cache", default=str(REPO / "artifacts" / "bench"))
    p.add_argument("--out", default=str(REPO / "benchmarks"))
    p.add_argument("--resume", action="store_true", help="keep the cells already in this ISA's results-<isa>.json")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: measure the n/a cells again")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--build-only", action="store_true",
                   help="write and check every artifact, time nothing (safe on a busy machine; time later)")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.quick:
        args.cell_seconds = min(args.cell_seconds, 2.0)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.report_only:  # every machine's table, from its JSON
        for path in sorted(out.glob("results-*.json")):
            write_report(json.loads(path.read_text()), report_path(path))
            log(f"wrote {report_path(path)}")
        return 0
    from lowformer.core.machine import cpu_isa

    results_path = out / results_name(cpu_isa())
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    elif args.quick:
        models = QUICK_MODELS
    else:
        models = LOWFORMERS + ([] if args.no_peers else peer_models())
    isa = cpu_isa()
    notes = standard_notes(isa)
    calib = Path(args.calib_data)
    args.calib = calib if calib.is_dir() else None
    try:
        import lowformer.calibrate.quantize  # noqa: F401
    except ImportError:
        args.calib = None
        notes.append("ONNX INT8 skipped: the quantization module is not available in this checkout.")
    else:
        if args.calib is None:
            notes.append(f"ONNX INT8 skipped: calibration images not found at {calib}.")
    if args.calib is not None:
        notes.append(int8_note(isa))
    results: Dict[str, Any] = {"schema": 1, "models": {}, "cells": {}}
    if args.resume and results_path.is_file():
        old = json.loads(results_path.read_text())
        results["cells"], results["models"] = old.get("cells", {}), old.get("models", {})
        if args.retry_failed:
            results["cells"] = {k: c for k, c in results["cells"].items() if c.get("status") == "ok"}
    torch.set_num_threads(args.threads)
    if args.build_only:
        for name in models:
            from lowformer.models.registry import resolve

            spec = resolve(name)
            folder = cache_folder(Path(args.cache), spec.name, args.image_size)
            log(f"{spec.display}: building artifacts in {folder}")
            try:
                record = build(spec.name, folder, args.image_size, args.calib)
            except Exception as e:
                log(f"{name}: failed: {first_line(e, limit=160, typed=True)}")
                continue
            bad = {k: v["status"] for k, v in record["artifacts"].items() if v.get("status") != "ok"}
            log(f"  built {sum(v.get('status') == 'ok' for v in record['artifacts'].values())} artifacts"
                + (f"; not: {bad}" if bad else ""))
        return 0
    log("measuring matmul peaks")
    results.update(machine=machine_info(), date=_dt.date.today().isoformat(), notes=notes,
                   settings={k: getattr(args, k) for k in ("quick", "image_size", "threads", "cell_seconds", "rounds",
                                                          "max_iterations", "batch_sizes")},
                   peaks={"fp32_gflops": matmul_peak_gflops(2048, 5, args.threads),
                          "int8_gops": int8_peak_gops(1024, 5, args.threads)})

    def save() -> None:
        results["physical_limits"] = physical_limits(results)
        write_json(results_path, results)
        write_report(results, report_path(results_path))

    def remeasure_peaks() -> None:
        """Peaks again after the cells, keeping the best: a busy machine lowers a single reading."""
        p = results["peaks"]
        p["fp32_gflops"] = max(p["fp32_gflops"], matmul_peak_gflops(2048, 5, args.threads))
        again = int8_peak_gops(1024, 5, args.threads)
        p["int8_gops"] = {k: max(v, again.get(k, 0.0)) for k, v in p["int8_gops"].items()}

    deadline = time.monotonic() + args.budget_minutes * 60
    for name in models:
        if time.monotonic() > deadline:
            results["notes"].append(f"time budget reached: not measured: {name} and later models (use --resume)")
            break
        try:
            bench_model(name, args, results, save)
        except Exception as e:
            log(f"{name}: failed: {e}")
            traceback.print_exc(file=sys.stderr)
            results["notes"].append(f"{name}: failed ({first_line(e, limit=160, typed=True)})")
        save()
    log("measuring matmul peaks again")
    remeasure_peaks()
    save()
    log(f"wrote {results_path} and {report_path(results_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
