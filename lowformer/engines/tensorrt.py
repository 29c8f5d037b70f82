"""TensorRT: engine build from ONNX, an engine runner, and parsers for TensorRT's profile JSON.

Written against the TensorRT 10.x and 11.x Python API and checked here only with a fake
`tensorrt` module (tests/fake_tensorrt.py): no GPU was available while writing it. `tensorrt`
is imported lazily, so this module imports fine without it.

Precision: TensorRT 11 builds strongly typed networks only (BuilderFlag.FP16/INT8 and the INT8
calibrators are gone), so the precision must be in the ONNX (model_fp16.onnx, Q/DQ model_int8.onnx).
TensorRT 10 also accepts a plain FP32 ONNX with --fp16 (weakly typed, BuilderFlag.FP16).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lowformer.core.errors import LowformerError, NeedsTargetDevice
from lowformer.core.files import atomic_path
from lowformer.engines.base import InputSpec, LayerTiming, Runner

log = logging.getLogger("lowformer.tensorrt")

DEFAULT_TIMING_CACHE = "trt-timing.cache"  # beside the engine: reused by every build in that folder
JsonLike = Union[str, bytes, os.PathLike, Dict[str, Any], List[Any]]


# --------------------------------------------------------------------------- environment

def _import_trt():
    import tensorrt as trt  # noqa: deferred so that the package works without TensorRT

    return trt


def tensorrt_status() -> Tuple[bool, str]:
    """(ok, reason): ok only when `tensorrt` imports and a CUDA GPU is visible."""
    try:
        trt = _import_trt()
        version = str(trt.__version__)
    except Exception:  # ImportError, or the PyPI placeholder package failing at import
        return False, "TensorRT is not installed here"
    if not torch.cuda.is_available():
        return False, f"TensorRT {version} is installed but no CUDA GPU is visible here"
    return True, f"TensorRT {version}"


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        raise LowformerError(f"cannot read the TensorRT version {trt.__version__!r}") from None


def gpu_info(device: Union[int, str, None] = None) -> Dict[str, str]:
    """Name and compute capability of the CUDA device an engine is built for / runs on."""
    index = torch.device(device).index if isinstance(device, str) else device
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def next_step_command(onnx_path: Union[str, os.PathLike], fp16: bool = False, int8: bool = False,
                      min_batch: int = 1, opt_batch: int = 1, max_batch: int = 1,
                      engine_path: Union[str, os.PathLike, None] = None, workspace_mb: Optional[int] = None,
                      timing_cache: Union[str, os.PathLike, None] = None) -> str:
    """The `lowformer build-engine ...` command to run on the target device."""
    parts = ["lowformer", "build-engine", str(onnx_path)]
    if engine_path is not None and Path(engine_path) != default_engine_path(onnx_path):
        parts += ["--out", str(engine_path)]
    if fp16:
        parts.append("--fp16")
    if int8:
        parts.append("--int8")
    for flag, value in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if value != 1:
            parts += [flag, str(value)]
    if workspace_mb is not None and workspace_mb != 2048:
        parts += ["--workspace-mb", str(workspace_mb)]
    if timing_cache is not None:
        parts += ["--timing-cache", str(timing_cache)]
    return " ".join(shlex.quote(p) for p in parts)


def default_engine_path(onnx_path: Union[str, os.PathLike]) -> Path:
    return Path(onnx_path).with_suffix(".engine")


class _Logger:
    """Factory for an ILogger subclass that keeps TensorRT's errors for our one-line messages."""

    @staticmethod
    def create(trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: List[str] = []

            def log(self, severity, msg):
                name = str(getattr(severity, "name", severity)).upper()
                if "ERROR" in name:
                    self.errors.append(str(msg).strip())
                    log.error("TensorRT: %s", msg)
                elif "WARNING" in name:
                    log.warning("TensorRT: %s", msg)

            def last_error(self) -> str:
                return self.errors[-1].splitlines()[0] if self.errors else "no error message from TensorRT"

        return Logger()


# --------------------------------------------------------------------------- ONNX facts

@dataclass
class OnnxFacts:
    input_name: str
    input_shape: List[Optional[int]]  # [batch or None, C, H, W]
    precision: str  # what the graph itself carries: fp32 | fp16 | int8
    node_names: List[str] = field(default_factory=list)

    @property
    def carries_precision(self) -> bool:
        return self.precision != "fp32"


def inspect_onnx(onnx_path: Union[str, os.PathLike]) -> OnnxFacts:
    """Input name/shape and the precision an ONNX carries (FP16 tensors/Casts, Q/DQ nodes)."""
    import onnx

    p = Path(onnx_path)
    if not p.is_file():
        raise LowformerError(f"no such ONNX file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise LowformerError(f"cannot read {p} as ONNX: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise LowformerError(f"{p} has {len(inputs)} inputs; lowformer engines take one image input")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise LowformerError(f"{p}: input {inp.name!r} has shape {dims}; expected [batch, C, H, W] with fixed C, H, W")

    f16 = onnx.TensorProto.FLOAT16
    nodes = list(g.node)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        precision = "int8"
    elif (any(t.data_type == f16 for t in g.initializer)
          or any(n.op_type == "Cast" and any(a.name == "to" and a.i == f16 for a in n.attribute) for n in nodes)
          or any(v.type.tensor_type.elem_type == f16 for v in list(g.input) + list(g.output))):
        precision = "fp16"
    else:
        precision = "fp32"
    return OnnxFacts(inp.name, dims, precision, [n.name for n in nodes])


# --------------------------------------------------------------------------- build

@dataclass
class BuildPlan:
    """What to ask TensorRT for, decided before touching the builder."""

    precision: str
    strongly_typed: bool
    flags: List[str]  # BuilderFlag names to set (TensorRT 10 weak typing only)
    profile: Optional[Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]  # min/opt/max input shape
    notes: List[str] = field(default_factory=list)


def check_request(facts: OnnxFacts, fp16: bool, int8: bool, min_batch: int, opt_batch: int, max_batch: int,
                  onnx_name: str = "the ONNX") -> None:
    """Checks that hold for every TensorRT version (run before asking whether TensorRT is here)."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise LowformerError(f"batch sizes must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) <= max ({max_batch})")
    if fp16 and int8:
        raise LowformerError("choose one of --fp16 and --int8")
    if int8 and facts.precision != "int8":
        raise LowformerError(f"--int8 needs a Q/DQ INT8 ONNX, but {onnx_name} has no QuantizeLinear nodes "
                             "(implicit INT8 calibration is not supported): build from model_int8.onnx "
                             "(lowformer export MODEL --int8 --calib-data DIR)")
    batch = facts.input_shape[0]
    if batch is not None and (min_batch, opt_batch, max_batch) not in ((1, 1, 1), (batch, batch, batch)):
        raise LowformerError(f"{onnx_name} has a fixed batch of {batch}; re-export it with a dynamic batch "
                             f"to build for batches {min_batch}..{max_batch}")


def plan_build(facts: OnnxFacts, major: int, fp16: bool, int8: bool, strongly_typed: Optional[bool],
               min_batch: int, opt_batch: int, max_batch: int, onnx_name: str = "the ONNX") -> BuildPlan:
    """Pure decision logic: network typing, builder flags and the batch profile (raises on conflicts)."""
    if major < 10:
        raise LowformerError(f"TensorRT {major}.x is too old: lowformer builds engines with TensorRT 10 or newer")
    check_request(facts, fp16, int8, min_batch, opt_batch, max_batch, onnx_name)
    carried = facts.precision
    if strongly_typed is None:
        strongly_typed = facts.carries_precision or major >= 11
    if major >= 11 and not strongly_typed:
        raise LowformerError(f"TensorRT {major} builds strongly typed networks only; drop the weak-typing request")

    flags: List[str] = []
    notes: List[str] = []
    precision = carried
    if fp16 and carried == "fp32":
        if major >= 11:
            raise LowformerError(f"TensorRT {major} has no FP16 builder flag and {onnx_name} is FP32: build from "
                                 "the FP16 ONNX instead (lowformer export MODEL --fp16 writes model_fp16.onnx)")
        if strongly_typed:
            raise LowformerError(f"a strongly typed build keeps {onnx_name}'s FP32 types; for --fp16 build from "
                                 "model_fp16.onnx or allow weak typing")
        flags.append("FP16")
        precision = "fp16"
    elif not strongly_typed:
        # TensorRT 10 weak typing of an ONNX that carries precision: enable the kernels it needs.
        flags += {"fp16": ["FP16"], "int8": ["INT8"]}.get(carried, [])
        if fp16 and carried == "int8":
            flags.append("FP16")
    elif fp16 and carried == "int8":
        notes.append("strongly typed INT8 build: layers left in float keep the ONNX's types (--fp16 ignored)")

    batch = facts.input_shape[0]
    chw = tuple(int(d) for d in facts.input_shape[1:])
    # Static shapes need no optimization profile.
    profile = ((min_batch, *chw), (opt_batch, *chw), (max_batch, *chw)) if batch is None else None
    return BuildPlan(precision, bool(strongly_typed), flags, profile, notes)


def _rel_or_abs(path: Path, folder: Optional[Path]) -> str:
    if folder is None:
        return str(path)
    return os.path.relpath(path.resolve(), folder.resolve())


def _manifest_folder(onnx_path: Path, manifest_folder: Optional[str]) -> Optional[Path]:
    from lowformer.artifacts import MANIFEST_NAME

    if manifest_folder is not None:
        return Path(manifest_folder)
    return onnx_path.parent if (onnx_path.parent / MANIFEST_NAME).is_file() else None


def _load_timing_cache(config, cache_path: Path) -> Tuple[Any, str]:
    """Attach the timing cache file (or a fresh one) to the config; says which it used."""
    data = b""
    if cache_path.is_file():
        data = cache_path.read_bytes()
    try:
        cache = config.create_timing_cache(data)
        ok = cache is not None and config.set_timing_cache(cache, False)
    except Exception:
        ok = False
    if ok:
        return cache, "reused" if data else "new"
    # A cache from another GPU / TensorRT version: start afresh rather than fail the build.
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache, "replaced (it did not match this GPU or TensorRT version)"


def _save_timing_cache(config, cache_path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(memoryview(cache.serialize())))


def _parser_errors(parser) -> str:
    """All parser errors as one line, each with the ONNX node it happened in."""
    msgs = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = str(err.desc()).strip().replace("\n", " ")
        where = ""
        name = err.node_name() if hasattr(err, "node_name") else ""  # node_name/node_operator: TensorRT >= 10
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        if name or op:
            where = f"node {name or '#' + str(err.node())}" + (f" ({op})" if op else "")
        elif err.node() >= 0:
            where = f"node #{err.node()}"
        msgs.append(f"{where}: {desc}" if where else desc)
    return "; ".join(msgs) if msgs else "no parser error reported"


def build_engine(onnx_path: Union[str, os.PathLike], engine_path: Union[str, os.PathLike, None] = None, *,
                 min_batch: int = 1, opt_batch: int = 1, max_batch: int = 1, workspace_mb: int = 2048,
                 timing_cache: Union[str, os.PathLike, None] = None, fp16: bool = False, int8: bool = False,
                 strongly_typed: Optional[bool] = None, manifest_folder: Optional[str] = None) -> Dict[str, Any]:
    """Build a TensorRT engine from an ONNX file and return (and record) its manifest entry.

    Raises NeedsTargetDevice (exit 3) with the command to run on the device when TensorRT or a
    CUDA GPU is missing here.
    """
    onnx_path = Path(onnx_path)
    engine = Path(engine_path) if engine_path is not None else default_engine_path(onnx_path)
    if engine.suffix.lower() not in (".engine", ".plan"):
        raise LowformerError(f"engine file must end in .engine or .plan: {engine}")
    if workspace_mb < 1:
        raise LowformerError("--workspace-mb must be positive")
    facts = inspect_onnx(onnx_path)  # bad input fails here (exit 1), before the device question (exit 3)
    check_request(facts, fp16, int8, min_batch, opt_batch, max_batch, onnx_path.name)
    folder = _manifest_folder(onnx_path, manifest_folder)
    if folder is not None:
        from lowformer.artifacts import MANIFEST_NAME, load_manifest

        if (folder / MANIFEST_NAME).is_file():
            load_manifest(folder)  # a broken manifest should fail before a minutes-long build

    ok, reason = tensorrt_status()
    if not ok:
        cmd = next_step_command(onnx_path, fp16, int8, min_batch, opt_batch, max_batch,
                                engine_path, workspace_mb, timing_cache)
        raise NeedsTargetDevice(f"{reason}; the ONNX is ready: on the target device run: {cmd}")

    trt = _import_trt()
    major = trt_major(trt)
    plan = plan_build(facts, major, fp16, int8, strongly_typed, min_batch, opt_batch, max_batch, onnx_path.name)
    cache_path = Path(timing_cache) if timing_cache is not None else engine.parent / DEFAULT_TIMING_CACHE

    logger = _Logger.create(trt)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # ignored (always on) in 11.x
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file so that external weights resolve
        raise LowformerError(f"TensorRT cannot parse {onnx_path.name}: {_parser_errors(parser)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names + ONNX nodes for profiling
    for name in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.profile is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(facts.input_name, *plan.profile)
        config.add_optimization_profile(profile)
    _, cache_state = _load_timing_cache(config, cache_path)

    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as e:  # pybind raises on some invalid configurations
        raise LowformerError(f"TensorRT could not build {onnx_path.name}: {str(e).splitlines()[0]}") from None
    if serialized is None:
        raise LowformerError(f"TensorRT could not build {onnx_path.name}: {logger.last_error()}")
    with atomic_path(engine) as tmp:
        tmp.write_bytes(bytes(memoryview(serialized)))
    _save_timing_cache(config, cache_path)

    from lowformer.models.checkpoints import sha256_file

    entry: Dict[str, Any] = {
        "path": _rel_or_abs(engine, folder),
        "format": "tensorrt",
        "precision": plan.precision,
        "sha256": sha256_file(str(engine)),
        "tensorrt": str(trt.__version__),
        **gpu_info(),
        "source": {"path": _rel_or_abs(onnx_path, folder), "sha256": sha256_file(str(onnx_path))},
        "input": {"name": facts.input_name, "shape": [None if plan.profile else facts.input_shape[0],
                                                      *facts.input_shape[1:]]},
        "build": {"min_batch": plan.profile[0][0] if plan.profile else facts.input_shape[0],
                  "opt_batch": plan.profile[1][0] if plan.profile else facts.input_shape[0],
                  "max_batch": plan.profile[2][0] if plan.profile else facts.input_shape[0],
                  "workspace_mb": int(workspace_mb), "strongly_typed": plan.strongly_typed,
                  "builder_flags": list(plan.flags), "onnx_precision": facts.precision,
                  "timing_cache": str(cache_path), "timing_cache_state": cache_state,
                  "profiling_verbosity": "detailed"},
    }
    if plan.notes:
        entry["warnings"] = list(plan.notes)
    if folder is not None:
        from lowformer.artifacts import MANIFEST_NAME, load_manifest, save_manifest, upsert_artifact

        if (folder / MANIFEST_NAME).is_file():
            manifest = load_manifest(folder)  # re-read: the build took a while
            upsert_artifact(manifest, entry)
            save_manifest(folder, manifest)
    return entry


# --------------------------------------------------------------------------- profile JSON parsing

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*?)(?: \| [^\]]*)?\]")


@dataclass
class EngineLayer:
    name: str
    layer_type: str
    onnx_nodes: List[str]


def _load_json(data: JsonLike) -> Any:
    if isinstance(data, (dict, list)):
        return data
    if isinstance(data, os.PathLike) or (isinstance(data, str) and not data.lstrip().startswith(("{", "["))):
        p = Path(data)
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise LowformerError(f"cannot read TensorRT JSON {p}: {e}") from None
    try:
        return json.loads(data)
    except ValueError as e:
        raise LowformerError(f"not TensorRT JSON: {e}") from None


def _nodes_from_name(name: str, onnx_nodes: Optional[set]) -> List[str]:
    """ONNX nodes of a layer from its name alone (no Metadata: LAYER_NAMES_ONLY engines, old TensorRT)."""
    if name.startswith("Reformatting CopyNode") or name.startswith("copied_squeeze"):
        return []  # inserted by TensorRT, not from the ONNX graph
    name = re.sub(r" \[profile \d+\]$", "", name)
    parts = [p.strip() for p in name.split(" + ") if p.strip()]
    if onnx_nodes is not None:
        parts = [p for p in parts if p in onnx_nodes]
    return parts


def engine_layers(inspector_json: JsonLike, onnx_nodes: Optional[Iterable[str]] = None) -> List[EngineLayer]:
    """Layers of an engine from the engine inspector / `trtexec --exportLayerInfo` JSON.

    With DETAILED verbosity each layer has a `Metadata` string of `[ONNX Layer: <node>]` records
    (separated by \\x1e or \\x1f) naming the ONNX nodes it was fused from; otherwise the layer name
    (nodes joined by " + ") is used. `onnx_nodes` keeps only names that are real ONNX nodes
    (fused names also contain weight names such as "conv1.weight").
    """
    data = _load_json(inspector_json)
    if not isinstance(data, dict) or not isinstance(data.get("Layers"), list):
        raise LowformerError('TensorRT layer information must be a JSON object with a "Layers" list')
    known = set(onnx_nodes) if onnx_nodes is not None else None
    out = []
    for layer in data["Layers"]:
        if isinstance(layer, str):  # ProfilingVerbosity.LAYER_NAMES_ONLY
            out.append(EngineLayer(layer, "", _nodes_from_name(layer, known)))
            continue
        name = str(layer.get("Name", ""))
        meta = layer.get("Metadata") or ""
        nodes = [m.strip() for m in _ONNX_LAYER.findall(meta)] if meta else []
        if known is not None:
            nodes = [n for n in nodes if n in known]
        if not meta:
            nodes = _nodes_from_name(name, known)
        out.append(EngineLayer(name, str(layer.get("LayerType", "")), list(dict.fromkeys(nodes))))
    return out


def parse_engine_layers(inspector_json: JsonLike, onnx_nodes: Optional[Iterable[str]] = None) -> Dict[str, List[str]]:
    """{engine layer name: [ONNX node names it covers]} from inspector / --exportLayerInfo JSON."""
    return {layer.name: layer.onnx_nodes for layer in engine_layers(inspector_json, onnx_nodes)}


def parse_layer_times(profile_json: JsonLike, layers: Optional[Dict[str, List[str]]] = None,
                      layer_types: Optional[Dict[str, str]] = None) -> List[LayerTiming]:
    """Per-layer times from `trtexec --exportProfile` JSON.

    The file is a list: an optional {"count": N} then {"name", "timeMs", "averageMs", "medianMs",
    "percentage"} per layer; timeMs is the total over the N profiled runs. `layers` (from
    parse_engine_layers) maps each layer to its ONNX nodes; without it they come from the name.
    """
    data = _load_json(profile_json)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise LowformerError("TensorRT profile JSON must be a list of layer records")
    flat: List[Any] = []
    for rec in data:  # tolerate one nested list per optimization profile
        flat.extend(rec if isinstance(rec, list) else [rec])
    count = next((int(r["count"]) for r in flat if isinstance(r, dict) and "count" in r and "name" not in r), None)
    out = []
    for rec in flat:
        if not isinstance(rec, dict) or "name" not in rec:
            continue
        name = str(rec["name"])
        total = float(rec.get("timeMs", 0.0))
        avg = float(rec.get("averageMs", 0.0))
        calls = count if count is not None else (int(round(total / avg)) if avg > 0 else 1)
        nodes = layers.get(name) if layers is not None and name in layers else _nodes_from_name(name, None)
        out.append(LayerTiming(name, (layer_types or {}).get(name, ""), total, calls, list(nodes or [])))
    return out


def layer_timings(profile_json: JsonLike, inspector_json: Optional[JsonLike] = None,
                  onnx_nodes: Optional[Iterable[str]] = None) -> List[LayerTiming]:
    """Profile times joined with the inspector's layer→ONNX-node map (trtexec output files)."""
    if inspector_json is None:
        return parse_layer_times(profile_json)
    info = engine_layers(inspector_json, onnx_nodes)
    return parse_layer_times(profile_json, {l.name: l.onnx_nodes for l in info},
                             {l.name: l.layer_type for l in info})


# --------------------------------------------------------------------------- runner

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                 "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    name = str(getattr(trt_dtype, "name", trt_dtype)).split(".")[-1].upper()
    if name not in _TORCH_DTYPES:
        raise LowformerError(f"unsupported TensorRT tensor type {name}")
    return _TORCH_DTYPES[name]


class TorchCudaIO:
    """Device buffers and the stream TensorRT runs on, all from torch (no pycuda).

    The only place the runner touches CUDA memory: tests replace it with a CPU version.
    """

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)

    @property
    def handle(self) -> int:
        return self.stream.cuda_stream

    def to_device(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # x may come from another stream
        with torch.cuda.stream(self.stream):
            return x.to(self.device, dtype, non_blocking=True).contiguous()

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            return torch.empty(tuple(shape), dtype=dtype, device=self.device)

    def synchronize(self) -> None:
        self.stream.synchronize()


def _rebuild_hint(path: Path, entry: Optional[Dict[str, Any]]) -> str:
    src = ((entry or {}).get("source") or {}).get("path")
    onnx = str(path.parent / src) if src and not os.path.isabs(src) else (src or "MODEL.onnx")
    return f"lowformer build-engine {shlex.quote(onnx)}"


class TensorRTRunner(Runner):
    """Runs a serialized engine with torch CUDA tensors as I/O buffers on a torch stream."""

    backend = "tensorrt"
    native = "torch"
    io_factory = TorchCudaIO  # replaced by tests (no CUDA here)

    def __init__(self, engine, trt, logger, path: str, device: str = "cuda",
                 entry: Optional[Dict[str, Any]] = None):
        self.engine, self._trt, self._logger, self.entry = engine, trt, logger, entry or {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) < 1:
            raise LowformerError(f"{path}: expected one input and at least one output, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = tuple(None if int(d) < 0 else int(d) for d in engine.get_tensor_shape(self.input_name))
        super().__init__(InputSpec(self.input_name, shape, "float32"), self.entry.get("precision", "fp32"),
                         device, None, path)
        self.provider = "tensorrt"
        self._in_dtype = torch_dtype(engine.get_tensor_dtype(self.input_name))
        self._out_dtype = torch_dtype(engine.get_tensor_dtype(self.output_name))
        self._batch_range = self._profile_batch_range()
        self.io = self.io_factory(device)
        self.context = engine.create_execution_context()
        if self.context is None:
            raise LowformerError(f"{path}: TensorRT could not create an execution context ({logger.last_error()})")

    @classmethod
    def from_file(cls, path: str, device: str = "cuda", entry: Optional[Dict[str, Any]] = None) -> "TensorRTRunner":
        p = Path(path)
        if not p.is_file():
            raise LowformerError(f"engine not found: {p}")
        ok, reason = tensorrt_status()
        if not ok:
            raise NeedsTargetDevice(f"{reason}; TensorRT engines run only on a GPU with TensorRT: run this on the "
                                    f"device the engine was built for ({p.name})")
        warn = None
        if not str(device).startswith("cuda"):
            warn = f"TensorRT runs on the GPU: device {device!r} was replaced by 'cuda'"
            device = "cuda"
        trt = _import_trt()
        here = {"tensorrt": str(trt.__version__), **gpu_info(device)}
        built = {k: (entry or {}).get(k) for k in ("tensorrt", "gpu")}
        stale = [f"{k} {built[k]} (here {here[k]})" for k in ("tensorrt", "gpu") if built[k] and built[k] != here[k]]
        if stale:
            raise LowformerError(f"{p.name} was built with another TensorRT version or GPU ({', '.join(stale)}); "
                                 f"rebuild it on this device: {_rebuild_hint(p, entry)}")
        logger = _Logger.create(trt)
        runtime = trt.Runtime(logger)
        try:
            engine = runtime.deserialize_cuda_engine(p.read_bytes())
        except Exception:
            engine = None
        if engine is None:
            raise LowformerError(f"cannot load {p.name}: it was built with another TensorRT version or GPU (or is not "
                                 f"a TensorRT engine); rebuild it on this device: {_rebuild_hint(p, entry)}")
        runner = cls(engine, trt, logger, str(p), device, entry)
        runner._runtime = runtime  # the engine must not outlive its runtime
        if warn:
            runner.warnings.append(warn)
        return runner

    def _profile_batch_range(self) -> Tuple[int, int]:
        fixed = self.input_spec.fixed_batch
        if fixed:
            return fixed, fixed
        try:
            mn, _, mx = self.engine.get_tensor_profile_shape(self.input_name, 0)
            return int(mn[0]), int(mx[0])
        except Exception:
            b = self.entry.get("build", {})
            return int(b.get("min_batch", 1)), int(b.get("max_batch", 1))

    def _execute(self, context, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._batch_range
        if not lo <= x.shape[0] <= hi:
            raise LowformerError(f"batch {x.shape[0]} is outside the engine's range {lo}..{hi}; rebuild with "
                                 f"lowformer build-engine --min-batch/--max-batch")
        xin = self.io.to_device(x, self._in_dtype)
        if not context.set_input_shape(self.input_name, tuple(xin.shape)):
            raise LowformerError(f"the engine rejects input shape {tuple(xin.shape)}")
        out = self.io.empty([int(d) for d in context.get_tensor_shape(self.output_name)], self._out_dtype)
        context.set_tensor_address(self.input_name, xin.data_ptr())
        context.set_tensor_address(self.output_name, out.data_ptr())
        if not context.execute_async_v3(self.io.handle):
            raise LowformerError(f"TensorRT execution failed: {self._logger.last_error()}")
        self.io.synchronize()
        return out

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        # Logits come back where the batch came from (a CPU batch gets CPU logits).
        return self._execute(self.context, x).float().to(x.device)

    def inspector_json(self) -> Dict[str, Any]:
        inspector = self.engine.create_engine_inspector()
        return json.loads(inspector.get_engine_information(self._trt.LayerInformationFormat.JSON))

    def profile_layers(self, batch: np.ndarray, iterations: int = 10) -> List[LayerTiming]:
        """Per-layer GPU times from TensorRT's IProfiler, with the ONNX nodes each fused layer covers."""
        trt = self._trt

        class Profiler(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)
                self.total: Dict[str, float] = {}
                self.calls: Dict[str, int] = {}

            def report_layer_time(self, layer_name, ms):
                self.total[layer_name] = self.total.get(layer_name, 0.0) + float(ms)
                self.calls[layer_name] = self.calls.get(layer_name, 0) + 1

        info = {l.name: l for l in engine_layers(self.inspector_json())}
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        context = self.engine.create_execution_context()  # a separate context keeps run() unprofiled
        self._execute(context, x)  # warm-up, not recorded
        profiler = Profiler()
        context.profiler = profiler
        for _ in range(iterations):
            self._execute(context, x)
        out = []
        for name, total in profiler.total.items():
            layer = info.get(name)
            nodes = layer.onnx_nodes if layer else _nodes_from_name(name, None)
            out.append(LayerTiming(name, layer.layer_type if layer else "", total, profiler.calls[name], list(nodes)))
        return out

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(tensorrt=str(self._trt.__version__), gpu=self.entry.get("gpu"),
                 batch_range=list(self._batch_range))
        return d
