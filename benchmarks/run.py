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
import copy
import datetime as _dt
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from lowformer.bench import int8_peak_gops, matmul_peak_gflops
from lowformer.core.errors import first_line
from lowformer.core.files import atomic_path, write_json
from lowformer.core.harness import UNSTEADY_ROUNDS, JobFailed, combine, drift_note, interleaved, wall_rounds
from lowformer.core.machine import machine_info

REPO = Path(__file__).resolve().parents[1]

LOWFORMERS = ["b0", "b1", "b15", "b3", "e1", "e2", "e3"]
QUICK_MODELS = ["b1", "timm:mobilenetv3_large_100"]
FORMATS = ["eager", "torchscript", "pt2", "aoti", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16",
           "openvino-int8", "executorch-fp32", "executorch-int8"]
FORMAT_TITLES = {"eager": "eager", "torchscript": "TorchScript", "pt2": "torch.export", "aoti": "AOTInductor",
                 "onnx-fp32": "ORT FP32", "onnx-fp16": "ORT FP16", "onnx-int8": "ORT INT8",
                 "openvino-fp32": "OV FP32", "openvino-bf16": "OV BF16", "openvino-int8": "OV INT8",
                 "executorch-fp32": "XNNPACK FP32", "executorch-int8": "XNNPACK INT8"}
FP32_FORMATS = ("eager", "torchscript", "pt2", "aoti", "onnx-fp32", "openvino-fp32", "executorch-fp32")
INT8_FORMATS = ("onnx-int8", "openvino-int8", "executorch-int8")
# ExecuTorch programs have a static batch of 1 (what a phone runs): their other batch cells say so
STATIC_BATCH_1 = ("executorch-fp32", "executorch-int8")
DRIFT_LISTED = 10  # drifted cells named in the report
FILES = {"torchscript": "model.ts", "pt2": "model.pt2", "aoti": "model_aoti_cpu.pt2", "onnx-fp32": "model.onnx",
         "onnx-fp16": "model_fp16.onnx", "onnx-int8": "model_int8.onnx", "openvino-fp32": "model.onnx",
         "openvino-bf16": "model.onnx", "openvino-int8": "model_int8_openvino.onnx",
         "executorch-fp32": "model.pte", "executorch-int8": "model_int8.pte"}
NEEDS_ONNX = ("onnx-fp16", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
# (runtime, OpenVINO inference precision) a format's file is loaded with (lowformer.engines.load); else its own
RUNS = {"openvino-fp32": ("openvino", "f32"), "openvino-bf16": ("openvino", "bf16"),
        "openvino-int8": ("openvino", "f32")}
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))
DEFAULT_CALIB = SHARED / "data" / "imagenet-val-1300" / "val"


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def peer_models() -> List[str]:
    from lowformer.models.catalog import peer_table

    return [f"timm:{r['timm_name']}" for r in peer_table() if r["available"]]


def display_name(spec) -> str:
    """The paper's name of a peer ('MobileNetV3-L (mobilenetv3_large_100)'), else the model's own."""
    from lowformer.models.catalog import PEERS

    peer = next((p for p, t in PEERS if t and spec.timm_name == t and spec.family == "timm"), None)
    return f"{peer} ({spec.timm_name})" if peer else spec.display


# --------------------------------------------------------------------------- building


def inference_model(name: str):
    """(eager model, deployable model): peers in their reparameterized inference form (MobileOne,
    FastViT, RepViT are benchmarked the way their papers deploy them), then BatchNorm folded."""
    from timm.utils.model import reparameterize_model

    from lowformer.models.fusion import fuse
    from lowformer.models.factory import create_model

    torch.manual_seed(0)  # the same random weights in every run, so --resume can rebuild one artifact
    eager = reparameterize_model(create_model(name)).eval()
    deploy = copy.deepcopy(eager)
    fuse(deploy)
    return eager, deploy


def build(name: str, folder: Path, size: int, calib: Optional[Path]) -> Dict[str, Any]:
    """Write model.ts, model.pt2, model_aoti_cpu.pt2, model.onnx, model_fp16.onnx (and the INT8 ONNX of
    the cpu and openvino targets) into `folder` with the pipeline's writers; check each (and the FP32
    ONNX in OpenVINO at f32 and bf16) against the eager model on two random images."""
    from lowformer.compare import compare_logits, parity_passes
    from lowformer.export.fp16 import convert_fp16
    from lowformer.export.onnx_export import export_onnx
    from lowformer.export.prepare import groupnorm1_paths
    from lowformer.engines.pt2.writer import compile_aoti, export_program, save_program
    from lowformer.engines.torchscript.writer import export_torchscript
    from lowformer.models.registry import resolve

    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "build.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("model") != name or record.get("image_size") != size:
        record = {"model": name, "image_size": size, "artifacts": {}, "notes": []}
    eager, deploy = inference_model(name)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = eager(torch.from_numpy(x)).numpy()
    files = FILES

    def pt2(p: Path) -> None:
        ep, _ = export_program(deploy, torch.zeros(1, 3, size, size))
        save_program(ep, p)

    def aoti(p: Path) -> None:
        with open(folder / files["pt2"], "rb") as f:
            compile_aoti(torch.export.load(f), p)

    def pte(p: Path, images: Optional[np.ndarray] = None) -> None:
        from lowformer.engines.executorch.writer import capture, lower, quantize, save

        example = torch.zeros(1, 3, size, size)
        program = capture(deploy, example) if images is None else quantize(deploy, example, images)[0]
        save(lower(program, what=p.name), p)

    steps: Dict[str, Callable[[Path], Any]] = {
        "torchscript": lambda p: export_torchscript(deploy, p, torch.zeros(1, 3, size, size)),
        "pt2": pt2,
        "aoti": aoti,
        "onnx-fp32": lambda p: export_onnx(deploy, p, size),
        "onnx-fp16": lambda p: convert_fp16(folder / files["onnx-fp32"], p, groupnorm1_paths(deploy)),
        "openvino-fp32": lambda p: None,  # the FP32 ONNX, read by OpenVINO
        "openvino-bf16": lambda p: None,
        "executorch-fp32": pte,
    }
    if calib is not None:
        from lowformer.calibrate.config import CalibrationConfig
        from lowformer.calibrate.quantize import quantize_onnx

        for fmt, target in (("onnx-int8", "cpu"), ("openvino-int8", "openvino")):
            steps[fmt] = (lambda t: lambda p: quantize_onnx(
                folder / files["onnx-fp32"], p, resolve(name).preprocessing(size),
                CalibrationConfig(calib_data=str(calib), calib_size=16, method="minmax", target=t)))(target)
        steps["executorch-int8"] = lambda p: pte(p, _calibration_images(name, size, calib))
    for fmt, step in steps.items():
        path = folder / files[fmt]
        done = record["artifacts"].get(fmt, {})
        if path.is_file() and done.get("status") == "ok":
            continue
        needs = "pt2" if fmt == "aoti" else "onnx-fp32" if fmt in NEEDS_ONNX else None
        if needs and record["artifacts"].get(needs, {}).get("status") != "ok":
            record["artifacts"][fmt] = {"status": f"skipped: no {FORMAT_TITLES[needs]} artifact"}
            continue
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                step(path)
            out = _run_artifact(fmt, path, size, x)
            cmp = compare_logits(ref, out)
            precision = {"bf16": "fp16"}.get(fmt.split("-")[-1], fmt.split("-")[-1]) if "-" in fmt else "fp32"
            record["artifacts"][fmt] = {"status": "ok", "path": path.name, "cosine": cmp.cosine,
                                        "rel_l2": cmp.rel_l2, "parity": parity_passes(cmp, precision),
                                        "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # a peer that does not export is a result, not a crash
            record["artifacts"][fmt] = {"status": f"failed: {first_line(e, limit=200, typed=True)}"}
            log(f"  {name} {fmt}: {record['artifacts'][fmt]['status']}")
        write_json(record_path, record)
    return record


def _calibration_images(name: str, size: int, calib: Path, count: int = 16) -> np.ndarray:
    """The same 16 images the INT8 ONNX calibrate on, preprocessed for the model (XNNPACK's PT2E)."""
    from lowformer.calibrate.data import select_calibration
    from lowformer.data.imagenet import load_images
    from lowformer.models.registry import resolve

    return load_images(select_calibration(str(calib), count).samples, resolve(name).preprocessing(size))


def _run_artifact(fmt: str, path: Path, size: int, x: np.ndarray) -> np.ndarray:
    from lowformer.engines import load

    runtime, precision = RUNS.get(fmt, (None, None))
    with load(str(path), "cpu", runtime=runtime, inference_precision=precision) as runner:
        return np.asarray(runner.run(x))


# --------------------------------------------------------------------------- timing


def open_eager(name: str, size: int, threads: Optional[int]):
    """A harness worker (lowformer.core.harness) for the eager model, in its reparameterized inference
    form: (one inference call for a batch size, facts). The artifacts' worker is the package's
    `lowformer.bench.workers:open_artifact`."""
    from lowformer.engines import InputSpec, PyTorchRunner
    from lowformer.engines.timing import call_once

    runner = PyTorchRunner(inference_model(name)[0], InputSpec(shape=(None, 3, size, size)), threads=threads)
    return (lambda bs: call_once(runner, runner.input_spec.example(bs))), {"backend": runner.backend}


def timing_job(name: str, fmt: str, target: Optional[str], size: int, threads: Optional[int]):
    """The harness job of one (model, format): (key, worker, keyword arguments)."""
    if fmt == "eager":
        return fmt, "run:open_eager", dict(name=name, size=size, threads=threads)
    runtime, precision = RUNS.get(fmt, (None, None))
    return fmt, "lowformer.bench.workers:open_artifact", dict(path=target, threads=threads, runtime=runtime,
                                                              precision=precision, image_size=size)


def bench_model(name: str, args, results: Dict[str, Any], save: Callable[[], None]) -> None:
    from lowformer.models.complexity import count_macs
    from lowformer.models.registry import count_parameters, resolve

    spec = resolve(name)
    folder = Path(args.cache) / f"{spec.name.replace(':', '_')}-{args.image_size}"
    log(f"{spec.display}: building artifacts in {folder}")
    record = build(spec.name, folder, args.image_size, args.calib)
    eager, _ = inference_model(spec.name)
    results["models"][spec.name] = {
        "display": display_name(spec), "family": spec.family, "params": count_parameters(eager),
        "macs": int(count_macs(eager, args.image_size)), "artifacts": record["artifacts"]}
    del eager
    macs = results["models"][spec.name]["macs"]
    todo: Dict[str, List[int]] = {}
    jobs = []
    for fmt in FORMATS:
        bss = [bs for bs in args.batch_sizes if f"{spec.name}|{fmt}|{bs}" not in results["cells"]]
        art = record["artifacts"].get(fmt, {})
        status = "ok" if fmt == "eager" else art.get("status", "not built")
        if fmt in STATIC_BATCH_1:
            for bs in [b for b in bss if b != 1]:
                results["cells"][f"{spec.name}|{fmt}|{bs}"] = {"model": spec.name, "format": fmt, "batch_size": bs,
                                                              "status": "static batch 1 (a phone's program)"}
            bss = [b for b in bss if b == 1]
        if not bss:
            continue
        if status != "ok":
            for bs in bss:
                results["cells"][f"{spec.name}|{fmt}|{bs}"] = {"model": spec.name, "format": fmt, "batch_size": bs,
                                                              "status": status}
            continue
        todo[fmt] = bss
        jobs.append(timing_job(spec.name, fmt, None if fmt == "eager" else str(folder / art["path"]), args.image_size,
                               args.threads))

    def progress(fmt: str, bs: int, r: int, samples: Dict[str, List[float]]) -> None:
        log(f"  {fmt:13s} batch {bs:3d} round {r + 1}: {np.median(samples['wall_ms']):.2f} ms")

    batch_sizes = sorted({bs for bss in todo.values() for bs in bss})
    done = interleaved(jobs, batch_sizes, args.rounds, {bs: args.cell_seconds for bs in batch_sizes},
                       args.max_iterations, progress, needs=todo, path=[str(Path(__file__).resolve().parent)])
    for fmt, value in done.items():
        art = record["artifacts"].get(fmt, {})
        for bs in todo[fmt]:
            key = f"{spec.name}|{fmt}|{bs}"
            if isinstance(value, JobFailed) or bs not in value:  # a runtime that cannot run it: a result
                results["cells"][key] = {"model": spec.name, "format": fmt, "batch_size": bs,
                                         "status": f"failed: {value}" if isinstance(value, JobFailed) else "failed"}
                continue
            stats = combine(wall_rounds(value[bs]))
            ips = bs * 1000.0 / stats["mean_ms"]
            results["cells"][key] = {"model": spec.name, "format": fmt, "batch_size": bs, "status": "ok", **stats,
                                     "images_per_s": ips, "gflops": macs * 2 * ips / 1e9,
                                     "parity": art.get("parity", True), "cosine": art.get("cosine")}
            note = drift_note(stats)
            if note:
                results["cells"][key]["warning"] = note
            log(f"  {fmt:13s} batch {bs:3d}: {stats['median_ms']:9.2f} ms median, {ips:8.1f} img/s"
                + (f" ({note})" if note else ""))
    save()


# --------------------------------------------------------------------------- report


def _cell(results: Dict[str, Any], model: str, fmt: str, bs: int) -> Optional[Dict[str, Any]]:
    return results["cells"].get(f"{model}|{fmt}|{bs}")


def _fmt_cell(c: Optional[Dict[str, Any]], what: str) -> str:
    if c is None:
        return "–"
    if c.get("status") != "ok":
        return "n/a"
    # INT8 agreement with random weights says nothing (accuracy is `lowformer validate`'s job).
    flag = "" if c.get("parity", True) or c["format"] in INT8_FORMATS else " ⚠"
    return (f"{c['median_ms']:.1f}" if what == "ms" else f"{c['images_per_s']:.1f}") + flag


def physical_limits(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    peaks = results["peaks"]
    int8_peak = max(peaks.get("int8_gops", {}).values(), default=None)
    rows = []
    for model in results["models"]:
        ok = [c for c in results["cells"].values() if c["model"] == model and c.get("status") == "ok"]
        fp = [c for c in ok if c["format"] in FP32_FORMATS]
        q = [c for c in ok if c["format"] in INT8_FORMATS]
        best = max(fp, key=lambda c: c["gflops"], default=None)
        best8 = max(q, key=lambda c: c["gflops"], default=None)
        rows.append({"model": model, "best_fp32": best and {k: best[k] for k in ("format", "batch_size", "images_per_s", "gflops")},
                     "fp32_peak_share": best["gflops"] / peaks["fp32_gflops"] if best else None,
                     "best_int8": best8 and {k: best8[k] for k in ("format", "batch_size", "images_per_s", "gflops")},
                     "int8_peak_share": best8["gflops"] / int8_peak if best8 and int8_peak else None})
    return rows


def write_report(results: Dict[str, Any], out: Path) -> None:
    m, peaks = results["machine"], results["peaks"]
    s = results["settings"]
    models = list(results["models"])
    lines = ["# CPU benchmarks", "",
             f"Generated by `python benchmarks/run.py{' --quick' if s.get('quick') else ''}` on "
             f"{results['date']}{' (quick subset)' if s.get('quick') else ''}. Regenerate with the same command; "
             f"`--report-only` rewrites this file from `{results_name(m.get('isa', ''))}`.", "",
             f"- Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags']) or 'no SIMD flags read'}), "
             f"{m['platform']}",
             f"- Load average when the run started: {m.get('load_average')} (1/5/15 min) on {m['cores']} cores"
             + (": other work was running, so these numbers are pessimistic." if (m.get('load_average') or [0])[0]
                > 0.5 * m['cores'] else "."),
             f"- Software: Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
             f"- Settings: {s['image_size']}×{s['image_size']} input, threads: {s['threads'] or 'runtime default'}, "
             + (f"each model × format in its own worker process, timed in {s['rounds']} short round(s) interleaved "
                f"across the formats, about {s['cell_seconds']} s of timed calls per cell in all (per round at least "
                f"3, at most {s['max_iterations']}, after a warm-up call); the median is over the calls of all rounds; "
                if "rounds" in s else  # a run from before the interleaved harness (lowformer/core/harness.py)
                f"each model × format timed alone in a fresh process, about {s['cell_seconds']} s of timed calls per "
                f"cell (at least 3, at most {s['max_iterations']}) after one warm-up call; ")
             + "random weights (speed does not depend on them).",
             f"- Peaks measured here (best of n x n and convolution-shaped GEMMs): FP32 matmul (torch, ONNX Runtime) "
             f"{peaks['fp32_gflops']:.1f} GFLOP/s; INT8 "
             + ", ".join(f"{k} {v:.1f} GOP/s" for k, v in peaks.get("int8_gops", {}).items()) + ".", ""]
    # the formats this run measured (a table from before a format existed keeps its columns)
    formats = [f for f in FORMATS if any(c["format"] == f for c in results["cells"].values())]
    for bs in s["batch_sizes"]:
        what = "ms" if bs == 1 else "ips"
        title = "median latency, ms per call" if bs == 1 else "throughput, images/s"
        lines += [f"## Batch {bs}: {title}", "",
                  "| model | params (M) | MACs (M) | " + " | ".join(FORMAT_TITLES[f] for f in formats) + " |",
                  "|---|---:|---:|" + "---:|" * len(formats)]
        for model in models:
            info = results["models"][model]
            lines.append(f"| {info['display']} | {info['params'] / 1e6:.2f} | {info['macs'] / 1e6:.0f} | "
                         + " | ".join(_fmt_cell(_cell(results, model, f, bs), what) for f in formats) + " |")
        lines.append("")
    lines += ["## Physical limit", "",
              "Achieved GFLOP/s = MACs × 2 × images/s of the fastest artifact, against the matmul peaks above "
              "(best of a reading before and after the cells, same threads). Over 100% means the peak reading "
              "was disturbed more than the cell by other work on the machine.", "",
              "| model | best FP32 artifact | GFLOP/s | % of FP32 peak | INT8 GOP/s | % of INT8 peak |",
              "|---|---|---:|---:|---:|---:|"]
    for r in physical_limits(results):
        b, q = r["best_fp32"], r["best_int8"]
        lines.append(f"| {results['models'][r['model']]['display']} | "
                     + (f"{FORMAT_TITLES[b['format']]} b{b['batch_size']} | {b['gflops']:.1f} | {r['fp32_peak_share']:.0%}"
                        if b else "– | – | –")
                     + " | " + (f"{q['gflops']:.1f} | {r['int8_peak_share']:.0%}" if q and r["int8_peak_share"] else "– | –")
                     + " |")
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in results["notes"]]
    failed = [(k, c["status"]) for k, c in results["cells"].items() if c.get("status") not in ("ok",)]
    if failed:
        reasons = {}
        for k, st in failed:
            model, fmt, _ = k.split("|")
            reasons.setdefault((model, fmt), st)
        lines += [f"- n/a {results['models'].get(m_, {}).get('display', m_)} {FORMAT_TITLES[f]}: {st}"
                  for (m_, f), st in reasons.items()]
    drifted = sorted((c for c in results["cells"].values() if c.get("warning")),
                     key=lambda c: -c["round_spread"])
    if drifted:
        # The worst few name where to look; the JSON holds every cell's round medians.
        worst = drifted[:DRIFT_LISTED]
        lines.append(f"- {len(drifted)} of {len(results['cells'])} cells' round medians are more than "
                     f"{UNSTEADY_ROUNDS:g}x apart in their middle half (75th / 25th percentile: the machine's speed "
                     f"drifted; `round_medians_ms` in {results_name(m.get('isa', ''))}); "
                     f"{'the worst ' + str(len(worst)) if len(drifted) > len(worst) else 'they are'}: "
                     + ", ".join(f"{results['models'].get(c['model'], {}).get('display', c['model'])} "
                                 f"{FORMAT_TITLES[c['format']]} b{c['batch_size']} {c['round_spread']:.2f}x"
                                 for c in worst) + ".")
    if any(not c.get("parity", True) and c["format"] not in INT8_FORMATS for c in results["cells"].values()):
        lines.append("- ⚠: the artifact missed its parity threshold against the eager model (timed anyway).")
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


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


def results_name(isa: str) -> str:
    """results-<isa>.json: one table per CPU ISA, so a run on one machine does not replace another's."""
    from lowformer.core.machine import slug

    return f"results-{slug(isa)}.json" if isa else "results.json"


def report_path(results_path: Path) -> Path:
    return results_path.with_name("RESULTS" + results_path.name[len("results"):]).with_suffix(".md")


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
    notes = [f"CPU ISA: {isa}.",
             "ONNX FP16 is built and parity-checked but not timed: ONNX Runtime's CPU provider runs FP16 "
             "convolutions through its FP32 kernels with casts around them; FP16 is a GPU/TensorRT format.",
             "TorchScript is scripted, frozen and `torch.jit.optimize_for_inference`d when loaded "
             "(the paper's `--optit`). torch.export runs the exported program's module (eager kernels); "
             "AOTInductor is that program compiled ahead of time for this CPU (-march=native).",
             "OpenVINO (CPU plugin, LATENCY hint) reads the FP32 ONNX at f32 and at bf16 inference precision "
             "(bf16 needs AVX-512-BF16/AMX: n/a elsewhere), and the INT8 Q/DQ ONNX of the `openvino` target "
             "(symmetric s8).",
             "Peers are timm models (the six the paper benchmarks that timm lacks are lowformer.models.peers, "
             "registered in timm), reparameterized for inference (`timm.utils.model.reparameterize_model`).",
             "XNNPACK: ExecuTorch `.pte` programs on its Python runtime (XNNPACK delegate), FP32 and PT2E INT8 "
             "(16 ImageNet calibration images, ReLU6 fused, attention explicit); a phone's static batch of 1, so "
             "their batch-16 cells are n/a."]
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
        from lowformer.calibrate.qdq import target_config

        bits = target_config("cpu").describe()["weight_bits"]  # follows this CPU's ISA (--weight-bits auto)
        notes.append(f"ORT INT8: the `cpu` target's Q/DQ (u8 activations, {bits}-bit s8 weights, min-max ranges from "
                     f"16 ImageNet images) run by ONNX Runtime's CPU provider on this {isa} CPU.")
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
            folder = Path(args.cache) / f"{spec.name.replace(':', '_')}-{args.image_size}"
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
