"""lowformer's TensorRT code and the fake `tensorrt` checked against the REAL TensorRT Python API.

The real bindings of TensorRT 10.3 (JetPack 6), 10.16 and 11.4 come from PyPI's bindings wheels and are
imported without TensorRT or a GPU against stub libraries (tests/trt_bindings.py); their classes,
members, enum values and pybind signatures are dumped to JSON. tests/trt_api_check.py reads the
TensorRT names lowformer/engines/ uses from its AST and checks each one against each version, with the
version guards the code itself writes (`if major < 11:`). What this cannot check: behaviour that
needs libnvinfer (parsing, building, running): that is `pytest -m gpu` on a machine with TensorRT.
"""
from __future__ import annotations

import ast
import enum
import inspect
import json
import textwrap
from pathlib import Path

import pytest

import trt_api_check as ck
import trt_bindings
from fake_tensorrt import make_fake_tensorrt

REPO = Path(__file__).resolve().parents[1]
ENGINES = REPO / "lowformer" / "engines"
KEYS = list(trt_bindings.VERSIONS)


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
    tree = ast.parse((REPO / "tests" / "fake_tensorrt.py").read_text())
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


def _compare_class(api: ck.Api, fake_cls, qual: str, problems):
    real = api.classes.get(qual)
    if real is None:
        problems.append(f"class {qual}: not in TensorRT {api.version}")
        return
    if issubclass(fake_cls, enum.Enum):
        if not real["enum"]:
            problems.append(f"{qual}: an enum in the fake, not in TensorRT {api.version}")
            return
        for m in fake_cls:
            if real["values"].get(m.name) != int(m.value):
                problems.append(f"{qual}.{m.name} = {int(m.value)} in the fake; TensorRT {api.version}: "
                                f"{real['values'].get(m.name, 'no such member')}")
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
    assert problems == ["Builder.build_engine: not in TensorRT 11.4.0.106",
                        "BuilderFlag.FP16 = 0 in the fake; TensorRT 11.4.0.106: no such member",
                        "BuilderFlag.REFIT = 5 in the fake; TensorRT 11.4.0.106: 4"]
