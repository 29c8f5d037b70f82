"""Which runtime runs an artifact, at which inference precision (`--runtime`, `--precision`).

Every format has a native runtime, the backend that owns it (lowformer.engines.registry); a format
other backends also run (an ONNX through OpenVINO) can be run by those when asked. An inference
precision (f32 | bf16 | f16) is a setting of the backends that declare one. Asking for several
runtimes or precisions runs each artifact once per combination that applies to it, so one
`validate` pass scores, e.g., ORT FP32, ORT INT8, OpenVINO FP32 / BF16 and OpenVINO INT8 side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from lowformer.core.errors import LowformerError
from lowformer.engines import registry


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
    choosable = registry.choosable_runtimes()
    for r in runtimes or ():
        key = str(r).strip().lower()
        if key == "auto":
            continue
        try:
            name = registry.get(key).name
        except LowformerError:
            name = None
        if name not in choosable:
            raise LowformerError(f"unknown runtime {r!r} (use auto, {', '.join(choosable)})")
        out.append(name)
    return tuple(dict.fromkeys(out))


def _setting_backends():
    return [b for b in registry.all_backends() if b.inference_precisions]


def precision_backends(sep: str = ", ") -> str:
    """The names of the runtimes that take an inference-precision setting."""
    return sep.join(b.name for b in _setting_backends())


def normalize_precision(precision: str) -> str:
    """A precision setting in its backends' spelling (fp32 -> f32), one line for an unknown one."""
    error: Optional[LowformerError] = None
    for b in _setting_backends():
        try:
            return b.normalize_precision(precision)
        except LowformerError as e:
            error = e
    raise error or LowformerError(f"precision {precision}: no runtime here takes a precision setting")


def normalize_precisions(precisions: Iterable[str]) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(normalize_precision(p) for p in (precisions or ())))


def is_default_precision(precision: str) -> bool:
    """Whether a setting is what every runtime does anyway (f32): harmless where it is not a setting."""
    p = normalize_precision(precision)
    return all(b.inference_precisions[0] == p for b in _setting_backends())


def runtime_for(fmt: str, runtime: Optional[str]) -> str:
    return runtime or registry.owner(fmt).name


def run_specs(fmt: str, runtimes: Sequence[str] = (), precisions: Sequence[str] = ()) -> List[RunSpec]:
    """The runs of one artifact of format `fmt`: each asked runtime that can run it (else its native
    one), and, for a runtime with precision settings, each asked precision."""
    can = registry.runtimes_for(fmt)
    chosen: List[Optional[str]] = [r for r in runtimes if r in can] or [None]
    out: List[RunSpec] = []
    for rt in chosen:
        if registry.get(runtime_for(fmt, rt)).inference_precisions and precisions:
            out += [RunSpec(rt, p) for p in precisions]
        else:
            out.append(RunSpec(rt, None))
    return out


def check_applicable(formats: Sequence[str], runtimes: Sequence[str], precisions: Sequence[str]) -> None:
    """Options that would silently do nothing are refused: a runtime none of the artifacts can use,
    a precision with no run of a runtime that takes it."""
    for r in runtimes:
        if not any(r in registry.runtimes_for(f) for f in formats):
            raise LowformerError(f"runtime {r} runs none of the artifacts given ({', '.join(sorted(set(formats)))})")
    if precisions:
        takes = [registry.get(runtime_for(f, s.runtime)) for f in formats for s in run_specs(f, runtimes, ())]
        if not any(b.inference_precisions for b in takes):
            owners = _setting_backends()
            files = ", ".join(s for b in owners for s in b.suffixes)
            raise LowformerError(f"precision {', '.join(precisions)} is a setting of the "
                                 f"{' / '.join(b.label for b in owners)} runtime: add runtime "
                                 f"{precision_backends(' or ')}, or give an artifact it owns ({files})")
        for b in _setting_backends():  # before any work: bf16 / f16 on a CPU without them is refused
            for p in precisions:
                b.check_precision(p)
