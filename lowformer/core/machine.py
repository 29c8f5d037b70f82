"""The machine a figure was measured on: CPU model, ISA, load and tool versions (one list for all)."""
from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata as md
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, FrozenSet, List

# Every package whose version can change a result; recorded in manifests and benchmark JSON.
TOOLS = ("lowformer", "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf",
         "tensorrt", "executorch", "torchao")
# CPU flags that decide which kernels run (VNNI/AMX: fast INT8; AMX-BF16/AVX512-BF16: fast BF16).
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")


def tool_versions() -> Dict[str, str]:
    out = {}
    for pkg in TOOLS:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def all_cpu_flags() -> FrozenSet[str]:
    """Every flag of this CPU, from the `flags` line of /proc/cpuinfo (read once; empty where it cannot
    be read, e.g. not Linux). The one place that parses it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


def cpu_flags() -> List[str]:
    """The ISA flags of ISA_FLAGS that this CPU has (from /proc/cpuinfo)."""
    have = all_cpu_flags()
    return sorted(f for f in ISA_FLAGS if f in have)


def has_int8_dot_product(flags: List[str] = None) -> bool:
    """VNNI (AVX-512 or AVX) or AMX-INT8: u8 x s8 products summed in int32, without the int16 pair-sum
    saturation of AVX2's vpmaddubsw path."""
    f = set(cpu_flags() if flags is None else flags)
    return bool(f & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_isa(flags: List[str] = None) -> str:
    """A short name for the vector ISA, as every speed figure must record it."""
    f = set(cpu_flags() if flags is None else flags)
    if {"amx_int8", "amx_bf16"} <= f:
        return "AVX-512 VNNI + AMX"
    if "avx512_vnni" in f:  # BF16 named: OpenVINO's bf16 precision runs natively with it (AMD Zen 4)
        return "AVX-512 VNNI + BF16" if "avx512_bf16" in f else "AVX-512 VNNI"
    if "avx512f" in f:
        return "AVX-512 without VNNI"
    if "avx_vnni" in f:
        return "AVX2 + AVX-VNNI"
    if "avx2" in f:
        return "AVX2 without VNNI"
    return "no AVX2"


def slug(isa: str) -> str:
    """An ISA name (cpu_isa()) as a file-name part, `avx-512-vnni-amx`: one benchmark file per ISA."""
    return re.sub(r"[^a-z0-9]+", "-", isa.lower()).strip("-")


def load_average() -> List[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]  # other work on the machine skews timings: say so
    except OSError:
        return []


def machine_info() -> Dict[str, Any]:
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": flags, "isa": cpu_isa(flags),
            "load_average": load_average() or None, "platform": platform.platform(),
            "python": platform.python_version(), "versions": tool_versions(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
