"""Is the INT8 artifact faster than FP32 on this machine? Checked right after an INT8 export.

INT8 is not always faster on a CPU: without VNNI the u8 x s8 kernels gain little, and in models
whose float operations between quantized layers dominate, the Q/DQ work can cost more than the
integer kernels save (benchmarks/RESULTS-avx-512-vnni-amx.md has such models). The export says so in one line
rather than leave the user to find it in a benchmark table. A short check: both artifacts in the
runtime the INT8 target is made for, batch 1, calls interleaved so a busy stretch of the machine
hits both alike; the medians, the runtime and the CPU's ISA are recorded in the INT8 entry.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from lowformer.core.errors import LowformerError

log = logging.getLogger(__name__)

CALLS, WARMUP = 15, 3
RUNTIME_OF_TARGET = {"cpu": "onnxruntime", "openvino": "openvino"}  # tensorrt: a GPU format, not timed here


def int8_speed_check(fp32: Path, int8: Path, target: str, threads: Optional[int] = None,
                     calls: int = CALLS) -> Optional[Dict[str, Any]]:
    """Median ms of the FP32 and INT8 ONNX at batch 1 in the target's runtime (None for targets
    not run on this CPU, or when that runtime is not installed; `skipped` with the reason when the
    runtime cannot load one of them)."""
    from lowformer.core.machine import cpu_isa
    from lowformer.engines import load
    from lowformer.engines.timing import call_once

    runtime = RUNTIME_OF_TARGET.get(target)
    if runtime is None:
        return None
    if runtime == "openvino":
        from lowformer.engines.openvino import available

        if not available():
            return None
    option = "openvino" if runtime == "openvino" else None
    runners: list = []
    times: list = [[], []]
    try:
        for p in (fp32, int8):
            runners.append(load(str(p), "cpu", threads, runtime=option))
        x = runners[0].input_spec.example(1)
        fns = [call_once(r, x) for r in runners]
        for fn in fns:
            for _ in range(WARMUP):
                fn()
        for _ in range(max(calls, 1)):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                times[i].append((time.perf_counter() - t0) * 1000.0)
    except LowformerError as e:  # a runtime that cannot run the artifact: no figure, not a failed export
        log.warning("INT8 speed check skipped: %s", e)
        return {"runtime": runtime, "skipped": str(e)}
    finally:
        for r in runners:
            r.close()
    fp32_ms, int8_ms = (float(np.median(t)) for t in times)
    return {"runtime": runtime, "batch_size": 1, "calls": calls, "fp32_ms": round(fp32_ms, 3),
            "int8_ms": round(int8_ms, 3), "speedup": round(fp32_ms / int8_ms, 3) if int8_ms > 0 else None,
            "isa": cpu_isa()}


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
