"""A small stand-in for the `tensorrt` Python package, for tests only (no GPU or TensorRT here).

It offers a subset of the real TensorRT Python API that lowformer uses: the class names, member names,
parameter names and enum values are those of the real bindings
(tests/engines/tensorrt/test_tensorrt_bindings.py checks this fake against the real `tensorrt_bindings`
10.3, 10.16 and 11.4 modules: it may lack API, never invent it; test-only state is private, `_calls` / `_unsupported_ops` on the module). Return conventions
follow the real API (`None` from build/deserialize on failure) and a few documented behaviours: 11.x
has no BuilderFlag.FP16/INT8, a strongly typed network rejects precision flags, an engine only
deserializes with the TensorRT version that built it, inspector JSON is "Layers" + "Bindings" (10.x)
or "I/O Tensors" (11.x) with `[ONNX Layer: ...]` metadata joined by \\x1e.

What the fake returns behaves like what TensorRT returns (tests/engines/tensorrt/test_tensorrt_bindings.py
checks every return value against the real signatures, and the protocols of these classes against the real ones):
  * IHostMemory (build_serialized_network, ITimingCache.serialize): the buffer protocol (`bytes(m)`,
    `memoryview(m)`, `file.write(m)`) and `nbytes` / `dtype` (UINT8); no len(), indexing, iteration,
    comparison with bytes or bytes methods, as in TensorRT. Simplified: on Python < 3.12 a pure-Python
    class cannot offer the buffer protocol, so it is a ctypes structure and its memoryview is
    0-dimensional (TensorRT's is 1-D): use `bytes(m)` / `m.nbytes`, not `len(memoryview(m))`.
  * Dims (get_tensor_shape, get_tensor_profile_shape): len(), indexing (negative indices, plain
    slices give a tuple), iteration through indexing, `==` with a list or tuple only (anything else
    raises TypeError, as pybind does), unhashable, printed as a tuple; no arithmetic.
  * enums are pybind-like, not IntEnum: `DataType.FLOAT == 0` is False, `int(x)` works, `1 << x` does
    not, `str(x)` is "DataType.FLOAT", the enum classes are not iterable; no ordering (TensorRT orders
    a few, BuilderFlag among them: the fake is stricter there). ErrorCode (from ParserError.code()) has
    `name` as a method before 10.16 (seen in the 10.3, 10.4, 10.9 and 10.13-10.15 bindings wheels) and
    a property from 10.16 on.

Simplified, because the real work needs a GPU: the "engine" (inside the IHostMemory) is a JSON plan.
Running it reads the input buffer from its address (CPU memory in tests, through ctypes) and writes
logits[b, k] = mean(x[b, k % C]) * (k + 1), so the runner glue (shapes, addresses, dtypes) is
checked against real numbers. It says nothing about real GPU speed or accuracy.
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


class _PybindEnumType(enum.EnumMeta):
    """A pybind11 enum class is not a container: no iteration, len(), `in` or `Cls["NAME"]`."""

    __iter__ = __reversed__ = __len__ = __contains__ = __getitem__ = None


class _PybindEnum(enum.Enum, metaclass=_PybindEnumType):
    """A pybind11 enum value: converts with int() (and indexes), equals only a value of its own enum
    (`DataType.FLOAT == 0` is False), hashes as its int, no ordering or arithmetic; str() is "Cls.NAME",
    `.name` / `.value` as in pybind11 >= 3 (TensorRT >= 10.16)."""

    def __int__(self):
        return self._value_

    def __index__(self):
        return self._value_

    def __eq__(self, other):
        return type(self) is type(other) and self._value_ == other._value_

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(self._value_)


class _PybindEnumNameMethod(_PybindEnum):
    """Older pybind11 enums (ErrorCode before TensorRT 10.16): `name` is a method, x.name() the string."""

    def name(self):
        return self._name_


def _enum(name: str, members: Dict[str, int], base=_PybindEnum):
    """An enum with the real members' integer values, behaving as the pybind11 enum does."""
    return base(name, members)


def _buffer_bytes(buffer) -> bytes:
    """The bytes of anything with the buffer protocol; TypeError otherwise, as pybind's `buffer` argument."""
    return memoryview(buffer).tobytes()


def make_fake_tensorrt(version: str = "10.9.0.34", unsupported_ops: Optional[set] = None,
                       build_error: Optional[str] = None) -> types.ModuleType:
    """A fresh fake `tensorrt` module; `_calls` records every API call the code under test made.

    `unsupported_ops` makes the parser fail on those ONNX ops; `build_error` makes the build fail
    with that logged error (as a GPU out of memory would).
    """
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: List[tuple] = []
    trt._calls = calls
    trt._unsupported_ops = set(unsupported_ops or ())

    Severity = _enum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        WARNING = Severity.WARNING

        def __init__(self, min_severity=Severity.WARNING):
            self.min_severity = min_severity

        def log(self, severity, msg):
            pass

    class IProfiler:
        def __init__(self):
            pass

    trt.ILogger, trt.Logger, trt.IProfiler = ILogger, Logger, IProfiler
    if major >= 11:
        trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})
        trt.BuilderFlag = _enum("BuilderFlag", {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "SPARSE_WEIGHTS": 7})
    else:
        trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag",
                                                  {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
        trt.BuilderFlag = _enum("BuilderFlag", {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4,
                                                "SPARSE_WEIGHTS": 7, "OBEY_PRECISION_CONSTRAINTS": 9, "BF16": 17})
    trt.MemoryPoolType = _enum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2})
    trt.ProfilingVerbosity = _enum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.LayerInformationFormat = _enum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    trt.TensorIOMode = _enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.DataType = _enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6,
                                      "BF16": 7, "INT64": 8})
    minor = int(version.split(".")[1])
    trt.ErrorCode = _enum("ErrorCode", {"SUCCESS": 0, "INTERNAL_ERROR": 1, "MEM_ALLOC_FAILED": 2,
                                        "MODEL_DESERIALIZE_FAILED": 3, "INVALID_VALUE": 4, "INVALID_GRAPH": 5,
                                        "INVALID_NODE": 6, "UNSUPPORTED_GRAPH": 7, "UNSUPPORTED_NODE": 8,
                                        "UNSUPPORTED_NODE_ATTR": 9, "UNSUPPORTED_NODE_INPUT": 10,
                                        "UNSUPPORTED_NODE_DATATYPE": 11, "UNSUPPORTED_NODE_DYNAMIC": 12,
                                        "UNSUPPORTED_NODE_SHAPE": 13, "REFIT_FAILED": 14},
                          _PybindEnumNameMethod if (major, minor) < (10, 16) else _PybindEnum)
    precision_flags = {"FP16", "INT8", "BF16"}

    # ------------------------------------------------------------------ what methods return
    class Dims:
        """What TensorRT returns for a shape (tensorrt.Dims): a fixed-length sequence of ints.

        As the real class: len(), indexing (negative indices; a plain slice gives a tuple), iteration
        through indexing, item assignment, `==` with a list or tuple only (TypeError otherwise),
        unhashable, printed as a tuple. No arithmetic, no ==/hash with another Dims.
        """

        MAX_DIMS = 8

        def __init__(self, shape=()):
            if isinstance(shape, (str, bytes)):
                raise TypeError("__init__(): incompatible constructor arguments (shape: a sequence of int)")
            values = [int(d) for d in shape]
            if len(values) > self.MAX_DIMS:
                raise ValueError(f"Input length {len(values)}. Max expected length is {self.MAX_DIMS}")
            self._d = values

        def __len__(self):
            return len(self._d)

        def _index(self, index) -> int:
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"Dims indices must be int or slice, not {type(index).__name__}")
            i = index + len(self._d) if index < 0 else index
            if not 0 <= i < len(self._d):
                raise IndexError("Out of bounds")
            return i

        def __getitem__(self, index):
            if isinstance(index, slice):
                if index.step not in (None, 1):
                    raise IndexError("Out of bounds")  # TensorRT's own slicing handles plain slices only
                return tuple(self._d[index])
            return self._d[self._index(index)]

        def __setitem__(self, index, value):
            if isinstance(index, slice):
                raise IndexError("Out of bounds")  # as TensorRT 10.3-11.4 answer a slice assignment
            self._d[self._index(index)] = int(value)

        def __eq__(self, other):
            if not isinstance(other, (list, tuple)):
                raise TypeError("__eq__(): incompatible function arguments. The following argument types are "
                                "supported: (self: Dims, arg0: list) -> bool, (self: Dims, arg0: tuple) -> bool")
            return tuple(self._d) == tuple(other)

        __hash__ = None

        def __repr__(self):
            return str(tuple(self._d))

        __str__ = __repr__

    class IHostMemory(ctypes.Structure):
        """What TensorRT returns for serialized bytes (tensorrt.IHostMemory): a buffer, not `bytes`.

        The buffer protocol (`bytes(m)`, `memoryview(m)`, `file.write(m)`, `Runtime.deserialize_cuda_engine(m)`)
        and `nbytes` / `dtype`; no len(), indexing, iteration or comparison with bytes, as in TensorRT.
        Each object is an instance of a subclass holding exactly its bytes (a ctypes structure: the one
        way to offer the buffer protocol from Python < 3.12), made by `host_memory`.
        """

        __hash__ = object.__hash__  # hashable by identity, as the pybind object (ctypes objects are not)

        @property
        def nbytes(self):
            return ctypes.sizeof(self)

        @property
        def dtype(self):
            return trt.DataType.UINT8  # serialized engines and timing caches are bytes

    def host_memory(data: bytes) -> IHostMemory:
        fields = [("_bytes", ctypes.c_ubyte * len(data))]
        cls = type(IHostMemory)("IHostMemory", (IHostMemory,), {"_fields_": fields})
        return cls.from_buffer_copy(data)

    def record(name, *args):
        calls.append((name, *args))

    def error(logger, msg):
        logger.log(Severity.ERROR, msg)

    # ------------------------------------------------------------------ parser / network
    class ParserError:
        def __init__(self, node: int, name: str, op: str, desc: str):
            self._node, self._name, self._op, self._desc = node, name, op, desc

        def code(self):
            return trt.ErrorCode.UNSUPPORTED_NODE

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

        def node_name(self):
            return self._name

        def node_operator(self):
            return self._op

    class INetworkDefinition:
        def __init__(self, flags: int):
            self._strongly_typed = bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self._onnx = None

    class OnnxParser:
        def __init__(self, network, logger):
            record("OnnxParser")
            self._network, self._logger, self._errors = network, logger, []

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, index):
            return self._errors[index]

        def parse_from_file(self, model: str) -> bool:
            import onnx

            path = model
            record("parse_from_file", path)
            model = onnx.load(path)
            g = model.graph
            for i, n in enumerate(g.node):
                if n.op_type in trt._unsupported_ops:
                    self._errors.append(ParserError(i, n.name, n.op_type,
                                                    f"No importer registered for op: {n.op_type}"))
            if self._errors:
                return False
            inits = {t.name for t in g.initializer}
            inp = [i for i in g.input if i.name not in inits][0]
            out = g.output[0]

            def dims(v):
                return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                        for d in v.type.tensor_type.shape.dim]

            def dtype(v):
                return "HALF" if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else "FLOAT"

            self._network._onnx = {"input": {"name": inp.name, "shape": dims(inp), "dtype": dtype(inp)},
                                 "output": {"name": out.name, "shape": dims(out), "dtype": dtype(out)},
                                 "nodes": [(n.name, n.op_type) for n in g.node]}
            return True

    # ------------------------------------------------------------------ builder
    class IOptimizationProfile:
        def __init__(self):
            self._shapes = {}

        def set_shape(self, input, min, opt, max):
            record("set_shape", input, tuple(min), tuple(opt), tuple(max))
            self._shapes[input] = [list(min), list(opt), list(max)]

    class ITimingCache:
        def __init__(self, entries: Dict[str, str], cache_version: str = version):
            self._entries, self._version = dict(entries), cache_version

        def serialize(self):
            return host_memory(b"FAKETC" + json.dumps({"version": version, "entries": self._entries}).encode())

    class IBuilderConfig:
        def __init__(self):
            self._flags, self._profiles, self._pools = set(), [], {}
            object.__setattr__(self, "profiling_verbosity", trt.ProfilingVerbosity.LAYER_NAMES_ONLY)
            self._timing_cache = None

        def __setattr__(self, key, value):
            if key == "profiling_verbosity":
                record("profiling_verbosity", value)
            object.__setattr__(self, key, value)

        def set_memory_pool_limit(self, pool, pool_size):
            record("set_memory_pool_limit", pool, pool_size)
            self._pools[pool] = pool_size

        def set_flag(self, flag):
            record("set_flag", flag.name)
            self._flags.add(flag.name)

        def add_optimization_profile(self, profile):
            record("add_optimization_profile")
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            data = _buffer_bytes(serialized_timing_cache)
            record("create_timing_cache", data)
            if not data:
                return ITimingCache({})
            if not data.startswith(b"FAKETC"):
                return None  # real TensorRT logs an error and returns None for a corrupt cache
            blob = json.loads(data[6:])
            return ITimingCache(blob["entries"], blob["version"])

        def set_timing_cache(self, cache, ignore_mismatch):
            record("set_timing_cache", len(cache._entries), ignore_mismatch)
            if cache._version != version and not ignore_mismatch:
                return False
            self._timing_cache = cache
            return True

        def get_timing_cache(self):
            return self._timing_cache

    class Builder:
        def __init__(self, logger):
            record("Builder")
            self.logger = logger

        def create_network(self, flags=0):
            record("create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            record("build_serialized_network")
            onnx = network._onnx
            if build_error:
                error(self.logger, build_error)
                return None
            if network._strongly_typed and config._flags & precision_flags:
                error(self.logger, "Error Code 4: API Usage Error (precision flags are not allowed with a "
                                   "strongly typed network)")
                return None
            dynamic = -1 in onnx["input"]["shape"]
            if dynamic and not config._profiles:
                error(self.logger, "Error Code 4: Network has dynamic or shape inputs, but no optimization "
                                   "profile has been defined.")
                return None
            profile = config._profiles[0]._shapes.get(onnx["input"]["name"]) if config._profiles else None
            if profile is not None:
                for shape in profile:
                    if len(shape) != len(onnx["input"]["shape"]) or any(
                            d != s and d != -1 for d, s in zip(onnx["input"]["shape"], shape)):
                        error(self.logger, f"profile shape {shape} does not match the input")
                        return None
            layers = _fuse(onnx["nodes"])
            if config._timing_cache is not None:
                for name, _ in layers:
                    config._timing_cache._entries.setdefault(name, "tactic-0x1")
            plan = {"version": version, "input": onnx["input"], "output": onnx["output"],
                    "profile": profile or [onnx["input"]["shape"]] * 3, "layers": layers,
                    "detailed": config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED,
                    "flags": sorted(config._flags), "strongly_typed": network._strongly_typed}
            return host_memory(MAGIC + json.dumps(plan).encode())

    # ------------------------------------------------------------------ runtime
    class ICudaEngine:
        def __init__(self, plan):
            self._plan = plan
            self._io = [plan["input"], plan["output"]]

        @property
        def num_io_tensors(self):
            return 2

        def get_tensor_name(self, index):
            return self._io[index]["name"]

        def _t(self, name):
            return next(t for t in self._io if t["name"] == name)

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == self._io[0]["name"] else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return Dims(self._t(name)["shape"])

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, self._t(name)["dtype"])

        def get_tensor_profile_shape(self, name, profile_index):
            return [Dims(s) for s in self._plan["profile"]]

        def create_execution_context(self):
            return IExecutionContext(self)

        def create_engine_inspector(self):
            return EngineInspector(self)

    class IExecutionContext:
        def __init__(self, engine):
            self.engine, self._addresses, self._shapes = engine, {}, {}
            self.profiler = None

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine._plan["profile"]
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            if ok:
                self._shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            if name in self._shapes:
                return Dims(self._shapes[name])
            out = list(self.engine._plan["output"]["shape"])
            batch = next(iter(self._shapes.values()))[0] if self._shapes else -1
            return Dims(batch if d == -1 else d for d in out)

        def set_tensor_address(self, name, memory):
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle):
            record("execute_async_v3", stream_handle)
            inp, out = self.engine._plan["input"], self.engine._plan["output"]
            x = _view(self._addresses[inp["name"]], self._shapes[inp["name"]], inp["dtype"]).astype(np.float32)
            oshape = tuple(self.get_tensor_shape(out["name"]))
            y = _view(self._addresses[out["name"]], oshape, out["dtype"])
            channels = x.shape[1]
            means = x.mean(axis=(2, 3))
            k = np.arange(oshape[1])
            y[...] = (means[:, k % channels] * (k + 1)).astype(y.dtype)
            if self.profiler is not None:
                for i, (name, _) in enumerate(self.engine._plan["layers"]):
                    self.profiler.report_layer_time(name, 0.01 * (i + 1))
            return True

    class EngineInspector:
        def __init__(self, engine):
            self._engine = engine

        def get_engine_information(self, format):
            record("get_engine_information", format)
            plan = self._engine._plan
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

        def deserialize_cuda_engine(self, serialized_engine):
            record("deserialize_cuda_engine")
            data = _buffer_bytes(serialized_engine)
            if not data.startswith(MAGIC):
                error(self.logger, "Error Code 1: Serialization (Serialization assertion magicTagRead == kMAGIC_TAG "
                                   "failed.Magic tag does not match)")
                return None
            plan = json.loads(data[len(MAGIC):])
            if plan["version"] != version:
                error(self.logger, "Error Code 6: API Usage Error (The engine plan file is not compatible with this "
                                   f"version of TensorRT, expecting library version {version} got {plan['version']})")
                return None
            return ICudaEngine(plan)

    for cls in (Builder, OnnxParser, Runtime, ParserError, INetworkDefinition, IBuilderConfig, IOptimizationProfile,
                ITimingCache, ICudaEngine, IExecutionContext, EngineInspector, Dims, IHostMemory):
        setattr(trt, cls.__name__, cls)  # the real module exports every class under the same name
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


class CpuIO:
    """Stands in for TorchCudaIO: CPU tensors as 'device' buffers (the fake engine reads them by address)."""

    def __init__(self, device):
        self.handle = 1234

    def to_device(self, x, dtype):
        return x.to(dtype=dtype).contiguous()

    def empty(self, shape, dtype):
        import torch

        return torch.empty(tuple(shape), dtype=dtype)

    def synchronize(self):
        pass
