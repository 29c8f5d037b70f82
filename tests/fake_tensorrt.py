"""A small stand-in for the `tensorrt` Python package, for tests only (no GPU or TensorRT here).

It mirrors the documented TensorRT 10.x / 11.x Python API surface lowformer uses (names, argument
order, return conventions such as `None` from build/deserialize on failure) and a few documented
behaviours: 11.x has no BuilderFlag.FP16/INT8, a strongly typed network rejects precision flags,
an engine only deserializes with the TensorRT version that built it, inspector JSON is "Layers" +
"Bindings" (10.x) or "I/O Tensors" (11.x) with `[ONNX Layer: ...]` metadata joined by \\x1e.

The "engine" is a JSON plan. Running it reads the input buffer from its address (CPU memory in
tests, through ctypes) and writes logits[b, k] = mean(x[b, k % C]) * (k + 1), so the runner glue
(shapes, addresses, dtypes) is checked against real numbers. It says nothing about real GPU speed
or accuracy.
"""
from __future__ import annotations

import ctypes
import enum
import json
import types
from typing import Any, Dict, List, Optional

import numpy as np

MAGIC = b"FAKETRT1"
_FUSABLE = {"Relu", "Add", "Sigmoid", "Mul", "HardSwish", "Clip", "BatchNormalization"}


def _enum(name: str, members: List[str], start: int = 0):
    return enum.IntEnum(name, {m: i + start for i, m in enumerate(members)})


def make_fake_tensorrt(version: str = "10.9.0.34", unsupported_ops: Optional[set] = None,
                       build_error: Optional[str] = None) -> types.ModuleType:
    """A fresh fake `tensorrt` module; `calls` records every API call the code under test made.

    `unsupported_ops` makes the parser fail on those ONNX ops; `build_error` makes the build fail
    with that logged error (as a GPU out of memory would).
    """
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: List[tuple] = []
    trt.calls = calls
    trt.unsupported_ops = set(unsupported_ops or ())

    Severity = _enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

    class ILogger:
        pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        WARNING = Severity.WARNING

        def __init__(self, severity=Severity.WARNING):
            self.severity = severity

        def log(self, severity, msg):
            pass

    class IProfiler:
        def __init__(self):
            pass

    trt.ILogger, trt.Logger, trt.IProfiler = ILogger, Logger, IProfiler
    if major >= 11:
        trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ["STRONGLY_TYPED"])
        trt.BuilderFlag = _enum("BuilderFlag", ["DEBUG", "GPU_FALLBACK", "REFIT", "SPARSE_WEIGHTS"])
    else:
        trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
        trt.BuilderFlag = _enum("BuilderFlag", ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "SPARSE_WEIGHTS",
                                                "BF16", "OBEY_PRECISION_CONSTRAINTS"])
    trt.MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM"])
    trt.ProfilingVerbosity = _enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    trt.LayerInformationFormat = _enum("LayerInformationFormat", ["ONELINE", "JSON"])
    trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = _enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64"])
    precision_flags = {"FP16", "INT8", "BF16"}

    def record(name, *args):
        calls.append((name, *args))

    def error(logger, msg):
        logger.log(Severity.ERROR, msg)

    # ------------------------------------------------------------------ parser / network
    class ParserError:
        def __init__(self, node: int, name: str, op: str, desc: str):
            self._node, self._name, self._op, self._desc = node, name, op, desc

        def code(self):
            return "UNSUPPORTED_NODE"

        def desc(self):
            return self._desc

        def node(self):
            return self._node

        def file(self):
            return "onnxOpImporters.cpp"

        def line(self):
            return 0

        def func(self):
            return "importFallback"

    if major >= 10:  # node_name / node_operator came with TensorRT 10
        ParserError.node_name = lambda self: self._name
        ParserError.node_operator = lambda self: self._op

    class Network:
        def __init__(self, flags: int):
            self.strongly_typed = bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self.onnx = None

    class OnnxParser:
        def __init__(self, network, logger):
            record("OnnxParser")
            self.network, self.logger, self.errors = network, logger, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            import onnx

            record("parse_from_file", path)
            model = onnx.load(path)
            g = model.graph
            for i, n in enumerate(g.node):
                if n.op_type in trt.unsupported_ops:
                    self.errors.append(ParserError(i, n.name, n.op_type,
                                                   f"No importer registered for op: {n.op_type}"))
            if self.errors:
                return False
            inits = {t.name for t in g.initializer}
            inp = [i for i in g.input if i.name not in inits][0]
            out = g.output[0]

            def dims(v):
                return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                        for d in v.type.tensor_type.shape.dim]

            def dtype(v):
                return "HALF" if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else "FLOAT"

            self.network.onnx = {"input": {"name": inp.name, "shape": dims(inp), "dtype": dtype(inp)},
                                 "output": {"name": out.name, "shape": dims(out), "dtype": dtype(out)},
                                 "nodes": [(n.name, n.op_type) for n in g.node]}
            return True

    # ------------------------------------------------------------------ builder
    class OptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):
            record("set_shape", name, tuple(min), tuple(opt), tuple(max))
            self.shapes[name] = [list(min), list(opt), list(max)]

    class TimingCache:
        def __init__(self, entries: Dict[str, str]):
            self.entries = dict(entries)

        def serialize(self):
            return b"FAKETC" + json.dumps({"version": version, "entries": self.entries}).encode()

    class BuilderConfig:
        def __init__(self):
            self.flags, self.profiles, self.pools = set(), [], {}
            object.__setattr__(self, "profiling_verbosity", trt.ProfilingVerbosity.LAYER_NAMES_ONLY)
            self.timing_cache = None

        def __setattr__(self, key, value):
            if key == "profiling_verbosity":
                record("profiling_verbosity", value)
            object.__setattr__(self, key, value)

        def set_memory_pool_limit(self, pool, size):
            record("set_memory_pool_limit", pool, size)
            self.pools[pool] = size

        def set_flag(self, flag):
            record("set_flag", flag.name)
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile):
            record("add_optimization_profile")
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            data = bytes(data)
            record("create_timing_cache", data)
            if not data:
                return TimingCache({})
            if not data.startswith(b"FAKETC"):
                return None  # real TensorRT logs an error and returns None for a corrupt cache
            blob = json.loads(data[6:])
            cache = TimingCache(blob["entries"])
            cache.version = blob["version"]
            return cache

        def set_timing_cache(self, cache, ignore_mismatch):
            record("set_timing_cache", len(cache.entries), ignore_mismatch)
            if getattr(cache, "version", version) != version and not ignore_mismatch:
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

    class Builder:
        def __init__(self, logger):
            record("Builder")
            self.logger = logger

        def create_network(self, flags=0):
            record("create_network", flags)
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            record("build_serialized_network")
            onnx = network.onnx
            if build_error:
                error(self.logger, build_error)
                return None
            if network.strongly_typed and config.flags & precision_flags:
                error(self.logger, "Error Code 4: API Usage Error (precision flags are not allowed with a "
                                   "strongly typed network)")
                return None
            dynamic = -1 in onnx["input"]["shape"]
            if dynamic and not config.profiles:
                error(self.logger, "Error Code 4: Network has dynamic or shape inputs, but no optimization "
                                   "profile has been defined.")
                return None
            profile = config.profiles[0].shapes.get(onnx["input"]["name"]) if config.profiles else None
            if profile is not None:
                for shape in profile:
                    if len(shape) != len(onnx["input"]["shape"]) or any(
                            d != s and d != -1 for d, s in zip(onnx["input"]["shape"], shape)):
                        error(self.logger, f"profile shape {shape} does not match the input")
                        return None
            layers = _fuse(onnx["nodes"])
            if config.timing_cache is not None:
                for name, _ in layers:
                    config.timing_cache.entries.setdefault(name, "tactic-0x1")
            plan = {"version": version, "input": onnx["input"], "output": onnx["output"],
                    "profile": profile or [onnx["input"]["shape"]] * 3, "layers": layers,
                    "detailed": config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED,
                    "flags": sorted(config.flags), "strongly_typed": network.strongly_typed}
            return MAGIC + json.dumps(plan).encode()

    # ------------------------------------------------------------------ runtime
    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self.io = [plan["input"], plan["output"]]

        @property
        def num_io_tensors(self):
            return 2

        def get_tensor_name(self, i):
            return self.io[i]["name"]

        def _t(self, name):
            return next(t for t in self.io if t["name"] == name)

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self.io[0]["name"] else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return tuple(self._t(name)["shape"])

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, self._t(name)["dtype"])

        def get_tensor_profile_shape(self, name, profile_index):
            return [tuple(s) for s in self.plan["profile"]]

        def create_execution_context(self):
            return ExecutionContext(self)

        def create_engine_inspector(self):
            return EngineInspector(self)

    class ExecutionContext:
        def __init__(self, engine):
            self.engine, self.addresses, self.shapes = engine, {}, {}
            self.profiler = None

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.plan["profile"]
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            out = list(self.engine.plan["output"]["shape"])
            batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
            return tuple(batch if d == -1 else d for d in out)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            record("execute_async_v3", stream_handle)
            inp, out = self.engine.plan["input"], self.engine.plan["output"]
            x = _view(self.addresses[inp["name"]], self.shapes[inp["name"]], inp["dtype"]).astype(np.float32)
            oshape = self.get_tensor_shape(out["name"])
            y = _view(self.addresses[out["name"]], oshape, out["dtype"])
            channels = x.shape[1]
            means = x.mean(axis=(2, 3))
            k = np.arange(oshape[1])
            y[...] = (means[:, k % channels] * (k + 1)).astype(y.dtype)
            if self.profiler is not None:
                for i, (name, _) in enumerate(self.engine.plan["layers"]):
                    self.profiler.report_layer_time(name, 0.01 * (i + 1))
            return True

    class EngineInspector:
        def __init__(self, engine):
            self.engine = engine

        def get_engine_information(self, fmt):
            record("get_engine_information", fmt)
            plan = self.engine.plan
            if plan["detailed"]:
                layers = [{"Name": name, "LayerType": kind, "Inputs": [], "Outputs": [],
                           "Metadata": meta} for name, (kind, meta) in
                          ((n, _layer_detail(n, plan)) for n, _ in plan["layers"])]
            else:
                layers = [n for n, _ in plan["layers"]]
            doc: Dict[str, Any] = {"Layers": layers}
            if major >= 11:
                doc["I/O Tensors"] = [{"Name": t["name"], "IOMode": mode, "DataType": "Float"}
                                      for t, mode in ((plan["input"], "Input"), (plan["output"], "Output"))]
            else:
                doc["Bindings"] = [plan["input"]["name"], plan["output"]["name"]]
            return json.dumps(doc)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            record("deserialize_cuda_engine")
            data = bytes(data)
            if not data.startswith(MAGIC):
                error(self.logger, "Error Code 1: Serialization (Serialization assertion magicTagRead == kMAGIC_TAG "
                                   "failed.Magic tag does not match)")
                return None
            plan = json.loads(data[len(MAGIC):])
            if plan["version"] != version:
                error(self.logger, "Error Code 6: API Usage Error (The engine plan file is not compatible with this "
                                   f"version of TensorRT, expecting library version {version} got {plan['version']})")
                return None
            return Engine(plan)

    trt.Builder, trt.OnnxParser, trt.Runtime, trt.ParserError = Builder, OnnxParser, Runtime, ParserError
    return trt


def _fuse(nodes: List[tuple]) -> List[tuple]:
    """Group each node with the element-wise nodes after it, as TensorRT's fusions roughly do."""
    layers: List[List[tuple]] = []
    for name, op in nodes:
        if op in ("Constant", "Identity"):
            continue
        if layers and op in _FUSABLE and layers[-1][0][1] in ("Conv", "Gemm", "MatMul"):
            layers[-1].append((name, op))
        else:
            layers.append([(name, op)])
    return [(" + ".join(n for n, _ in group), [n for n, _ in group]) for group in layers]


def _layer_detail(name: str, plan) -> tuple:
    nodes = next(ns for n, ns in plan["layers"] if n == name)
    kind = "CaskConvolution" if " + " in name else "Other"
    # DETAILED verbosity metadata as the ONNX parser writes it, records joined by \x1e
    return kind, "\x1e".join(f"[ONNX Layer: {n}]" for n in nodes)


def _view(addr: int, shape, dtype: str) -> np.ndarray:
    np_dtype = np.float16 if dtype == "HALF" else np.float32
    count = int(np.prod(shape))
    buf = (ctypes.c_byte * (count * np.dtype(np_dtype).itemsize)).from_address(addr)
    return np.ctypeslib.as_array(buf).view(np_dtype).reshape(shape)
