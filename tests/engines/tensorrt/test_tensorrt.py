"""TensorRT layer: engine build, runner glue, profile parsing.

TensorRT and CUDA do not exist on this machine, so the build/runner tests run against a fake
`tensorrt` module (tests/fakes/fake_tensorrt.py) injected through sys.modules, and the CUDA I/O helper is
replaced by a CPU one. They check our logic against the fake's behaviour, not TensorRT's; the names
and signatures we call, and the fake's own API, are checked against the real TensorRT 10.3/10.16/11.4
bindings in test_tensorrt_bindings.py (beside this file). The real-hardware check is `test_real_gpu_build_and_run`
(@pytest.mark.gpu).

The profile fixtures in tests/fixtures/trt/ were written by hand from the documented trtexec /
engine-inspector formats, not recorded on a GPU.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import FIXTURES as TEST_FIXTURES, REPO
from fake_tensorrt import CpuIO, make_fake_tensorrt
from helpers import assert_one_line_error, run_cli
from lowformer.engines import tensorrt as trt_layer
from lowformer.engines.tensorrt import trtexec
from lowformer.core.errors import LowformerError, NeedsTargetDevice

FIXTURES = TEST_FIXTURES / "trt"
GPU_NAME, GPU_CC = "Fake GPU 86", (8, 6)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = self.act(self.conv(x))
        y = self.conv2(y) + y
        return self.fc(y.mean((2, 3)))


def _export(path: Path, dynamic: bool = True, batch: int = 1) -> Path:
    torch.manual_seed(0)
    kw = dict(dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}) if dynamic else {}
    torch.onnx.export(TinyNet().eval(), (torch.randn(batch, 3, 16, 16),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"], **kw)
    return path


def _to_fp16(src: Path, dst: Path) -> Path:
    from onnxconverter_common import float16

    onnx.save(float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return dst


def _to_qdq(src: Path, dst: Path) -> Path:
    """A Q/DQ pair on the input: enough for the ONNX to 'carry' INT8 precision."""
    m = onnx.load(str(src))
    g = m.graph
    g.initializer.extend([helper.make_tensor("q_scale", TensorProto.FLOAT, [], [0.05]),
                          helper.make_tensor("q_zero", TensorProto.INT8, [], [0])])
    for n in g.node:
        n.input[:] = ["input_dq" if i == "input" else i for i in n.input]
    g.node.insert(0, helper.make_node("DequantizeLinear", ["input_q", "q_scale", "q_zero"], ["input_dq"], name="in/DQ"))
    g.node.insert(0, helper.make_node("QuantizeLinear", ["input", "q_scale", "q_zero"], ["input_q"], name="in/Q"))
    onnx.save(m, str(dst))
    return dst


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("onnx")
    fp32 = _export(d / "model.onnx")
    _to_fp16(fp32, d / "model_fp16.onnx")
    _to_qdq(fp32, d / "model_int8.onnx")
    _export(d / "model_b2.onnx", dynamic=False, batch=2)
    return d


@pytest.fixture
def work(onnx_dir, tmp_path) -> Path:
    """A fresh copy of the ONNX files per test (builds write engines and caches beside them)."""
    for f in onnx_dir.glob("*.onnx"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a fake `tensorrt` of a given version and pretend one CUDA GPU is visible."""

    def install(version: str = "10.9.0.34", gpu: str = GPU_NAME, **kw):
        mod = make_fake_tensorrt(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", mod)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: gpu)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: GPU_CC)
        monkeypatch.setattr(trt_layer.TensorRTRunner, "io_factory", CpuIO)
        return mod

    return install


def _names(mod, call):
    return [c for c in mod._calls if c[0] == call]


def _expected_logits(x: np.ndarray, classes: int = 10) -> np.ndarray:
    means = x.mean(axis=(2, 3))
    k = np.arange(classes)
    return means[:, k % x.shape[1]] * (k + 1)


# --------------------------------------------------------------------------- no TensorRT here (real environment)

def _real_env_has_trt() -> bool:
    return trt_layer.tensorrt_status()[0]


@pytest.mark.skipif(_real_env_has_trt(), reason="this machine has TensorRT and a GPU")
def test_cli_without_tensorrt_exits_3_with_the_device_command(onnx_dir, tmp_path):
    onnx_path = tmp_path / "model_fp16.onnx"
    onnx_path.write_bytes((onnx_dir / "model_fp16.onnx").read_bytes())
    r = run_cli("build-engine", str(onnx_path), "--fp16", "--max-batch", "8", "--opt-batch", "4")
    assert r.exit_code == 3 and r.stderr.startswith("next step:") and r.stderr.strip().count("\n") == 0  # as export
    for fragment in ("TensorRT is not installed here", "the ONNX is ready: on the target device run: "
                     f"lowformer build-engine {onnx_path} --fp16 --opt-batch 4 --max-batch 8"):
        assert fragment in r.stderr
    assert r.stdout == ""
    assert not list(tmp_path.glob("*.engine")) and not list(tmp_path.glob("*.cache"))


@pytest.mark.skipif(_real_env_has_trt(), reason="this machine has TensorRT and a GPU")
def test_cli_json_without_tensorrt_leaves_stdout_empty(onnx_dir):
    r = run_cli("build-engine", str(onnx_dir / "model.onnx"), "--json")
    assert r.exit_code == 3 and r.stdout == ""


def test_bad_input_is_exit_1_not_3(onnx_dir, tmp_path):
    # Bad input must be reported as such, even on a machine without TensorRT.
    r = run_cli("build-engine", str(tmp_path / "missing.onnx"))
    assert r.exit_code == 1
    assert_one_line_error(r, "no such ONNX file")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    assert_one_line_error(run_cli("build-engine", str(junk)), "cannot read")
    # A real ONNX, so that the batch range itself is what is refused (min > max), before any TensorRT question.
    r = run_cli("build-engine", str(onnx_dir / "model.onnx"), "--min-batch", "4", "--max-batch", "2")
    assert r.exit_code == 1
    assert_one_line_error(r, "batch sizes must satisfy 1 <= min (4) <= opt (4) <= max (2)")


def test_impossible_requests_fail_here_not_on_the_device(onnx_dir):
    # Requests no TensorRT version can build are exit 1 everywhere, not "run this on the device" (exit 3).
    r = run_cli("build-engine", str(onnx_dir / "model.onnx"), "--int8")
    assert r.exit_code == 1
    assert_one_line_error(r, "--int8 needs a Q/DQ INT8 ONNX")
    r = run_cli("build-engine", str(onnx_dir / "model_b2.onnx"), "--max-batch", "8")
    assert r.exit_code == 1
    assert_one_line_error(r, "fixed batch of 2")
    r = run_cli("build-engine", str(onnx_dir / "model.onnx"), "--opt-batch", "4", "--max-batch", "2")
    assert_one_line_error(r, "min (1) <= opt (4) <= max (2)")


@pytest.mark.skipif(_real_env_has_trt(), reason="this machine has TensorRT and a GPU")
def test_runner_without_tensorrt_needs_target_device(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(NeedsTargetDevice):
        trt_layer.TensorRTRunner.from_file(str(engine))


def test_next_step_command():
    assert trt_layer.next_step_command("artifacts/b1-224/model_fp16.onnx", fp16=True) == \
        "lowformer build-engine artifacts/b1-224/model_fp16.onnx --fp16"
    cmd = trt_layer.next_step_command("my dir/model.onnx", int8=True, min_batch=1, opt_batch=8, max_batch=32,
                                      engine_path="out/x.engine", workspace_mb=4096)
    assert cmd == ("lowformer build-engine 'my dir/model.onnx' --out out/x.engine --int8 --opt-batch 8 "
                   "--max-batch 32 --workspace-mb 4096")
    # The default engine path is not repeated.
    assert "--out" not in trt_layer.next_step_command("a/model.onnx", engine_path="a/model.engine")


def test_inspect_onnx_precision(onnx_dir):
    fp32 = trt_layer.inspect_onnx(onnx_dir / "model.onnx")
    assert (fp32.input_name, fp32.input_shape, fp32.precision) == ("input", [None, 3, 16, 16], "fp32")
    assert trt_layer.inspect_onnx(onnx_dir / "model_fp16.onnx").precision == "fp16"
    assert trt_layer.inspect_onnx(onnx_dir / "model_int8.onnx").precision == "int8"
    assert trt_layer.inspect_onnx(onnx_dir / "model_b2.onnx").input_shape == [2, 3, 16, 16]


# --------------------------------------------------------------------------- build (fake TensorRT)

def test_trt10_fp32_onnx_with_fp16_flag_is_weakly_typed(fake_trt, work):
    trt = fake_trt("10.9.0.34")
    entry = trt_layer.build_engine(work / "model.onnx", fp16=True, min_batch=1, opt_batch=4, max_batch=8,
                                   workspace_mb=256)
    assert _names(trt, "create_network") == [("create_network", 0)]
    assert _names(trt, "set_flag") == [("set_flag", "FP16")]
    assert _names(trt, "set_shape") == [("set_shape", "input", (1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))]
    assert _names(trt, "set_memory_pool_limit") == [("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, 256 << 20)]
    assert _names(trt, "profiling_verbosity") == [("profiling_verbosity", trt.ProfilingVerbosity.DETAILED)]
    assert ("parse_from_file", str(work / "model.onnx")) in trt._calls
    engine = work / "model.engine"
    assert engine.is_file()
    from lowformer.models.checkpoints import sha256_file

    assert entry["path"] == str(engine)  # no manifest: the path as given
    assert (entry["format"], entry["precision"], entry["sha256"]) == ("tensorrt", "fp16", sha256_file(str(engine)))
    assert (entry["tensorrt"], entry["gpu"], entry["compute_capability"]) == ("10.9.0.34", GPU_NAME, "8.6")
    b = entry["build"]
    assert (b["min_batch"], b["opt_batch"], b["max_batch"], b["workspace_mb"]) == (1, 4, 8, 256)
    assert (b["strongly_typed"], b["builder_flags"], b["onnx_precision"]) == (False, ["FP16"], "fp32")
    assert entry["input"] == {"name": "input", "shape": [None, 3, 16, 16]}


@pytest.mark.parametrize("version,flag_bit", [("10.9.0.34", 1), ("11.4.0", 0)])
def test_fp16_onnx_is_strongly_typed_without_precision_flags(fake_trt, work, version, flag_bit):
    trt = fake_trt(version)
    entry = trt_layer.build_engine(work / "model_fp16.onnx", fp16=True)
    assert _names(trt, "create_network") == [("create_network", 1 << flag_bit)]
    assert _names(trt, "set_flag") == []
    assert entry["precision"] == "fp16" and entry["build"]["strongly_typed"] is True


def test_trt11_refuses_fp32_onnx_with_fp16(fake_trt, work):
    trt = fake_trt("11.4.0")
    assert not hasattr(trt.BuilderFlag, "FP16")  # as documented for 11.x
    with pytest.raises(LowformerError, match="no FP16 builder flag.*FP16 ONNX"):
        trt_layer.build_engine(work / "model.onnx", fp16=True)
    assert _names(trt, "build_serialized_network") == []
    assert not (work / "model.engine").exists()
    # A plain FP32 build is fine on 11 (strongly typed, FP32).
    entry = trt_layer.build_engine(work / "model.onnx")
    assert entry["precision"] == "fp32" and entry["build"]["strongly_typed"]


@pytest.mark.parametrize("version", ["10.9.0.34", "11.4.0"])
def test_int8_needs_qdq_onnx(fake_trt, work, version):
    trt = fake_trt(version)
    entry = trt_layer.build_engine(work / "model_int8.onnx", int8=True)
    assert entry["precision"] == "int8" and entry["build"]["strongly_typed"] is True
    assert _names(trt, "set_flag") == []
    with pytest.raises(LowformerError, match="Q/DQ INT8 ONNX"):
        trt_layer.build_engine(work / "model.onnx", int8=True)


def test_trt10_weak_typing_on_request(fake_trt, work):
    trt = fake_trt("10.9.0.34")
    entry = trt_layer.build_engine(work / "model_fp16.onnx", strongly_typed=False)
    assert _names(trt, "create_network") == [("create_network", 0)] and _names(trt, "set_flag") == [("set_flag", "FP16")]
    assert entry["precision"] == "fp16"
    fake_trt("11.0.0")
    with pytest.raises(LowformerError, match="strongly typed networks only"):
        trt_layer.build_engine(work / "model_fp16.onnx", strongly_typed=False)


def test_batch_arguments(fake_trt, work):
    fake_trt()
    with pytest.raises(LowformerError, match="min .* <= opt .* <= max"):
        trt_layer.build_engine(work / "model.onnx", min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(LowformerError, match="fixed batch of 2"):
        trt_layer.build_engine(work / "model_b2.onnx", max_batch=8)
    trt = fake_trt()
    entry = trt_layer.build_engine(work / "model_b2.onnx")  # static shape: no optimization profile
    assert _names(trt, "set_shape") == [] and _names(trt, "add_optimization_profile") == []
    assert entry["input"]["shape"] == [2, 3, 16, 16] and entry["build"]["max_batch"] == 2


def test_timing_cache_is_reused_across_builds(fake_trt, work):
    trt = fake_trt()
    cache = work / "shared.cache"
    e1 = trt_layer.build_engine(work / "model.onnx", timing_cache=cache)
    assert e1["build"]["timing_cache_state"] == "new" and cache.is_file()
    saved = cache.read_bytes()
    e2 = trt_layer.build_engine(work / "model_fp16.onnx", timing_cache=cache)
    assert e2["build"]["timing_cache_state"] == "reused"
    created = [c[1] for c in _names(trt, "create_timing_cache")]
    assert created == [b"", saved]  # the second build started from the first one's cache
    assert [c[2] for c in _names(trt, "set_timing_cache")] == [False, False]
    # Default: beside the engine.
    trt_layer.build_engine(work / "model_int8.onnx", int8=True)
    assert (work / trt_layer.DEFAULT_TIMING_CACHE).is_file()


def test_unusable_timing_cache_is_replaced(fake_trt, work):
    cache = work / "old.cache"
    cache.write_bytes(b"garbage")
    fake_trt()
    assert trt_layer.build_engine(work / "model.onnx", timing_cache=cache)["build"]["timing_cache_state"].startswith(
        "replaced")
    # A cache from another TensorRT version is not forced onto this one.
    fake_trt("10.10.0.31")
    entry = trt_layer.build_engine(work / "model.onnx", timing_cache=cache)
    assert entry["build"]["timing_cache_state"].startswith("replaced")
    assert json.loads(cache.read_bytes()[6:])["version"] == "10.10.0.31"


def test_parser_errors_name_each_node(fake_trt, work):
    fake_trt(unsupported_ops={"Relu", "Add"})
    with pytest.raises(LowformerError) as e:
        trt_layer.build_engine(work / "model.onnx")
    msg = str(e.value)
    nodes = [n for n in onnx.load(str(work / "model.onnx")).graph.node if n.op_type in ("Relu", "Add")]
    assert len(nodes) == 2 and "\n" not in msg
    assert msg.startswith("TensorRT cannot parse model.onnx: ")
    for n in nodes:
        assert f"node {n.name} ({n.op_type}): No importer registered for op: {n.op_type}" in msg
    assert not (work / "model.engine").exists()


def test_build_failure_is_one_clear_error(fake_trt, work):
    fake_trt(build_error="Error Code 2: OutOfMemory (Requested size was 4294967296 bytes.)\nmore detail")
    with pytest.raises(LowformerError) as e:
        trt_layer.build_engine(work / "model.onnx")
    assert str(e.value) == ("TensorRT could not build model.onnx: Error Code 2: OutOfMemory "
                            "(Requested size was 4294967296 bytes.)")
    assert not (work / "model.engine").exists() and not (work / trt_layer.DEFAULT_TIMING_CACHE).exists()


def test_manifest_entry_is_upserted(fake_trt, work):
    from helpers import manifest_dict as load_manifest
    from lowformer.artifacts import ArtifactEntry, Manifest

    m = Manifest.new({"name": "tiny", "timm_name": "tiny", "display": "Tiny", "num_classes": 10},
                     {"path": None, "sha256": "random-init"},
                     {"name": "input", "shape": [None, 3, 16, 16], "dtype": "float32", "output": "logits"}, {})
    m.artifacts.append(ArtifactEntry("model_fp16.onnx", "onnx", "fp16"))
    m.save(work)
    fake_trt()
    entry = trt_layer.build_engine(work / "model_fp16.onnx", fp16=True)
    entry2 = trt_layer.build_engine(work / "model_fp16.onnx", fp16=True)  # a rebuild replaces, not appends
    arts = load_manifest(work)["artifacts"]
    assert [a["path"] for a in arts] == ["model_fp16.onnx", "model_fp16.engine"]
    assert arts[1] == json.loads(json.dumps(entry2)) and entry["path"] == "model_fp16.engine"
    assert arts[1]["source"]["path"] == "model_fp16.onnx"


def test_cli_build_engine_json(fake_trt, work):
    fake_trt()
    r = run_cli("build-engine", str(work / "model.onnx"), "--fp16", "--max-batch", "4", "--out",
                str(work / "e" / "x.engine"), "--json")
    assert r.exit_code == 0, r.stderr
    entry = json.loads(r.stdout)
    assert entry["path"].endswith("x.engine") and entry["build"]["max_batch"] == 4 and entry["precision"] == "fp16"
    assert (work / "e" / "x.engine").is_file()
    r = run_cli("build-engine", str(work / "model.onnx"), "--out", str(work / "x.onnx"))
    assert_one_line_error(r, "must end in .engine")


# --------------------------------------------------------------------------- runner (fake TensorRT, CPU buffers)

def _built(fake_trt, work, version="10.9.0.34", **kw):
    trt = fake_trt(version)
    entry = trt_layer.build_engine(work / "model.onnx", min_batch=1, opt_batch=2, max_batch=4, **kw)
    return trt, work / "model.engine", entry


def test_runner_runs_numpy_and_torch(fake_trt, work):
    trt, engine, entry = _built(fake_trt, work)
    runner = trt_layer.TensorRTRunner.from_file(str(engine), entry=entry)
    assert runner.native == "torch" and runner.input_spec.shape == (None, 3, 16, 16)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    out = runner.run(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 10)
    np.testing.assert_allclose(out, _expected_logits(x), rtol=1e-5, atol=1e-6)
    tout = runner.run(torch.from_numpy(x[:1]))
    assert isinstance(tout, torch.Tensor) and tout.shape == (1, 10) and tout.device.type == "cpu"
    assert _names(trt, "execute_async_v3")[-1] == ("execute_async_v3", 1234)  # the I/O helper's stream
    with pytest.raises(LowformerError, match="outside the engine's range 1..4"):
        runner.run(np.zeros((5, 3, 16, 16), np.float32))
    d = runner.describe()
    assert d["backend"] == "tensorrt" and d["tensorrt"] == "10.9.0.34" and d["batch_range"] == [1, 4]


def test_runner_fp16_io_engine(fake_trt, work):
    # An FP16 ONNX exported without keep_io_types has HALF I/O: the runner casts in and out.
    from onnxconverter_common import float16

    onnx.save(float16.convert_float_to_float16(onnx.load(str(work / "model.onnx"))), str(work / "half.onnx"))
    fake_trt()
    trt_layer.build_engine(work / "half.onnx", max_batch=2)
    runner = trt_layer.TensorRTRunner.from_file(str(work / "half.engine"))
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out = runner.run(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _expected_logits(x.astype(np.float16).astype(np.float32)), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("field,value", [("tensorrt", "10.3.0.26"), ("gpu", "NVIDIA Jetson Orin")])
def test_runner_refuses_engine_from_other_version_or_gpu(fake_trt, work, field, value):
    trt, engine, entry = _built(fake_trt, work)
    with pytest.raises(LowformerError) as e:
        trt_layer.TensorRTRunner.from_file(str(engine), entry={**entry, field: value})
    msg = str(e.value)
    assert "built with another TensorRT version or GPU" in msg and value in msg and "\n" not in msg
    assert f"lowformer build-engine {work / 'model.onnx'}" in msg
    assert _names(trt, "deserialize_cuda_engine") == []  # refused before TensorRT is asked


def test_runner_refuses_engine_that_does_not_deserialize(fake_trt, work):
    _, engine, entry = _built(fake_trt, work)
    fake_trt("10.10.0.31")  # the device was upgraded; no manifest entry to compare with
    with pytest.raises(LowformerError, match="cannot load model.engine: it was built with another TensorRT version"):
        trt_layer.TensorRTRunner.from_file(str(engine))
    garbage = work / "garbage.engine"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(LowformerError, match="cannot load garbage.engine"):
        trt_layer.TensorRTRunner.from_file(str(garbage))


def test_runner_through_engines_load(fake_trt, work):
    from lowformer.engines import load
    from lowformer.artifacts import Manifest

    Manifest.new({"name": "tiny", "timm_name": "tiny", "display": "Tiny", "num_classes": 10},
                 {"path": None, "sha256": "random-init"},
                 {"name": "input", "shape": [None, 3, 16, 16], "dtype": "float32"}, {}).save(work)
    _built(fake_trt, work)
    runner = load(str(work / "model.engine"))  # default device "cpu": TensorRT still runs on the GPU
    assert isinstance(runner, trt_layer.TensorRTRunner) and runner.precision == "fp32"
    assert any("replaced by 'cuda'" in w for w in runner.warnings)


def test_profile_layers_reports_fused_onnx_nodes(fake_trt, work):
    trt, engine, entry = _built(fake_trt, work)
    runner = trt_layer.TensorRTRunner.from_file(str(engine), entry=entry)
    timings = runner.profile_layers(np.zeros((2, 3, 16, 16), np.float32), iterations=5)
    nodes = [n.name for n in onnx.load(str(work / "model.onnx")).graph.node]
    conv = next(n for n in nodes if n.endswith("conv/Conv"))
    relu = next(n for n in nodes if n.endswith("act/Relu"))
    fused = next(t for t in timings if t.name == f"{conv} + {relu}")
    assert fused.fused_from == [conv, relu] and fused.op == "CaskConvolution"
    assert all(t.calls == 5 for t in timings)  # the warm-up run is not counted
    covered = [n for t in timings for n in t.fused_from]
    assert sorted(covered) == sorted(n for n in nodes if not n.startswith("/Constant"))
    assert _names(trt, "get_engine_information")[0][1] == trt.LayerInformationFormat.JSON


# --------------------------------------------------------------------------- profile JSON parsing (fixtures)

def test_parse_engine_layers_fixture():
    layers = trt_layer.parse_engine_layers(FIXTURES / "layer_info.json")
    assert len(layers) == 5
    assert layers["Reformatting CopyNode for Input Tensor 0 to /input_stem/input_stem.0/conv/Conv + "
                  "/input_stem/input_stem.0/act/Relu"] == []
    assert layers["/input_stem/input_stem.0/conv/Conv + /input_stem/input_stem.0/act/Relu"] == [
        "/input_stem/input_stem.0/conv/Conv", "/input_stem/input_stem.0/act/Relu"]
    # A Myelin layer whose name is not the node list: the Metadata says what it covers.
    assert layers["/stages/stages.2/stages.2.1/attn/MatMul_myl0_3"] == [
        "/stages/stages.2/stages.2.1/attn/MatMul", "/stages/stages.2/stages.2.1/attn/Softmax",
        "/stages/stages.2/stages.2.1/attn/MatMul_1"]
    # Local-function call stack after " | " is not part of the node name.
    assert layers["/head/classifier/Gemm"] == ["/head/classifier/Gemm"]


def test_parse_layer_times_fixture():
    timings = trtexec.parse_layer_times(FIXTURES / "profile.json")
    assert len(timings) == 5 and all(t.calls == 10 for t in timings)
    stem = timings[1]
    assert stem.total_ms == pytest.approx(1.873)
    assert stem.fused_from == ["/input_stem/input_stem.0/conv/Conv", "/input_stem/input_stem.0/act/Relu"]
    assert timings[0].fused_from == []  # reformatting layers come from TensorRT, not the ONNX


def test_layer_timings_joins_profile_and_inspector():
    timings = trtexec.layer_timings(FIXTURES / "profile.json", FIXTURES / "layer_info.json")
    by = {t.name: t for t in timings}
    attn = by["/stages/stages.2/stages.2.1/attn/MatMul_myl0_3"]
    assert attn.op == "kgen" and len(attn.fused_from) == 3 and attn.total_ms == pytest.approx(2.448)
    assert sum(t.total_ms for t in timings) == pytest.approx(0.412 + 1.873 + 0.931 + 2.448 + 0.265)


def test_parse_names_only_and_trt11_layouts():
    # LAYER_NAMES_ONLY engines list plain strings; fused names also hold weight names.
    names_only = {"Layers": ["conv1.weight + QuantizeLinear_7 + Conv_9", "Reformatting CopyNode for Input Tensor 0 "
                             "to MaxPool_12", "MaxPool_12 [profile 1]"], "Bindings": ["input", "output"]}
    assert trt_layer.parse_engine_layers(names_only, onnx_nodes={"QuantizeLinear_7", "Conv_9", "MaxPool_12"}) == {
        "conv1.weight + QuantizeLinear_7 + Conv_9": ["QuantizeLinear_7", "Conv_9"],
        "Reformatting CopyNode for Input Tensor 0 to MaxPool_12": [],
        "MaxPool_12 [profile 1]": ["MaxPool_12"]}
    # TensorRT 11: "I/O Tensors" objects instead of "Bindings"; \x1f separators also occur.
    trt11 = json.dumps({"Layers": [{"Name": "fused", "LayerType": "CaskConvolution",
                                    "Metadata": "[ONNX Layer: /a/Conv]\x1f[ONNX Layer: /a/Relu]"}],
                        "I/O Tensors": [{"Name": "input", "IOMode": "Input"}]})
    assert trt_layer.parse_engine_layers(trt11) == {"fused": ["/a/Conv", "/a/Relu"]}


def test_parse_errors_are_lowformer_errors(tmp_path):
    with pytest.raises(LowformerError, match="Layers"):
        trt_layer.parse_engine_layers({"Bindings": []})
    with pytest.raises(LowformerError, match="cannot read"):
        trtexec.parse_layer_times(tmp_path / "missing.json")
    with pytest.raises(LowformerError, match="not TensorRT JSON"):
        trtexec.parse_layer_times("[{broken")


# --------------------------------------------------------------------------- real hardware

@pytest.mark.gpu
def test_real_gpu_build_and_run(onnx_dir, tmp_path):
    ok, reason = trt_layer.tensorrt_status()
    if not ok:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {reason}")
    import onnxruntime as ort

    src = tmp_path / "model.onnx"
    src.write_bytes((onnx_dir / "model.onnx").read_bytes())
    entry = trt_layer.build_engine(src, min_batch=1, opt_batch=2, max_batch=4)
    runner = trt_layer.TensorRTRunner.from_file(str(tmp_path / "model.engine"), entry=entry)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(runner.run(x), ref, rtol=1e-3, atol=1e-3)
    timings = runner.profile_layers(x, iterations=2)
    assert timings and all(t.calls == 2 for t in timings)  # every layer, each profiled run (not the warm-up)
    assert sum(t.total_ms for t in timings) > 0
    nodes = [n.name for n in onnx.load(str(src)).graph.node]
    conv = next(n for n in nodes if n.endswith("conv/Conv"))
    assert any(conv in t.fused_from for t in timings)  # DETAILED verbosity names the ONNX nodes of each layer


# --------------------------------------------------------------------------- benchmarks/gpu_check.py without a GPU

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_gpu_check_without_gpu_ends_at_once_with_exit_3(tmp_path):
    import os
    import subprocess
    import time

    out = tmp_path / "gpu-check-out"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                        "--out", str(out)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 3, r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no NVIDIA GPU here") and "nothing was checked" in lines[0]
    assert not out.exists()  # no figure, no file
    assert time.monotonic() - t0 < 60


@pytest.mark.skipif(_real_env_has_trt(), reason="this machine has TensorRT and a GPU")
def test_next_step_never_suggests_fp16_on_an_fp32_onnx(onnx_dir, tmp_path):
    """TensorRT 11 refuses --fp16 on an FP32 ONNX: point at model_fp16.onnx, or say so when there is none."""
    r = run_cli("build-engine", str(onnx_dir / "model.onnx"), "--fp16")
    assert r.exit_code == 3 and f"lowformer build-engine {onnx_dir / 'model_fp16.onnx'} --fp16" in r.stderr
    alone = tmp_path / "model.onnx"
    alone.write_bytes((onnx_dir / "model.onnx").read_bytes())
    r = run_cli("build-engine", str(alone), "--fp16")
    assert r.exit_code == 3 and "TensorRT 10 only" in r.stderr
