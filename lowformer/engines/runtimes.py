"""Which runtime runs an artifact, at which inference precision (`--runtime`, `--precision`).

Every format has a native runtime (ONNX: ONNX Runtime, IR: OpenVINO, .ts: torch, .engine:
TensorRT). An ONNX artifact can also run through OpenVINO (`runtime openvino`). The inference
precision (f32 | bf16 | f16) is a setting of OpenVINO runners only. Asking for several runtimes
or precisions runs each artifact once per combination that applies to it, so one `validate` pass
scores, e.g., ORT FP32, ORT INT8, OpenVINO FP32 / BF16 and OpenVINO INT8 side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from lowformer.core.errors import LowformerError

NATIVE = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torchscript", "tensorrt": "tensorrt"}
SUPPORTED = {"onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",), "torchscript": ("torchscript",),
             "tensorrt": ("tensorrt",)}
CHOOSABLE = ("onnxruntime", "openvino")  # what `--runtime` names (plus `auto`: each format's native one)
_ALIASES = {"onnxruntime": "onnxruntime", "ort": "onnxruntime", "openvino": "openvino", "ov": "openvino"}


@dataclass(frozen=True)
class RunSpec:
    """How to run one artifact: None = the format's native runtime / the runtime's default precision."""

    runtime: Optional[str] = None
    precision: Optional[str] = None

    def label(self) -> str:
        parts = [p for p in (self.runtime, self.precision) if p]
        return " ".join(parts)


def normalize_runtimes(runtimes: Iterable[str]) -> Tuple[str, ...]:
    out: List[str] = []
    for r in runtimes or ():
        key = str(r).strip().lower()
        if key == "auto":
            continue
        if key not in _ALIASES:
            raise LowformerError(f"unknown runtime {r!r} (use auto, {', '.join(CHOOSABLE)})")
        out.append(_ALIASES[key])
    return tuple(dict.fromkeys(out))


def normalize_precisions(precisions: Iterable[str]) -> Tuple[str, ...]:
    from lowformer.engines.openvino import normalize_precision

    return tuple(dict.fromkeys(normalize_precision(p) for p in (precisions or ())))


def runtime_for(fmt: str, runtime: Optional[str]) -> str:
    return runtime or NATIVE.get(fmt, fmt)


def run_specs(fmt: str, runtimes: Sequence[str] = (), precisions: Sequence[str] = ()) -> List[RunSpec]:
    """The runs of one artifact of format `fmt`: each asked runtime that can run it (else its native
    one), and for OpenVINO each asked precision."""
    chosen: List[Optional[str]] = [r for r in runtimes if r in SUPPORTED.get(fmt, ())] or [None]
    out: List[RunSpec] = []
    for rt in chosen:
        if runtime_for(fmt, rt) == "openvino" and precisions:
            out += [RunSpec(rt, p) for p in precisions]
        else:
            out.append(RunSpec(rt, None))
    return out


def check_applicable(formats: Sequence[str], runtimes: Sequence[str], precisions: Sequence[str]) -> None:
    """Options that would silently do nothing are refused: a runtime none of the artifacts can use,
    a precision with no OpenVINO run among them."""
    for r in runtimes:
        if not any(r in SUPPORTED.get(f, ()) for f in formats):
            raise LowformerError(f"runtime {r} runs none of the artifacts given ({', '.join(sorted(set(formats)))})")
    if precisions:
        ov = any(runtime_for(f, s.runtime) == "openvino" for f in formats for s in run_specs(f, runtimes, ()))
        if not ov:
            raise LowformerError(f"precision {', '.join(precisions)} is a setting of the OpenVINO runtime: add "
                                 "runtime openvino, or give an OpenVINO IR (.xml)")
        from lowformer.engines.openvino import check_precision

        for p in precisions:  # before any work: bf16 / f16 on a CPU without them is refused
            check_precision(p)
