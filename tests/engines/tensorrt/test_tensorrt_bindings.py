"""lowformer's TensorRT code and the fake `tensorrt` checked against the REAL TensorRT Python API.

The real bindings of TensorRT 10.3 (JetPack 6), 10.16 and 11.4 come from PyPI's bindings wheels and are
imported without TensorRT or a GPU against stub libraries (trt_bindings.py, beside this file); their
classes, members, enum values and pybind signatures are dumped to JSON. trt_api_check.py reads the
TensorRT names lowformer/engines/ uses from its AST and checks each one against each version, with the
version guards the code itself writes (`if major < 11:`). The fake `tensorrt` is held to the same
module: its names and signatures, the type of every value its methods return (IHostMemory, Dims,
ErrorCode, ... as the real signatures say) and the protocols of those objects (len(), indexing, buffer,
int(), ==). What this cannot check: behaviour that needs libnvinfer (parsing, building, running): that
is `pytest -m gpu` on a machine with TensorRT.

Without the wheels (offline, no C compiler) these tests skip, but where the bindings are required (CI,
LOWFORMER_REQUIRE_TRT_BINDINGS=1: `trt_bindings.required()`) they fail instead.
"""
from __future__ import annotations

import ast
import enum
import inspect
import json
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, List, Optional

import pytest

import trt_api_check as ck
import trt_bindings
from conftest import REPO
from fake_tensorrt import CpuIO, make_fake_tensorrt

ENGINES = REPO / "lowformer" / "engines"
KEYS = list(trt_bindings.VERSIONS)


@pytest.fixture(scope="session")
def trt_real_apis():
    """{'10.3' | '10.16' | '11.4': API dump} of the real TensorRT Python bindings (trt_bindings.py, beside this file).

    The PyPI bindings wheels are downloaded once into ~/.cache/lowformer/trt-bindings/ (or
    $LOWFORMER_TRT_CACHE) and imported against stub libraries in a subprocess per version. Skips when
    pip cannot download them (offline) or no C compiler is here, unless LOWFORMER_TRT_BINDINGS=required.
    """
    try:
        return {key: trt_bindings.real_api(key) for key in trt_bindings.VERSIONS}
    except trt_bindings.BindingsUnavailable as e:
        if os.environ.get("LOWFORMER_TRT_BINDINGS") == "required":
            raise
        pytest.skip(f"real TensorRT bindings unavailable: {e}")


@pytest.fixture(scope="module")
def apis(trt_real_apis):
    return {k: ck.Api(d) for k, d in trt_real_apis.items()}


def _engine_sources():
    return {str(p.relative_to(REPO)): p.read_text() for p in sorted(ENGINES.rglob("*.py"))}


# --------------------------------------------------------------------------- the engine code

@pytest.mark.parametrize("key", KEYS)
def test_engine_code_uses_only_real_tensorrt_api(apis, key):
    api = apis[key]
    problems, uses = ck.check_sources(api, _engine_sources())
    assert not problems, "\n".join(map(str, problems))
    seen = {(u.qualname, u.how) for u in uses}
    # The extraction is not vacuous: the build, the runner and both TensorRT subclasses are seen.
    for expected in [("Builder", "call"), ("Builder.create_network", "call"), ("OnnxParser.parse_from_file", "call"),
                     ("IBuilderConfig.set_memory_pool_limit", "call"), ("IBuilderConfig.profiling_verbosity", "set"),
                     ("IOptimizationProfile.set_shape", "call"), ("IBuilderConfig.set_timing_cache", "call"),
                     ("ParserError.node_name", "call"), ("Runtime.deserialize_cuda_engine", "call"),
                     ("ICudaEngine.get_tensor_profile_shape", "call"), ("IExecutionContext.execute_async_v3", "call"),
                     ("IExecutionContext.profiler", "set"), ("EngineInspector.get_engine_information", "call"),
                     ("ILogger.log", "override"), ("IProfiler.report_layer_time", "override"),
                     ("DataType.name", "get")]:
        assert expected in seen, expected
    precision_flags = {("BuilderFlag.FP16", "get"), ("BuilderFlag.INT8", "get")}
    if api.major >= 11:  # guarded by `if major < 11:` in build.py: not used on 11, and absent there
        assert not precision_flags & seen
        assert "FP16" not in api.classes["BuilderFlag"]["values"]
    else:
        assert precision_flags <= seen
    assert len(uses) >= 60


def test_planted_misspelling_in_the_engine_code_is_reported(apis):
    sources = _engine_sources()
    build = "lowformer/engines/tensorrt/build.py"
    assert "builder.create_builder_config()" in sources[build]
    sources[build] = sources[build].replace("builder.create_builder_config()", "builder.create_builder_confg()")
    runner = "lowformer/engines/tensorrt/runner.py"
    sources[runner] = sources[runner].replace("def report_layer_time(self", "def report_layer_times(self")
    for api in apis.values():
        problems = [str(p) for p in ck.check_sources(api, sources)[0]]
        assert any(build in p and "Builder.create_builder_confg does not exist" in p for p in problems), problems
        assert any(runner in p and "misspelt override" in p and "IProfiler.report_layer_time" in p
                   for p in problems), problems


PLANTED = '''
from lowformer.engines.tensorrt.environment import trt_major


def _import_trt():
    import tensorrt as trt

    return trt


def build(path, size):
    trt = _import_trt()
    major = trt_major(trt)
    builder = trt.Builder(trt.Logger())
    network = builder.create_netwrok(0)                                   # misspelt method
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size=size)  # wrong keyword
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8))                              # too few arguments
    config.set_flag(trt.BuilderFlag.FP16)                                 # FP16 unguarded
    if major < 11:
        config.set_flag(trt.BuilderFlag.INT8)                             # guarded: fine everywhere
    name = "FP16"
    config.set_flag(getattr(trt.BuilderFlag, name))                       # unverifiable
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"")
    context = engine.create_execution_context()
    context.engine = None                                                 # read-only property
    context.execute_async_v3(stream_handle=0)                             # keyword by its real name: fine
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_informaton(trt.LayerInformationFormat.JSON)  # misspelt method name


def profiler(trt):
    class Profiler(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)

        def report_layer_times(self, layer_name, ms):                     # misspelt override
            pass

    class Logger(trt.ILogger):
        def log(self, severity):                                          # wrong arity
            pass
    return Profiler(), Logger()
'''


def _line(marker: str) -> int:
    return next(i for i, text in enumerate(PLANTED.splitlines(), 1) if text.rstrip().endswith("# " + marker))


@pytest.mark.parametrize("key", KEYS)
def test_checker_reports_planted_mistakes(apis, key):
    api = apis[key]
    problems, _ = ck.check_sources(api, {"planted.py": PLANTED})
    by_line = {}
    for p in problems:
        by_line.setdefault(p.line, []).append(p.message)
    v = api.version
    assert by_line.pop(_line("misspelt method")) == [f"Builder.create_netwrok does not exist in TensorRT {v}"]
    assert "set_memory_pool_limit(_, size=) matches no signature" in by_line.pop(_line("wrong keyword"))[0]
    assert "set_shape(_, _) matches no signature" in by_line.pop(_line("too few arguments"))[0]
    if api.major >= 11:
        assert by_line.pop(_line("FP16 unguarded")) == [f"BuilderFlag.FP16 does not exist in TensorRT {v}"]
    assert "computed name" in by_line.pop(_line("unverifiable"))[0]
    assert by_line.pop(_line("read-only property")) == [f"IExecutionContext.engine is not a writable property in TensorRT {v}"]
    assert by_line.pop(_line("misspelt method name")) == [f"EngineInspector.get_engine_informaton does not exist in TensorRT {v}"]
    assert "misspelt override of TensorRT" in by_line.pop(_line("misspelt override"))[0]
    assert "overrides TensorRT" in by_line.pop(_line("wrong arity"))[0]
    assert not by_line, by_line  # nothing else: the guarded INT8 and the keyword call are fine


def test_checker_reports_a_method_read_as_a_value(apis):
    """ErrorCode.name is a method up to TensorRT 10.15 (`code.name` a bound method), a property from 10.16."""
    src = textwrap.dedent('''
        def f(trt, network, logger):
            err = trt.OnnxParser(network, logger).get_error(0)
            return str(err.code().name), err.desc
        ''')
    for key, api in apis.items():
        problems = [(p.line, p.message) for p in ck.check_sources(api, {"h.py": src})[0]]
        v = api.version
        expected = [(4, f"ParserError.desc is a method in TensorRT {v}, not a value: read without a call it is a "
                        "bound method")]
        if key == "10.3":
            expected.insert(0, (4, f"ErrorCode.name is a method in TensorRT {v}, not a value: read without a "
                                   "call it is a bound method"))
        assert problems == expected, key


def test_checker_guards_by_major_and_hasattr(apis):
    api = apis["11.4"]
    src = textwrap.dedent('''
        def f(trt, config):
            major = trt_major(trt)
            if major >= 11:
                pass
            else:
                config.set_flag(trt.BuilderFlag.FP16)
            if 11 > major and hasattr(trt, "Nope"):
                trt.Nope()
            flag = trt.BuilderFlag.FP16 if major < 11 else None
            if hasattr(trt.BuilderFlag, "FP16"):
                trt.BuilderFlag.FP16
            trt.BuilderFlag.INT8
        ''')
    problems, _ = ck.check_sources(api, {"g.py": src})
    assert [(p.line, p.message) for p in problems] == [(13, "BuilderFlag.INT8 does not exist in TensorRT 11.4.0.106")]


# --------------------------------------------------------------------------- the real module, really imported

PROBE = r'''
import json, tensorrt as trt
from lowformer.engines.tensorrt.environment import _Logger, trt_major
from lowformer.engines.tensorrt.runner import torch_dtype
logger = _Logger.create(trt)                     # our ILogger subclass on the real pybind base
logger.log(trt.ILogger.Severity.ERROR, "Error Code 2: OutOfMemory\nmore")
logger.log(trt.ILogger.Severity.WARNING, "just a warning")
class Profiler(trt.IProfiler):
    def __init__(self):
        trt.IProfiler.__init__(self)
    def report_layer_time(self, layer_name, ms):
        pass
Profiler()
print(json.dumps({"major": trt_major(trt), "last_error": logger.last_error(),
                  "half": str(torch_dtype(trt.DataType.HALF)), "float": str(torch_dtype(trt.DataType.FLOAT)),
                  "strongly_typed_bit": int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)}))
'''


@pytest.mark.parametrize("key", KEYS)
def test_python_side_works_with_the_real_module(trt_real_apis, key):
    r = trt_bindings.run_with_real_tensorrt(key, PROBE)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["major"] == trt_bindings.major_of(key)
    assert got["last_error"] == "Error Code 2: OutOfMemory"
    assert (got["half"], got["float"]) == ("torch.float16", "torch.float32")
    assert got["strongly_typed_bit"] == (0 if got["major"] >= 11 else 1)


@pytest.mark.parametrize("key", KEYS)
def test_runner_dtype_names_are_real_datatypes(apis, key):
    from lowformer.engines.tensorrt.runner import _TORCH_DTYPES

    assert set(_TORCH_DTYPES) <= set(apis[key].classes["DataType"]["values"])


# --------------------------------------------------------------------------- the fake against the real module

def _fake_class_defs():
    """{class name: ClassDef} of every class the fake defines inside make_fake_tensorrt."""
    tree = ast.parse(Path(inspect.getsourcefile(make_fake_tensorrt)).read_text())  # tests/fakes/fake_tensorrt.py
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "make_fake_tensorrt")
    return {n.name: n for n in ast.walk(fn) if isinstance(n, ast.ClassDef)}


def _instance_attrs(cls_def: ast.ClassDef):
    out = set()
    for n in ast.walk(cls_def):
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        for t in targets:
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
                    out.add(e.attr)
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "__setattr__"
                and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)):
            out.add(n.args[1].value)
    return out


def _params_match(fake_fn, real_sigs) -> bool:
    """The fake takes a prefix of one real overload's parameters, by name, the rest optional in the real one."""
    fake = [p.name for p in list(inspect.signature(fake_fn).parameters.values())[1:]]
    for sig in real_sigs:
        real = sig["params"][1:]
        if len(real) < len(fake):
            continue
        if all(r["name"] == f or r["kind"] == "positional_only" for f, r in zip(fake, real)) and \
                all(r["default"] for r in real[len(fake):]):
            return True
    return False


# The container protocols of a class object itself (`for x in trt.DataType`, `trt.DataType["FLOAT"]`).
CLASS_PROTOCOLS = ("__iter__", "__reversed__", "__len__", "__contains__", "__getitem__")


def _compare_protocols(api: ck.Api, fake_cls, qual: str, problems, both_ways: bool = False):
    """The fake's objects support no protocol (len(), x[i], iteration, ==, int(), buffer, ...) that the real
    class's lack; with `both_ways`, they also support every one the real objects have (but the deprecated
    no-op context managers), so that code written against the fake runs against TensorRT and back."""
    real = api.classes[qual]
    mine = trt_bindings.protocols_of(fake_cls)
    theirs = real["protocols"]
    extra = sorted(n for n, state in mine.items() if state == "defined" and theirs.get(n) != "defined")
    if extra:
        problems.append(f"{qual}: the fake's objects support {', '.join(extra)}; TensorRT {api.version}'s do not")
    if both_ways:
        missing = sorted(n for n, state in theirs.items() if state == "defined" and mine.get(n) != "defined"
                         and n not in ("__enter__", "__exit__"))
        if missing:
            problems.append(f"{qual}: TensorRT {api.version}'s objects support {', '.join(missing)}; the fake's "
                            "do not")
    mine_cls = trt_bindings.protocols_of(type(fake_cls))
    extra_cls = sorted(n for n in CLASS_PROTOCOLS if mine_cls.get(n) == "defined"
                       and real["class_protocols"].get(n) != "defined")
    if extra_cls:
        problems.append(f"{qual}: the fake's class object supports {', '.join(extra_cls)}; TensorRT "
                        f"{api.version}'s does not")


def _compare_class(api: ck.Api, fake_cls, qual: str, problems):
    real = api.classes.get(qual)
    if real is None:
        problems.append(f"class {qual}: not in TensorRT {api.version}")
        return
    _compare_protocols(api, fake_cls, qual, problems)
    if issubclass(fake_cls, enum.Enum):
        if not real["enum"]:
            problems.append(f"{qual}: an enum in the fake, not in TensorRT {api.version}")
            return
        for m in fake_cls.__members__.values():  # (a pybind enum class, and so the fake's, is not iterable)
            if real["values"].get(m._name_) != int(m._value_):
                problems.append(f"{qual}.{m._name_} = {int(m._value_)} in the fake; TensorRT {api.version}: "
                                f"{real['values'].get(m._name_, 'no such member')}")
        real_name = real["members"].get("name", {}).get("kind")
        fake_name = "method" if inspect.isfunction(inspect.getattr_static(fake_cls, "name", None)) else "property"
        if real_name in ("method", "property") and real_name != fake_name:
            problems.append(f"{qual}.name: a {fake_name} in the fake, a {real_name} in TensorRT {api.version}")
        return
    members = real["members"]
    for name, attr in vars(fake_cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        rm = members.get(name)
        if name == "__init__":
            if rm and rm.get("signatures") and not _params_match(attr, rm["signatures"]):
                problems.append(f"{qual}.__init__{inspect.signature(attr)}: TensorRT {api.version} takes "
                                + " | ".join(ck._sig_text(s) for s in rm["signatures"]))
            continue
        if rm is None:
            problems.append(f"{qual}.{name}: not in TensorRT {api.version}")
        elif inspect.isclass(attr):
            _compare_class(api, attr, rm.get("ref", f"{qual}.{name}"), problems)
        elif isinstance(attr, property):
            if rm["kind"] != "property":
                problems.append(f"{qual}.{name}: a property in the fake, a {rm['kind']} in TensorRT {api.version}")
        elif inspect.isfunction(attr):
            if rm["kind"] not in ("method", "callable"):
                problems.append(f"{qual}.{name}: a method in the fake, a {rm['kind']} in TensorRT {api.version}")
            elif not _params_match(attr, rm.get("signatures") or []):
                problems.append(f"{qual}.{name}{inspect.signature(attr)}: TensorRT {api.version} takes "
                                + " | ".join(ck._sig_text(s) for s in rm.get("signatures") or []))


@pytest.mark.parametrize("key", KEYS)
def test_fake_offers_no_api_the_real_module_lacks(apis, key):
    api = apis[key]
    fake = make_fake_tensorrt(trt_bindings.VERSIONS[key][1])
    problems = []
    for name, value in vars(fake).items():
        if name.startswith("_") and name != "__version__":
            continue  # test-only state (_calls, _unsupported_ops) and module dunders
        real = api.module.get(name)
        if real is None:
            problems.append(f"tensorrt.{name}: not in TensorRT {api.version}")
        elif inspect.isclass(value):
            if real["kind"] != "class":
                problems.append(f"tensorrt.{name}: a class in the fake, a {real['kind']} in TensorRT {api.version}")
            else:
                _compare_class(api, value, real["ref"], problems)
    # Every class the fake defines is exported under a real class name (none hides from the check) ...
    defs = _fake_class_defs()
    exported = {v.__name__ for v in vars(fake).values() if inspect.isclass(v)}
    for name in defs:
        if name not in exported:
            problems.append(f"fake class {name} is not exported as tensorrt.{name}")
    # ... and what it stores on its objects is private or a real member of that class.
    for name, node in defs.items():
        real = api.classes.get(name, {"members": {}})["members"]
        for attr in sorted(_instance_attrs(node)):
            if not attr.startswith("_") and attr not in real:
                problems.append(f"{name}.{attr} (set on fake objects): not in TensorRT {api.version}")
    assert not problems, "\n".join(problems)


def test_fake_comparison_catches_invented_api(apis):
    """The comparison itself works: a fake with an invented method, enum member and wrong value fails."""
    api = apis["11.4"]
    fake = make_fake_tensorrt("11.4.0.106")
    problems = []
    fake.Builder.build_engine = lambda self, network, config: None  # removed in TensorRT 10
    _compare_class(api, fake.Builder, "Builder", problems)
    _compare_class(api, enum.IntEnum("BuilderFlag", {"FP16": 0, "REFIT": 5}), "BuilderFlag", problems)
    assert problems[0] == "Builder.build_engine: not in TensorRT 11.4.0.106"
    # An IntEnum is an int: arithmetic, falsy 0, a class one iterates, none of which the pybind enum has
    # (BuilderFlag's values are ordered in TensorRT too: __lt__ is no problem).
    assert problems[1].startswith("BuilderFlag: the fake's objects support __add__, __and__, __bool__, ")
    assert "__lshift__" in problems[1] and "__lt__" not in problems[1] and "__int__" not in problems[1]
    assert problems[2] == ("BuilderFlag: the fake's class object supports __contains__, __getitem__, __iter__, "
                           "__len__, __reversed__; TensorRT 11.4.0.106's does not")
    assert problems[3:] == ["BuilderFlag.FP16 = 0 in the fake; TensorRT 11.4.0.106: no such member",
                            "BuilderFlag.REFIT = 5 in the fake; TensorRT 11.4.0.106: 4"]


# --------------------------------------------------------------------------- what the fake returns, against TensorRT

def _tiny_onnx(path: Path) -> Path:
    """Conv + Relu + pooling + Gemm with a dynamic batch: enough for a build, a run and a parser error."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(np.zeros(5, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="/act/Relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/GlobalAveragePool"),
             helper.make_node("Flatten", ["p"], ["f"], name="/flat/Flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="/fc/Gemm", transB=1)]
    g = helper.make_graph(nodes, "tiny",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _record_returns(fake) -> List[tuple]:
    """Wrap every public method and property of the fake's classes: [(class, member, value returned)]."""
    seen: List[tuple] = []

    def wrap(owner, name, fn):
        def recorded(*args, **kwargs):
            value = fn(*args, **kwargs)
            seen.append((owner, name, value))
            return value
        return recorded

    for cls in {v for v in vars(fake).values() if inspect.isclass(v) and not issubclass(v, enum.Enum)}:
        for name, attr in list(vars(cls).items()):
            if name.startswith("_"):
                continue
            if inspect.isfunction(attr):
                setattr(cls, name, wrap(cls.__name__, name, attr))
            elif isinstance(attr, property):
                setattr(cls, name, property(wrap(cls.__name__, name, attr.fget), attr.fset))
    return seen


def _exercise_fake(fake, tmp_path: Path, monkeypatch) -> None:
    """lowformer's build, run and profiling through the fake, then the members lowformer does not call."""
    import numpy as np
    import torch

    from lowformer.core.errors import LowformerError
    from lowformer.engines import tensorrt as trt_layer

    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (8, 6))
    monkeypatch.setattr(trt_layer.TensorRTRunner, "io_factory", CpuIO)
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    cache = tmp_path / "trt.cache"
    for _ in range(2):  # the second build starts from the first one's timing cache
        entry = trt_layer.build_engine(onnx_path, min_batch=1, opt_batch=2, max_batch=4, timing_cache=cache)
    runner = trt_layer.TensorRTRunner.from_file(str(tmp_path / "model.engine"), entry=entry)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert runner.run(x).shape == (2, 5)
    assert runner.profile_layers(x, iterations=1)
    fake._unsupported_ops = {"Relu"}
    with pytest.raises(LowformerError, match="node /act/Relu"):
        trt_layer.build_engine(onnx_path)
    # What lowformer does not use, by hand: every member of the fake is exercised.
    logger = fake.Logger()
    logger.log(fake.ILogger.Severity.INFO, "hello")
    builder = fake.Builder(logger)
    parser = fake.OnnxParser(builder.create_network(0), logger)
    assert parser.parse_from_file(str(onnx_path)) is False
    err = parser.get_error(0)
    for method in (err.code, err.desc, err.file, err.line, err.func, err.node, err.node_name, err.node_operator):
        method()
    fake._unsupported_ops = set()
    network = builder.create_network(0)
    assert fake.OnnxParser(network, logger).parse_from_file(str(onnx_path))
    config = builder.create_builder_config()
    config.set_flag(fake.BuilderFlag.DEBUG)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 8, 8))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    plan.nbytes, plan.dtype
    engine = fake.Runtime(logger).deserialize_cuda_engine(plan)  # an IHostMemory is a buffer, as bytes are
    assert engine is not None and engine.get_tensor_profile_shape("input", 0)[2][0] == 2


_SCALARS = {"int": int, "bool": bool, "str": str, "float": float}


def _type_problem(api: ck.Api, value: Any, type_text: Optional[str]) -> Optional[str]:
    """Why `value` is not of the real signature's return type (None: it is); "unchecked" when that type says
    nothing this can check."""
    if value is None:
        return None  # pybind returns None for a null pointer: how TensorRT says a call failed
    t = (type_text or "").strip()
    m = re.fullmatch(r"(?:typing\.)?Optional\[(.+)\]", t)
    if m:
        t = m.group(1).strip()
    m = re.fullmatch(r"(?:typing\.)?(?:list|List)\[(.+)\]", t)
    if m:
        if not isinstance(value, list):
            return f"a {type(value).__name__}, not a list"
        inner = [_type_problem(api, v, m.group(1)) for v in value]
        return next((p for p in inner if p), None)
    if t == "None":
        return f"a {type(value).__name__}, not None"
    if t in _SCALARS:
        ok = isinstance(value, _SCALARS[t]) and not (t == "int" and isinstance(value, bool))
        return None if ok else f"a {type(value).__name__}, not {t}"
    q = api.resolve(t)
    if q is None:
        return "unchecked"
    if not any(c.__name__ == q.split(".")[-1] for c in type(value).__mro__):
        return f"a {type(value).__name__} ({value!r:.60}), not {q}"
    return None


@pytest.mark.parametrize("key", KEYS)
def test_fake_returns_what_the_real_signatures_say(apis, key, tmp_path, monkeypatch):
    """Every value a fake method or property returns has the type of the real one: an IHostMemory where
    TensorRT returns IHostMemory (not bytes), Dims (not tuples), ErrorCode (not str), list[Dims] ..."""
    api = apis[key]
    fake = make_fake_tensorrt(trt_bindings.VERSIONS[key][1])
    seen = _record_returns(fake)
    _exercise_fake(fake, tmp_path, monkeypatch)
    problems, checked = [], set()
    for owner, name, value in seen:
        m = api.member(owner, name)
        if m is None:
            problems.append(f"{owner}.{name}: not in TensorRT {api.version}")  # (the name check says more)
            continue
        types = [m.get("type")] if m["kind"] == "property" else [s.get("returns") for s in m.get("signatures") or []]
        why = [_type_problem(api, value, t) for t in types] or ["no signature"]
        if all(w is not None for w in why):
            problems.append(f"{owner}.{name} returned {why[0]}: TensorRT {api.version} returns "
                            f"{' | '.join(str(t) for t in types)}")
        checked.add((owner, name))
    assert not problems, "\n".join(dict.fromkeys(problems))
    # Every public member of every fake class was exercised, so none returns unchecked ...
    members = {(c.__name__, n) for c in vars(fake).values() if inspect.isclass(c) and not issubclass(c, enum.Enum)
               for n, a in vars(c).items() if not n.startswith("_") and (inspect.isfunction(a) or
                                                                          isinstance(a, property))}
    assert members - checked == set()
    # ... and the objects this is about were really returned.
    returned = {(o, n): type(v).__name__ for o, n, v in seen if v is not None}
    assert returned[("Builder", "build_serialized_network")] == "IHostMemory"
    assert returned[("ITimingCache", "serialize")] == "IHostMemory"
    assert returned[("ICudaEngine", "get_tensor_shape")] == "Dims"
    assert returned[("IExecutionContext", "get_tensor_shape")] == "Dims"
    assert returned[("ParserError", "code")] == "ErrorCode"


VALUE_CLASSES = ("IHostMemory", "Dims", "ErrorCode", "DataType", "TensorIOMode")


@pytest.mark.parametrize("key", KEYS)
def test_fake_values_behave_as_the_real_ones(apis, key):
    """IHostMemory, Dims and the enums support exactly the protocols of the real classes (len(), x[i],
    buffer, int(), ==, hashing; the deprecated no-op context managers aside), and act on them alike."""
    api = apis[key]
    fake = make_fake_tensorrt(trt_bindings.VERSIONS[key][1])
    problems: List[str] = []
    for name in VALUE_CLASSES:
        _compare_protocols(api, getattr(fake, name), name, problems, both_ways=True)
    assert not problems, "\n".join(problems)
    # IHostMemory: a buffer of nbytes bytes, not bytes.
    config = fake.IBuilderConfig()
    blob = config.create_timing_cache(b"").serialize()
    data = bytes(blob)
    assert data.startswith(b"FAKETC") and blob.nbytes == len(data) == memoryview(blob).nbytes
    assert blob.dtype == fake.DataType.UINT8 and blob != data
    for op in (len, list, lambda m: m[0], lambda m: m.startswith(b"F"), lambda m: m + b""):
        with pytest.raises((TypeError, AttributeError)):
            op(blob)
    # Dims: a sequence of ints compared with lists and tuples only, unhashable.
    d = fake.Dims([2, -1, 8])
    assert len(d) == 3 and d[0] == 2 and d[-1] == 8 and list(d) == [2, -1, 8] and -1 in d
    assert d == (2, -1, 8) and d == [2, -1, 8] and d != (2, 3, 8) and str(d) == "(2, -1, 8)"
    assert d[0:2] == (2, -1)
    for op in (hash, lambda x: x == fake.Dims([2, -1, 8]), lambda x: x == None, lambda x: x + (1,)):  # noqa: E711
        with pytest.raises(TypeError):
            op(d)
    with pytest.raises(IndexError):
        d[3]
    # Enums: equal only to themselves, int() but no arithmetic or ordering, classes not iterable.
    code = fake.ErrorCode.UNSUPPORTED_NODE
    assert int(code) == 8 and code != 8 and code == fake.ErrorCode(8) and str(code) == "ErrorCode.UNSUPPORTED_NODE"
    assert code != fake.DataType.INT8 and hash(code) == hash(8)
    for op in (lambda: 1 << code, lambda: code < fake.ErrorCode.SUCCESS, lambda: list(fake.ErrorCode)):
        with pytest.raises(TypeError):
            op()
    real_name = api.classes["ErrorCode"]["members"]["name"]["kind"]
    assert (code.name() if real_name == "method" else code.name) == "UNSUPPORTED_NODE"


def test_fake_value_checks_catch_bytes_tuples_and_strings(apis):
    """The checks above fail for what the fake used to return: bytes, a tuple, a str."""
    api = apis["11.4"]
    assert _type_problem(api, b"FAKETRT1{}", "IHostMemory") == "a bytes (b'FAKETRT1{}'), not IHostMemory"
    assert _type_problem(api, (1, 3, 8, 8), "Dims") == "a tuple ((1, 3, 8, 8)), not Dims"
    assert _type_problem(api, [(1, 3), (2, 3)], "list[Dims]") == "a tuple ((1, 3)), not Dims"
    assert _type_problem(api, "UNSUPPORTED_NODE", "ErrorCode") == "a str ('UNSUPPORTED_NODE'), not ErrorCode"
    assert _type_problem(api, None, "IHostMemory") is None and _type_problem(api, 3, "int") is None
    problems: List[str] = []

    class TupleDims(tuple):
        pass

    TupleDims.__name__ = TupleDims.__qualname__ = "Dims"
    _compare_protocols(api, TupleDims, "Dims", problems, both_ways=True)
    assert problems == ["Dims: the fake's objects support __add__, __contains__, __ge__, __gt__, __hash__, "
                        "__iter__, __le__, __lt__, __mul__, __ne__; TensorRT 11.4.0.106's do not",
                        "Dims: TensorRT 11.4.0.106's objects support __setitem__; the fake's do not"]
    problems = []
    _compare_protocols(api, bytes, "IHostMemory", problems, both_ways=True)
    assert problems and problems[0].startswith("IHostMemory: the fake's objects support __add__, __contains__")


# --------------------------------------------------------------------------- required where CI runs

def test_missing_wheels_skip_here_and_fail_where_required(tmp_path, monkeypatch):
    """Offline, the bindings tests skip (BindingsUnavailable) unless the bindings are required (CI=true or
    LOWFORMER_REQUIRE_TRT_BINDINGS=1), where the same failure is a BindingsRequired, which nothing skips on."""
    monkeypatch.setattr(trt_bindings, "CACHE", tmp_path / "empty-cache")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as offline: pip finds no wheel
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    for var in ("CI", "LOWFORMER_REQUIRE_TRT_BINDINGS", "LOWFORMER_TRT_BINDINGS"):
        monkeypatch.delenv(var, raising=False)
    assert not trt_bindings.required()
    with pytest.raises(trt_bindings.BindingsUnavailable, match="failed"):
        trt_bindings.wheel("11.4")
    for env in ({"CI": "true"}, {"LOWFORMER_REQUIRE_TRT_BINDINGS": "1"}, {"LOWFORMER_TRT_BINDINGS": "required"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert trt_bindings.required()
            with pytest.raises(trt_bindings.BindingsRequired, match="required here") as e:
                trt_bindings.wheel("11.4")
            assert not isinstance(e.value, trt_bindings.BindingsUnavailable)
    monkeypatch.setenv("CI", "false")
    assert not trt_bindings.required()
