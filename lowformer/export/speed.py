"""Is the INT8 artifact faster than FP32 on this machine? Checked right after an INT8 export.

INT8 is not always faster on a CPU: without VNNI the u8 x s8 kernels gain little, and in models
whose float operations between quantized layers dominate, the Q/DQ work can cost more than the
integer kernels save (benchmarks/RESULTS-avx-512-vnni-amx.md has such models). The export says so in one line
rather than leave the user to find it in a benchmark table. A short check: both artifacts in the
runtime the INT8 target is made for, batch 1, each in its own worker process, timed in short rounds
interleaved so a busy stretch of the machine hits both alike (the one harness, lowformer.core.harness);
the medians, the runtime and the CPU's ISA are recorded in the INT8 entry.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from lowformer.core.harness import JobFailed, combine, interleaved, wall_rounds

log = logging.getLogger(__name__)

CALLS, WARMUP, ROUNDS = 15, 3, 5
WORKER = "lowformer.export.speed:open_artifact"


def _runtime_of(target: str):
    """The backend an INT8 target's artifacts are made for (Backend.int8_targets), when it runs on this
    CPU and is installed; else None (a GPU format like TensorRT's is not timed here)."""
    from lowformer.core.errors import LowformerError
    from lowformer.engines import registry

    backend = next((b for b in registry.all_backends() if target in b.int8_targets), None)
    if backend is None or not backend.runs_on_cpu:
        return None
    try:
        backend.check_available()
    except LowformerError:
        return None
    return backend


def int8_speed_check(fp32: Path, int8: Path, target: str, threads: Optional[int] = None,
                     calls: int = CALLS) -> Optional[Dict[str, Any]]:
    """Median ms of the FP32 and INT8 ONNX at batch 1 in the target's runtime (None for targets
    not run on this CPU, or when that runtime is not installed; `skipped` with the reason when the
    runtime cannot load one of them)."""
    from lowformer.core.machine import cpu_isa

    backend = _runtime_of(target)
    if backend is None:
        return None
    runtime = backend.name
    option = None if "onnx" in backend.formats else runtime  # the ONNX's own runtime, or the one asked for
    jobs = [(name, WORKER, dict(path=str(p), threads=threads, runtime=option)) for name, p in (("fp32", fp32),
                                                                                             ("int8", int8))]
    done = interleaved(jobs, [1], ROUNDS, {}, calls, calls=max(calls, 1), warmup=WARMUP)
    failed = next((v for v in done.values() if isinstance(v, JobFailed)), None)
    if failed is not None:  # a runtime that cannot run the artifact: no figure, not a failed export
        why = str(failed.user_error() or failed)
        log.warning("INT8 speed check skipped: %s", why)
        return {"runtime": runtime, "skipped": why}
    fp32_ms, int8_ms = (combine(wall_rounds(done[k][1]))["median_ms"] for k in ("fp32", "int8"))
    return {"runtime": runtime, "batch_size": 1, "calls": calls, "fp32_ms": round(fp32_ms, 3),
            "int8_ms": round(int8_ms, 3), "speedup": round(fp32_ms / int8_ms, 3) if int8_ms > 0 else None,
            "isa": cpu_isa()}


def open_artifact(path: str, device: str = "cpu", threads: Optional[int] = None, runtime: Optional[str] = None,
                  precision: Optional[str] = None, image_size: Optional[int] = None):
    """A harness worker: one artifact loaded by `lowformer.engines.load` (`runtime`, OpenVINO inference
    `precision` as there); (one inference call for a batch size, the runner's description). Its input is
    the runner's example, `image_size` square when given (an artifact without a manifest to say it)."""
    from dataclasses import replace

    from lowformer.engines import load
    from lowformer.engines.timing import call_once

    runner = load(path, device, threads, runtime=runtime, inference_precision=precision)
    spec = runner.input_spec
    if image_size:
        spec = replace(spec, shape=(spec.shape[0], spec.shape[1], image_size, image_size))
    return (lambda batch_size: call_once(runner, spec.example(batch_size))), runner.describe()


def slower_int8_warning(check: Optional[Dict[str, Any]], fp32_name: str,
                        fp32_passed: Optional[bool] = True) -> Optional[str]:
    """One line when the check found INT8 slower than FP32 (None otherwise), naming what to ship:
    the FP32 artifact when its parity passed (`lowformer bench FOLDER` compares every artifact)."""
    if not check or "skipped" in check or check["int8_ms"] <= check["fp32_ms"]:
        return None
    ship = (f"the fastest passing artifact of the two is {fp32_name}" if fp32_passed else
            f"{fp32_name} failed its parity check too")
    return (f"INT8 ran slower than FP32 on this CPU ({check['int8_ms']:.2f} vs {check['fp32_ms']:.2f} ms at batch 1 "
            f"in {check['runtime']}, {check['isa']}): {ship}; or keep the slowest blocks in float "
            "(--auto-exclude); `lowformer bench FOLDER` times every artifact")
