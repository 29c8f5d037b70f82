"""OpenVINO runner (CPU plugin): ONNX artifacts (FP32, FP16, INT8 Q/DQ) and OpenVINO IR (.xml + .bin).

The inference precision is an explicit, recorded setting (`INFERENCE_PRECISION_HINT`): `f32` (the
default here, whatever the CPU), `bf16` (AMX / AVX-512-BF16 CPUs) or `f16` (AVX-512-FP16 CPUs). It
applies to every layer the model does not already fix: an INT8 model's quantized layers stay INT8,
its float layers run in the hint's precision. Threads (`INFERENCE_NUM_THREADS`) and a compiled-model
cache (`CACHE_DIR`; default `$LOWFORMER_OPENVINO_CACHE` when set) are settings too.

A model with a dynamic batch axis is compiled once per batch size it meets (static shapes run about
10 % faster on the CPU plugin than a dynamic one), the last few kept.

`openvino` is an optional dependency (`pip install 'lowformer[openvino]'`), imported when a runner
is made: without it, asking for one is one LowformerError.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowformer.core.errors import LowformerError, first_line
from lowformer.engines.base import InputSpec, LayerTiming, Runner

log = logging.getLogger(__name__)

# What `--precision` accepts -> OpenVINO's INFERENCE_PRECISION_HINT value.
PRECISIONS = ("f32", "bf16", "f16")
_ALIASES = {"f32": "f32", "fp32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16",
            "f16": "f16", "fp16": "f16", "float16": "f16"}
# The CPU plugin's OPTIMIZATION_CAPABILITIES entry each hint needs, and the ISA that provides it.
_NEEDS = {"bf16": ("BF16", "AVX-512-BF16 or AMX-BF16"), "f16": ("FP16", "AVX-512-FP16")}
# An artifact's precision seen through a hint: what its accuracy gate is (validate.DEFAULT_GATES).
_EFFECTIVE = {"bf16": "bf16", "f16": "fp16"}
CACHE_ENV = "LOWFORMER_OPENVINO_CACHE"
MAX_COMPILED = 4  # static-batch compiled models kept per runner
_INSTALL = "OpenVINO is not installed: pip install 'lowformer[openvino]' (or: pip install openvino)"


def openvino_module():
    """The `openvino` package, or one LowformerError saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise LowformerError(_INSTALL) from None
    return openvino


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


_CORE: Dict[str, Any] = {}


def core():
    """One `openvino.Core` per process (it holds the plugins)."""
    if "core" not in _CORE:
        _CORE["core"] = openvino_module().Core()
    return _CORE["core"]


def version() -> str:
    return str(openvino_module().get_version())


def normalize_precision(precision: Optional[str]) -> str:
    """'f32' | 'bf16' | 'f16' (fp32/fp16 accepted); one line for anything else."""
    if precision is None:
        return "f32"
    p = _ALIASES.get(str(precision).strip().lower())
    if p is None:
        raise LowformerError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    return p


def effective_precision(artifact_precision: str, hint: str) -> str:
    """What an artifact's run is gated as: an INT8 model stays int8 under any hint; a float one runs
    at the hint's precision (bf16, fp16), or its own at f32."""
    if artifact_precision == "int8":
        return "int8"
    return _EFFECTIVE.get(hint, artifact_precision)


def cpu_capabilities() -> List[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES here (e.g. FP32, BF16, FP16, INT8)."""
    return [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def check_precision(precision: str, capabilities: Optional[Sequence[str]] = None) -> str:
    """Refuse (one line) a hint this CPU cannot run natively; the plugin would silently emulate or
    fall back to f32, and a "bf16" figure measured that way would be a lie."""
    p = normalize_precision(precision)
    if p in _NEEDS:
        cap, isa = _NEEDS[p]
        caps = cpu_capabilities() if capabilities is None else list(capabilities)
        if cap not in caps:
            from lowformer.core.machine import cpu_isa

            raise LowformerError(f"precision {p} needs a CPU with {isa} (this one: {cpu_isa()}; OpenVINO "
                                 f"offers {', '.join(caps) or 'nothing'}): use precision f32")
    return p


def weights_path(xml: Path) -> Path:
    return Path(xml).with_suffix(".bin")


def check_ir(xml: Path, weights: Optional[Dict[str, Any]] = None) -> Path:
    """An IR is the .xml and its .bin: the .bin present and, when the manifest recorded it, of the
    recorded size and sha256. Returns the .bin path."""
    xml = Path(xml)
    bin_path = weights_path(xml)
    if not bin_path.is_file():
        raise LowformerError(f"{xml}: its weights file {bin_path.name} is missing (an OpenVINO IR is the "
                             ".xml and .bin pair; re-export it)")
    size = bin_path.stat().st_size
    need = _weights_needed(xml)
    if need is not None and size < need:
        raise LowformerError(f"{bin_path} is truncated: {size} bytes, but {xml.name} reads weights up to byte "
                             f"{need} (re-export the IR)")
    if weights:
        if weights.get("size") is not None and size != int(weights["size"]):
            raise LowformerError(f"{bin_path} is {size} bytes but the manifest recorded {weights['size']}: "
                                 "truncated or replaced after export (re-export it)")
        sha = weights.get("sha256")
        if sha and len(sha) == 64:
            from lowformer.core.files import sha256_file

            if sha256_file(bin_path) != sha:
                raise LowformerError(f"{bin_path} does not match its manifest entry (sha256 differs): replaced "
                                     "or damaged after export (re-export it)")
    return bin_path


_DATA = re.compile(rb'offset="(\d+)"\s+size="(\d+)"|size="(\d+)"\s+offset="(\d+)"')


def _weights_needed(xml: Path) -> Optional[int]:
    """The end of the last weight an IR's .xml reads from its .bin (None when the .xml cannot be read)."""
    try:
        text = Path(xml).read_bytes()
    except OSError:
        return None
    ends = [int(m.group(1) or m.group(4)) + int(m.group(2) or m.group(3)) for m in _DATA.finditer(text)]
    return max(ends, default=0)


def read_model(path: str):
    """`Core.read_model` of an .onnx or .xml file, failures as one line."""
    p = Path(path)
    if p.suffix.lower() == ".xml":
        check_ir(p)
    try:
        return core().read_model(str(p))
    except Exception as e:  # OpenVINO raises RuntimeError with a multi-line "Check ... failed" text
        text = str(e)
        if "Incorrect weights in bin file" in text or "bin file cannot be found" in text:
            raise LowformerError(f"{weights_path(p)} is truncated or does not belong to {p.name} "
                                 "(re-export the IR)") from None
        raise LowformerError(f"OpenVINO cannot read {p}: {first_line(text, limit=300, skip=_OPENVINO_FRAMES)}") from None


_OPENVINO_FRAMES = ("Exception from", "Check '")  # OpenVINO's frames before the message that says why


def _dims(partial_shape) -> Tuple[Optional[int], ...]:
    return tuple(int(d.get_length()) if d.is_static else None for d in partial_shape)


def _rt(info, key: str) -> str:
    """A runtime-model rt_info value as text ('' when absent)."""
    if key not in info:
        return ""
    v = info[key]
    try:
        return str(v.astype(str))
    except Exception:  # older bindings: OVAny.value
        return str(getattr(v, "value", v))


def _original_names(text: str) -> List[str]:
    """originalLayersNames -> ONNX node names (OpenVINO appends `/WithoutBiases` when it splits a
    convolution's bias off; its own nodes have names like `Convert_1839`)."""
    out = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        if name.endswith("/WithoutBiases"):
            name = name[: -len("/WithoutBiases")]
        out.append(name)
    return list(dict.fromkeys(out))


@dataclass
class OpenVINOProfile:
    """One profiled stretch of runs: per runtime layer (execution order) the time summed over the
    runs, the layer type, runtime precision and the ONNX nodes it was made from; per-run totals;
    and the runtime graph (name, inputs, outputs), which places layers OpenVINO created."""

    timings: List[LayerTiming]
    run_ms: List[float]
    graph: List[Tuple[str, Sequence[str], Sequence[str]]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


class OpenVINORunner(Runner):
    backend = "openvino"
    profile_naming = "runtime-layers"
    profile_source = ("OpenVINO PERF_COUNT per runtime layer (originalLayersNames: fused layers split over their "
                      "ONNX nodes; runtimePrecision in each op)")

    def __init__(self, path: str, precision: str = "fp32", device: str = "cpu", threads: Optional[int] = None,
                 inference_precision: Optional[str] = None, cache_dir: Optional[str] = None,
                 weights: Optional[Dict[str, Any]] = None):
        if device != "cpu":
            raise LowformerError(f"the OpenVINO runtime runs on the CPU here (device cpu), not {device!r}")
        ov = openvino_module()
        p = Path(path)
        self.format = "openvino" if p.suffix.lower() == ".xml" else "onnx"
        if self.format == "openvino":
            check_ir(p, weights)
        self.hint = check_precision(inference_precision or "f32")
        self.cache_dir = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
        self.model = read_model(str(p))
        if len(self.model.inputs) != 1:
            raise LowformerError(f"{p} has {len(self.model.inputs)} inputs; lowformer runs one-input classifiers")
        if precision != "int8" and any(op.get_type_name() == "FakeQuantize" for op in self.model.get_ordered_ops()):
            precision = "int8"  # a quantized model without a manifest entry saying so (Q/DQ ONNX or NNCF IR)
        self.artifact_precision = precision
        inp = self.model.inputs[0]
        spec = InputSpec(inp.get_any_name(), _dims(inp.get_partial_shape()), "float32")
        super().__init__(spec, effective_precision(precision, self.hint),
                         device, threads, str(p))
        self.provider = f"cpu/{self.hint}"  # the CPU plugin, at this inference precision
        self._ov_version = ov.get_version()
        self._compiled: "collections.OrderedDict[int, Tuple[Any, Any]]" = collections.OrderedDict()
        self.ran_precision = ""
        first = spec.fixed_batch or 1
        self._request(first)  # compile now: errors (and the precision really used) show at load

    # ------------------------------------------------------------------ settings
    @property
    def variant(self) -> Optional[str]:
        """None for an IR run as exported (f32); else `openvino/<hint>` (e.g. an ONNX through OpenVINO,
        or any bf16 run), the key its validation is recorded under."""
        if self.format == "openvino" and self.hint == "f32":
            return None
        return f"openvino/{self.hint}"

    def config(self, profile: bool = False) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.cache_dir and not profile:
            cfg["CACHE_DIR"] = str(self.cache_dir)
        if profile:
            cfg["PERF_COUNT"] = True
        return cfg

    def _static_model(self, batch: int):
        if self.input_spec.fixed_batch:
            return self.model
        shape = list(self.input_spec.shape)
        if any(d is None for d in shape[1:]):
            return self.model  # only the batch axis is made static
        m = self.model.clone()
        m.reshape([batch] + [int(d) for d in shape[1:]])  # the one input
        return m

    def _compile(self, batch: int, profile: bool = False):
        t0 = time.perf_counter()
        try:
            compiled = core().compile_model(self._static_model(batch), "CPU", self.config(profile))
        except Exception as e:
            raise LowformerError(f"OpenVINO cannot compile {self.path} ({self.hint}): "
                                 f"{first_line(str(e), limit=300, skip=_OPENVINO_FRAMES)}") from None
        ran = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.ran_precision = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(
            ran.split("'")[1] if "'" in ran else ran, ran)
        if self.ran_precision and self.ran_precision != self.hint:
            note = f"OpenVINO compiled {Path(self.path).name} with precision {self.ran_precision}, not {self.hint}"
            if note not in self.warnings:
                self.warnings.append(note)
        log.debug("compiled %s for batch %d (%s) in %.2f s", self.path, batch, self.hint, time.perf_counter() - t0)
        return compiled

    def _request(self, batch: int):
        key = self.input_spec.fixed_batch or batch
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key][1]
        compiled = self._compile(key)
        self._compiled[key] = (compiled, compiled.create_infer_request())
        while len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return self._compiled[key][1]

    # ------------------------------------------------------------------ running
    def _run(self, x: np.ndarray) -> np.ndarray:
        req = self._request(len(x))
        req.infer({0: x})
        return np.array(req.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def describe(self) -> Dict[str, Any]:
        from lowformer.core.machine import cpu_isa

        return {**super().describe(), "format": self.format, "runtime": "openvino",
                "inference_precision": self.hint, "ran_precision": self.ran_precision or self.hint,
                "artifact_precision": self.artifact_precision, "openvino": self._ov_version,
                "cache_dir": self.cache_dir, "isa": cpu_isa(), "variant": self.variant}

    def close(self) -> None:
        self._compiled.clear()

    # ------------------------------------------------------------------ profiling
    def profile_run(self, batch: Any, iterations: int = 10, warmup: int = 2) -> OpenVINOProfile:
        """PERF_COUNT on a separately compiled model: per-layer real time of each of `iterations`
        runs after `warmup`, summed; every layer named with its type, runtime precision and the ONNX
        nodes OpenVINO fused into it (`originalLayersNames`)."""
        x = np.ascontiguousarray(batch.detach().cpu().numpy() if hasattr(batch, "detach") else batch, np.float32)
        compiled = self._compile(len(x), profile=True)
        req = compiled.create_infer_request()
        for _ in range(max(warmup, 0)):
            req.infer({0: x})
        total: Dict[str, float] = collections.defaultdict(float)
        calls: Dict[str, int] = collections.defaultdict(int)
        run_ms: List[float] = []
        for _ in range(max(iterations, 1)):
            t0 = time.perf_counter()
            req.infer({0: x})
            run_ms.append((time.perf_counter() - t0) * 1000.0)
            for info in req.get_profiling_info():
                if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_EXECUTED"):
                    total[info.node_name] += info.real_time.total_seconds() * 1000.0
                    calls[info.node_name] += 1
        timings: List[LayerTiming] = []
        graph: List[Tuple[str, Sequence[str], Sequence[str]]] = []
        for op in compiled.get_runtime_model().get_ordered_ops():
            name = op.get_friendly_name()
            rt = op.get_rt_info()
            outs = [f"{name}:{i}" for i in range(op.get_output_size())]
            ins = [f"{i.get_source_output().get_node().get_friendly_name()}:{i.get_source_output().get_index()}"
                   for i in op.inputs()]
            graph.append((name, ins, outs))
            if name not in total:
                continue
            timings.append(LayerTiming(name, _rt(rt, "layerType") or op.get_type_name(), total[name], calls[name],
                                       fused_from=_original_names(_rt(rt, "originalLayersNames")),
                                       precision=_rt(rt, "runtimePrecision") or None))
        notes = []
        if self.hint != "f32":
            notes.append(f"OpenVINO inference precision {self.hint} (ran {self.ran_precision or self.hint})")
        return OpenVINOProfile(timings, run_ms, graph, notes)

    def profile_layers(self, batch: np.ndarray, iterations: int = 10) -> List[LayerTiming]:
        return self.profile_run(batch, iterations).timings
