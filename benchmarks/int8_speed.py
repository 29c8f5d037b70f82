"""INT8 (Q/DQ, ONNX Runtime CPU) vs FP32 ONNX: latency side by side, and where INT8 loses time.

    python benchmarks/int8_speed.py b1 --calib-data ../shared/data/imagenet-val-1300/val
    python benchmarks/int8_speed.py artifacts/b1-224 --calib-data DIR --variants conv-only,with-convtranspose --profile
    python benchmarks/int8_speed.py b1 --calib-data DIR --json > int8_speed.json
    python benchmarks/int8_speed.py b1 --calib-data DIR --threads 1 --kernels   # + the GEMM kernels alone

MODEL is a model name (exported to --out first) or an export folder. Calibration is cached beside the
FP32 ONNX, so only the first run pays for it. Every model runs in its own worker process, round-robin
(every round times each model once, after a pause that lets the previous one's spinning threads settle:
lowformer/core/harness.py) so that load from other processes hits all of them alike; the table shows
medians of wall time and of process CPU time (the latter is steadier on a shared machine), at batch 1
and batch 16.
`--profile` adds ONNX Runtime's per-node profile summed per op type (FP32 vs INT8).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from dataclasses import replace
from typing import Dict, List

import numpy as np

# Q/DQ variants tried against the default `cpu` target (see lowformer/calibrate/qdq.py).
VARIANTS = {
    "conv-only": dict(op_types=("Conv", "Clip", "Relu")),
    "with-convtranspose": dict(op_types=("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Clip", "Relu")),
    "no-add": dict(op_types=("Conv", "MatMul", "Gemm", "Clip", "Relu")),
    "keep-activations": dict(extra_options={"QDQKeepRemovableActivations": True}),
    "8bit-weights": dict(reduce_range=False),
    "s8-activations": dict(activation_type="QInt8"),
}


def profiling_session(path: str, threads: int, profile_prefix: str):
    """An ONNX Runtime session writing its per-node profile (the runners of lowformer.engines do not)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def time_models(paths: Dict[str, str], batch: int, image_size: int, threads: int, rounds: int) -> Dict[str, Dict]:
    """Each model in its own worker process (lowformer.core.harness), `rounds` rounds of one timed call,
    interleaved across the models, after one warm-up call each."""
    from lowformer.core.harness import JobFailed, interleaved

    jobs = [(k, "lowformer.bench.workers:open_artifact", dict(path=p, threads=threads, image_size=image_size))
            for k, p in paths.items()]
    done = interleaved(jobs, [batch], rounds, {}, 1, calls=rounds, warmup=1, rewarm=0)
    out = {}
    for k, value in done.items():
        if isinstance(value, JobFailed):
            raise SystemExit(f"error: {k}: {value}")
        wall = [v for r in value[batch] for v in r["wall_ms"]]
        cpu = [v for r in value[batch] for v in r["cpu_ms"]]
        out[k] = {"wall_ms": float(np.median(wall)), "wall_min_ms": float(np.min(wall)),
                  "cpu_ms": float(np.median(cpu)), "rounds": rounds}
    return out


def kernel_ceiling(threads: int, repeats: int = 20) -> List[Dict]:
    """The most INT8 can gain here: ORT's u8 x s8 MatMulInteger against its FP32 MatMul, both with
    constant (prepacked) weights, at the GEMM shapes of the model's 1x1 convolutions."""
    from lowformer.bench import CONV_GEMM_SHAPES, ort_matmul_gops

    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in CONV_GEMM_SHAPES:
        fp32 = ort_matmul_gops("MatMul", rng.standard_normal((m, k), np.float32),
                               rng.standard_normal((k, n), np.float32), repeats, threads)
        int8 = ort_matmul_gops("MatMulInteger", rng.integers(0, 256, (m, k), dtype=np.uint8),
                               rng.integers(-64, 64, (k, n), dtype=np.int8), repeats, threads)
        rows.append({"m": m, "k": k, "n": n, "threads": threads, "fp32_gflops": fp32, "int8_gops": int8,
                     "ratio": int8 / fp32})
    return rows


def op_profile(path: str, image_size: int, threads: int, runs: int = 5) -> Dict[str, Dict[str, float]]:
    """ms per run and node count per op type, from ORT's per-node profiler (batch 1)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = profiling_session(path, threads, os.path.join(tmp, "p"))
        x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
        name = s.get_inputs()[0].name
        s.run(None, {name: x})
        for _ in range(runs):
            s.run(None, {name: x})
        events = json.load(open(s.end_profiling()))
    total: Dict[str, float] = collections.Counter()
    nodes: Dict[str, set] = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            total[op] += e["dur"] / 1e3 / (runs + 1)
            nodes[op].add(e["name"])
    return {op: {"ms": round(ms, 3), "nodes": len(nodes[op])} for op, ms in total.most_common()}


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model name (b1, timm:...) or an export folder with model.onnx")
    ap.add_argument("--calib-data", required=True)
    ap.add_argument("--calib-size", type=int, default=64)
    ap.add_argument("--method", default="percentile", choices=["entropy", "minmax", "percentile"])
    ap.add_argument("--checkpoint")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--out", help="export folder for a model name [default: artifacts/<model>-<size>]")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds [default: 20 at batch 1, 5 above]")
    ap.add_argument("--variants", default="", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--profile", action="store_true", help="per-op-type ORT profile of FP32 and INT8")
    ap.add_argument("--kernels", action="store_true",
                    help="also time ORT's INT8 vs FP32 GEMM kernels alone, at 1 thread and at --threads")
    ap.add_argument("--json", action="store_true", help="print one JSON document to stdout")
    args = ap.parse_args(argv)

    from rich.console import Console

    from lowformer.calibrate.data import select_calibration
    from lowformer.core.machine import machine_info
    from lowformer.calibrate.qdq import quantize_with_ranges, target_config
    from lowformer.calibrate.session import calibrated
    from lowformer.data.preprocess import Preprocessing
    from lowformer.export.pipeline import fp32_onnx

    console = Console(stderr=True, width=150)
    log = lambda s: console.print(s, highlight=False)  # noqa: E731
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]} (choose from {', '.join(VARIANTS)})")
    src, manifest = fp32_onnx(args.model, args.checkpoint, args.image_size, args.out)
    pp = Preprocessing.from_dict(manifest.preprocessing)
    calib = select_calibration(args.calib_data, args.calib_size)
    folder = src.parent / "int8-bench"
    paths = {"fp32": str(src)}
    configs = {"int8 (cpu)": target_config("cpu")}
    configs.update({f"int8 {v}": replace(target_config("cpu"), **VARIANTS[v]) for v in variants})
    with calibrated(src, calib, pp, str(manifest.checkpoint.get("sha256") or "unknown")) as s:
        for label, cfg in configs.items():
            dst = folder / (label.replace(" ", "_").replace("(", "").replace(")", "") + ".onnx")
            needed = list(dict.fromkeys(t for op, ins, outs in s.graph_io if op in cfg.op_types
                                        for t in (*ins, *outs) if t))
            log(f"quantizing {label} ...")
            quantize_with_ranges(s.prepared, dst, s.cache.ranges_for(args.method, needed), args.method, cfg)
            s.cache.save_if_dirty()
            paths[label] = str(dst)
    results = {"model": str(args.model), "image_size": args.image_size, "threads": args.threads,
               "method": args.method, "calib_images": len(calib), "cpu": _cpu_name(), "machine": machine_info(),
               "timings": {}}
    for b in [int(v) for v in args.batches.split(",")]:
        rounds = args.rounds or (20 if b == 1 else 5)
        log(f"timing batch {b} ({rounds} rounds, {args.threads} threads) ...")
        t = time_models(paths, b, args.image_size, args.threads, rounds)
        for k, v in t.items():
            v["speedup_wall"] = t["fp32"]["wall_ms"] / v["wall_ms"]
            v["speedup_cpu"] = t["fp32"]["cpu_ms"] / v["cpu_ms"]
        results["timings"][f"batch{b}"] = t
    if args.profile:
        results["profile"] = {k: op_profile(p, args.image_size, args.threads) for k, p in
                              [("fp32", paths["fp32"]), ("int8 (cpu)", paths["int8 (cpu)"])]}
    if args.kernels:
        results["kernels"] = [row for t in sorted({1, args.threads}) for row in kernel_ceiling(t)]
    _print_table(console, results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _cpu_name() -> str:
    """The CPU and its ISA, e.g. `Intel Xeon ... (AVX-512 VNNI + AMX)`."""
    from lowformer.core.machine import cpu_isa, cpu_model

    return f"{cpu_model()} ({cpu_isa()})"


def _print_table(console, results) -> None:
    from rich.table import Table

    table = Table(title=f"{results['model']} at {results['image_size']} px, ORT CPU, {results['threads']} threads, "
                        f"{results['cpu']}")
    for c in ("model", "batch", "wall median ms", "wall min ms", "cpu median ms", "speedup (wall)", "speedup (cpu)"):
        table.add_column(c, justify="left" if c == "model" else "right")
    for batch, rows in results["timings"].items():
        for k, v in rows.items():
            table.add_row(k, batch.replace("batch", ""), f"{v['wall_ms']:.1f}", f"{v['wall_min_ms']:.1f}",
                          f"{v['cpu_ms']:.1f}", f"{v['speedup_wall']:.2f}x", f"{v['speedup_cpu']:.2f}x")
    console.print(table)
    for k, prof in results.get("profile", {}).items():
        top = ", ".join(f"{op} {d['ms']:.1f} ms ({d['nodes']})" for op, d in list(prof.items())[:8])
        console.print(f"[bold]{k}[/bold] per op type (batch 1): {top}", highlight=False)
    for row in results.get("kernels", []):
        console.print(f"GEMM {row['m']}x{row['k']}x{row['n']}, {row['threads']} thread(s): FP32 "
                      f"{row['fp32_gflops']:.0f} GFLOP/s, u8s8 {row['int8_gops']:.0f} GOP/s, INT8 {row['ratio']:.2f}x",
                      highlight=False)


if __name__ == "__main__":
    sys.exit(main())
