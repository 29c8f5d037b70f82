"""OpenVINO: IR export (FP32, FP16 weights, INT8 by NNCF or Q/DQ), the runner, BF16, one-pass
validation, per-layer profile with runtime precisions, bench (also in spawned jobs), bad input."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_ends_in_error, assert_one_line_error, run_cli
from lowformer.core.errors import LowformerError
from lowformer.engines.openvino import runner as ov_engine

TINY = "timm:test_efficientnet"  # ~0.1 M params: a real network, milliseconds per image at 32x32
SIZE = 32

needs_openvino = pytest.mark.skipif(not ov_engine.available(), reason="openvino is not installed "
                                    "(pip install 'lowformer[openvino]')")


def _nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def _max_abs_int8_constant(xml: Path) -> int:
    """The largest |value| among an IR's int8 constants (NNCF stores its quantized weights so)."""
    import openvino as ov

    consts = [op.get_data() for op in ov.Core().read_model(str(xml)).get_ordered_ops()
              if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i8]
    assert consts, "no int8 constants in the IR"
    return max(int(np.abs(c.astype(np.int32)).max()) for c in consts)


def _has(cap: str) -> bool:
    return ov_engine.available() and cap in ov_engine.cpu_capabilities()


needs_bf16 = pytest.mark.skipif(not _has("BF16"), reason="this CPU has no native BF16 (AVX-512-BF16 / AMX)")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from lowformer.data.synthetic import generate_images

    return generate_images(tmp_path_factory.mktemp("ov-images") / "imgs", count=24, size=48, classes=4)


@pytest.fixture(scope="module")
def ov_export(tmp_path_factory, images) -> Path:
    """model.onnx, model_int8.onnx (the openvino target's s8 Q/DQ) and their IRs: model.xml,
    model_fp16.xml, model_int8.xml, of the tiny model (the Q/DQ quantizer, asked for: unasked, a CPU
    without VNNI gets NNCF's, test_quantizer_follows_the_weight_bits)."""
    if not ov_engine.available():
        pytest.skip("openvino is not installed (pip install 'lowformer[openvino]')")
    from lowformer.export.pipeline import export_model

    out = tmp_path_factory.mktemp("ov") / "export"
    result = export_model(TINY, to=("openvino",), int8=True, image_size=SIZE, out=str(out),
                          calib=dict(calib_data=str(images), calib_size=16, target="openvino", quantizer="qdq"))
    assert not result.failed, result.to_dict()
    return out


@pytest.fixture()
def ov_folder(ov_export, tmp_path) -> Path:
    """A private copy (validation writes into the manifest; some tests damage files)."""
    return Path(shutil.copytree(ov_export, tmp_path / "export"))


def _manifest(folder):
    from lowformer.artifacts import Manifest

    return Manifest.load(folder)


# --- export ------------------------------------------------------------------------------------


def test_export_writes_checked_ir_pairs_with_weights_and_isa(ov_export):
    from lowformer.core.files import sha256_file
    from lowformer.core.machine import cpu_isa

    m = _manifest(ov_export)
    arts = {a.path: a for a in m.artifacts}
    assert set(arts) == {"model.onnx", "model_int8.onnx", "model.xml", "model_fp16.xml", "model_int8.xml"}
    for name, precision in (("model.xml", "fp32"), ("model_fp16.xml", "fp16"), ("model_int8.xml", "int8")):
        a = arts[name]
        assert a.format == "openvino" and a.precision == precision and a.parity.passed
        w = a.fact("weights")
        bin_path = ov_export / w["path"]
        assert w["path"] == name.replace(".xml", ".bin") and bin_path.stat().st_size == w["size"]
        assert sha256_file(bin_path) == w["sha256"] and a.sha256 == sha256_file(ov_export / name)
        assert a.fact("machine")["isa"] == cpu_isa()
    assert arts["model.xml"].parity.rel_l2 < 1e-4 and arts["model_fp16.xml"].fact("compressed_weights") == "fp16"
    int8 = arts["model_int8.xml"]
    assert int8.int8["quantizer"] == "qdq" and int8.int8["target"] == "openvino" and int8.fact("ops")["FakeQuantize"]
    assert int8.int8["qdq"]["activation_zero_points"] == [0]  # symmetric s8: no zero-point subtraction
    assert int8.calibration["count"] == 16 and len(int8.calibration["files"]) == 16  # validate holds them out
    assert m.tools["cpu_isa"] == cpu_isa() and "openvino" in m.tools
    leftovers = [p.name for p in ov_export.iterdir() if p.name.startswith(".") and p.name != ".manifest.lock"
                 and not p.name.startswith(".verified")]
    assert not leftovers, leftovers


@needs_openvino
def test_qdq_openvino_target_is_symmetric_s8_and_converts(ov_export, images, tmp_path):
    from lowformer.calibrate.qdq import qdq_summary
    from lowformer.calibrate.config import CalibrationConfig
    from lowformer.calibrate.quantize import quantize_onnx
    from lowformer.data.preprocess import Preprocessing
    from lowformer.engines import load
    from lowformer.engines.openvino.writer import convert_onnx

    m = _manifest(ov_export)
    dst = tmp_path / "model_int8.onnx"
    facts = quantize_onnx(ov_export / "model.onnx", dst, Preprocessing.from_dict(m.preprocessing),
                          CalibrationConfig(calib_data=str(images), calib_size=16, target="openvino"), "x",
                          cache_dir=tmp_path / "cache")
    q = qdq_summary(dst)
    assert facts["int8"]["target"] == "openvino" and q["activation_dtypes"] == ["int8"]
    assert q["activation_zero_points"] == [0] and q["weight_dtypes"] == ["int8"]
    xml = tmp_path / "model_int8.xml"
    ir = convert_onnx(dst, xml)
    assert ir["ops"].get("FakeQuantize", 0) > 0 and (tmp_path / "model_int8.bin").is_file()
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with load(str(dst), runtime="openvino") as a, load(str(xml)) as b:
        np.testing.assert_allclose(a.run(x), b.run(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("flags, bits", [(["avx", "avx2", "fma"], 7), (["avx2", "avx512f", "avx512_vnni"], 8),
                                         (["avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_int8"], 8)])
def test_quantizer_follows_the_weight_bits(flags, bits, monkeypatch):
    """Unasked, an openvino-target IR with 7-bit weights (a CPU without VNNI, or --weight-bits 7) is
    NNCF's (its overflow fix); the Q/DQ quantizer otherwise, and whenever asked or no IR is written."""
    import platform

    from lowformer.core import machine
    from lowformer.calibrate import nncf as ovx

    monkeypatch.setattr(machine, "cpu_flags", lambda: list(flags))  # the CPU we are not on
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(ovx, "_nncf_importable", lambda: True)
    auto = "nncf" if bits == 7 else "qdq"
    assert ovx.resolve_quantizer(None, "openvino")[0] == auto
    assert ovx.resolve_quantizer(None, "openvino", weight_bits="7")[0] == "nncf"
    assert ovx.resolve_quantizer(None, "openvino", weight_bits="8")[0] == "qdq"
    assert ovx.resolve_quantizer(None, "openvino", to_ir=False)[0] == "qdq"  # a Q/DQ ONNX is the product
    assert ovx.resolve_quantizer(None, "openvino", auto_exclude=True)[0] == "qdq"  # needs the Q/DQ search
    assert ovx.resolve_quantizer("qdq", "openvino") == ("qdq", "--quantizer")
    assert ovx.resolve_quantizer(None, "cpu")[0] == "qdq"
    monkeypatch.setattr(ovx, "_nncf_importable", lambda: False)
    assert ovx.resolve_quantizer(None, "openvino", weight_bits="7")[0] == "qdq"


def test_export_refuses_nncf_without_openvino_target_before_any_work(tmp_path, images):
    r = run_cli("export", TINY, "--image-size", str(SIZE), "--to", "onnx", "--int8", "--target", "cpu",
                "--quantizer", "nncf", "--calib-data", str(images), "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "nncf")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@needs_openvino
def test_save_ir_failure_leaves_nothing(tmp_path, monkeypatch, ov_export):
    from lowformer.engines.openvino import writer as ov_export_mod

    def broken(*a, **k):
        raise RuntimeError("disk full\nmore")
    monkeypatch.setattr(ov_engine.openvino_module(), "save_model", broken)
    with pytest.raises(LowformerError, match="cannot write"):
        ov_export_mod.convert_onnx(ov_export / "model.onnx", tmp_path / "model.xml")
    assert list(tmp_path.iterdir()) == []


@needs_openvino
def test_exclude_globs_become_nncf_ignored_names(ov_export):
    from lowformer.engines.openvino.writer import ignored_names

    model = ov_engine.read_model(str(ov_export / "model.onnx"))
    head = ignored_names(model, ["conv_head"])
    assert head and all("conv_head" in n for n in head)
    with pytest.raises(LowformerError, match="matches no module"):
        ignored_names(model, ["no_such_module"])


# --- the runner ---------------------------------------------------------------------------------


@needs_openvino
def test_runner_interface_matches_onnxruntime_at_any_batch(ov_export):
    import torch

    from lowformer.engines import load

    x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    with load(str(ov_export / "model.onnx")) as ort_runner, load(str(ov_export / "model.xml")) as r:
        assert (r.backend, r.precision, r.provider, r.variant) == ("openvino", "fp32", "cpu/f32", None)
        assert r.input_spec.shape[0] is None and r.input_spec.image_size == SIZE
        ref = ort_runner.run(x)
        np.testing.assert_allclose(r.run(x), ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(r.run(x[:1]), ref[:1], rtol=1e-4, atol=1e-4)  # another static batch
        out = r.run(torch.from_numpy(x))
        assert isinstance(out, torch.Tensor) and out.shape == (3, ref.shape[1])
        d = r.describe()
        assert d["inference_precision"] == "f32" and d["format"] == "openvino" and d["isa"]
        assert r.warnings == []


@needs_bf16
def test_onnx_through_openvino_in_bf16(ov_export):
    from lowformer.compare import compare_logits
    from lowformer.engines import load

    x = np.random.default_rng(2).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    with load(str(ov_export / "model.onnx"), runtime="openvino", inference_precision="bf16") as r, \
            load(str(ov_export / "model.onnx")) as ref:
        assert (r.precision, r.variant, r.ran_precision, r.format) == ("bf16", "openvino/bf16", "bf16", "onnx")
        assert compare_logits(ref.run(x), r.run(x)).cosine > 0.99


@needs_openvino
def test_cpu_without_bf16_refuses_in_one_line(ov_folder, monkeypatch):
    monkeypatch.setattr(ov_engine, "cpu_capabilities", lambda: ["FP32", "INT8"])
    r = run_cli("bench", str(ov_folder / "model.xml"), "--precision", "bf16", "--iterations", "2")
    assert_one_line_error(r, "bf16 needs a CPU with")


@needs_openvino
def test_bad_runtime_and_precision_options_are_one_line(ov_folder):
    assert_one_line_error(run_cli("bench", str(ov_folder / "model.xml"), "--precision", "fp8"), "unknown precision")
    assert_one_line_error(run_cli("bench", str(ov_folder / "model.onnx"), "--runtime", "tvm"), "unknown runtime")
    # a precision that no runner would use is refused, not ignored
    assert_one_line_error(run_cli("bench", str(ov_folder / "model.onnx"), "--precision", "bf16"),
                          "setting of the OpenVINO runtime")
    assert_one_line_error(run_cli("bench", str(ov_folder / "model.xml"), "--runtime", "onnxruntime"),
                          "runs none of the artifacts")


@needs_openvino
def test_missing_or_truncated_bin_is_one_line(ov_folder, tmp_path):
    xml = ov_folder / "model.xml"
    (ov_folder / "model.bin").unlink()
    assert_one_line_error(run_cli("bench", str(xml), "--iterations", "2"), "model.bin is missing")
    shutil.copy(ov_folder / "model_fp16.bin", tmp_path / "x.bin")
    with open(ov_folder / "model_fp16.bin", "r+b") as f:
        f.truncate(100)
    assert_one_line_error(run_cli("bench", str(ov_folder / "model_fp16.xml"), "--iterations", "2"),
                          "model_fp16.bin", "truncated")
    # a bare IR (no manifest to compare with): OpenVINO's own check, in one line
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(ov_folder / "model_fp16.xml", bare / "m.xml")
    shutil.copy(ov_folder / "model_fp16.bin", bare / "m.bin")
    assert_one_line_error(run_cli("bench", str(bare / "m.xml"), "--iterations", "2"), "truncated")


def test_openvino_absent_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    out = tmp_path / "o"
    r = run_cli("export", TINY, "--image-size", str(SIZE), "--to", "openvino", "--out", str(out))
    assert_one_line_error(r, "OpenVINO is not installed", "pip install")
    assert not out.exists() or not any(out.iterdir())
    assert not ov_engine.available()
    xml = tmp_path / "m.xml"  # a bench of an IR says so before any work too
    xml.write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"")
    assert_one_line_error(run_cli("bench", str(xml), "--iterations", "1"), "OpenVINO is not installed")
    with pytest.raises(LowformerError, match="not installed"):
        ov_engine.openvino_module()


# --- validate, profile, bench -------------------------------------------------------------------


@needs_openvino
def test_validate_scores_every_runtime_and_precision_in_one_pass(ov_folder, images, tmp_path):
    from lowformer.validate import DEFAULT_GATES, validate

    precisions = ("f32", "bf16") if _has("BF16") else ("f32",)
    report = tmp_path / "val.json"
    result = validate([str(ov_folder)], images, runtimes=("onnxruntime", "openvino"), precisions=precisions,
                      report=report, workers=0)
    names = [a.name for a in result.artifacts]
    assert "model.onnx" in names and "model.onnx (openvino/f32)" in names and "model_int8.xml" in names
    assert len(names) == 2 + 5 * len(precisions)  # ORT: the two ONNX; OpenVINO: them and the 3 IRs, per precision
    assert result.data["held_out_calibration_images"] == 16  # the INT8 calibration images are held out
    doc = json.loads(report.read_text())
    assert doc["machine"]["isa"] and doc["machine"]["cpu_flags"]
    by_name = {a["name"]: a for a in doc["artifacts"]}
    assert by_name["model.onnx (openvino/f32)"]["runtime"] == "openvino"
    assert by_name["model_int8.xml"]["inference_precision"] == "f32"
    assert DEFAULT_GATES["bf16"] == (0.2, 0.995)
    if "bf16" in precisions:
        s = by_name["model.xml (openvino/bf16)"]
        assert s["precision"] == "bf16" and s["gate"] == {"max_top1_drop": 0.2, "min_agreement": 0.995}
    m = _manifest(ov_folder)
    xml = m.entry("model.xml")
    assert xml.validation is not None  # the IR's own run (f32)
    onnx = m.entry("model.onnx")
    assert onnx.validation is not None and "openvino/f32" in onnx.fact("validations")
    if "bf16" in precisions:
        assert "openvino/bf16" in xml.fact("validations")


@needs_openvino
def test_profile_maps_layers_to_blocks_with_runtime_precision(ov_export):
    from lowformer.profiling import profile

    report, = profile([str(ov_export / "model_int8.xml")], iterations=5, warmup=1)
    assert report.backend == "openvino" and report.precision == "int8"
    assert report.coverage >= 0.9, [r for r in report.rows if not r.module][:5]
    assert all("[" in r.op for r in report.rows)  # every layer says the precision it ran in
    assert any(r.op.endswith(("[i8]", "[u8]")) for r in report.rows)
    assert any(n.startswith("runtime precision") for n in report.warnings)
    assert any(r.fused_from for r in report.rows)
    d = report.to_dict()
    assert d["source"].startswith("OpenVINO PERF_COUNT")


@pytest.mark.heavy
@needs_openvino
def test_bench_openvino_columns_also_in_spawned_jobs(ov_export):
    from lowformer.bench import bench

    report = bench([str(ov_export / "model.onnx")], batch_size=2, iterations=3, warmup=1, jobs=2,
                   runtimes=("onnxruntime", "openvino"), precisions=("f32",))
    rows = {(r.backend, r.provider): r for r in report.results}
    assert set(rows) == {("onnxruntime", "cpu"), ("openvino", "cpu/f32")}, list(rows)
    r = rows[("openvino", "cpu/f32")]
    assert r.jobs == 2 and r.format == "onnx" and "openvino f32" in r.target and r.median_ms > 0
    assert report.machine["isa"]


def test_int8_slower_than_fp32_is_said_in_one_line():
    from lowformer.bench import BenchResult
    from lowformer.bench.run import warn_slow_int8

    def res(precision, ms):
        return BenchResult(target=f"m {precision}", kind="artifact", model="b0", backend="openvino", format="openvino",
                           precision=precision, provider="cpu/f32", path=None, image_size=224, batch_size=1, jobs=1,
                           threads=2, median_ms=ms, mean_ms=ms, p90_ms=ms, min_ms=ms, max_ms=ms, images_per_s=1.0)
    fast, slow = res("fp32", 5.0), res("int8", 6.0)
    warn_slow_int8([fast, slow])
    assert len(slow.warnings) == 1 and "INT8 is slower than FP32" in slow.warnings[0] and not fast.warnings
    quick = res("int8", 4.0)
    warn_slow_int8([res("fp32", 5.0), quick])
    assert quick.warnings == []


@needs_openvino
def test_slow_int8_warning_names_the_fastest_artifact_whose_verdict_passes(ov_export):
    """Timings are given; the verdicts come from the export folder's manifest (FP32 parity passed,
    INT8 not decided without a validation on labelled images): an undecided INT8 is never named."""
    from lowformer.bench import BenchResult
    from lowformer.bench.run import warn_slow_int8

    def res(name, backend, precision, ms):
        return BenchResult(target=name, kind="artifact", model="m", backend=backend, format="onnx",
                           precision=precision, provider="cpu/f32" if backend == "openvino" else "cpu",
                           path=str(ov_export / name), image_size=SIZE, batch_size=1, jobs=1, threads=2,
                           median_ms=ms, mean_ms=ms, p90_ms=ms, min_ms=ms, max_ms=ms, images_per_s=1.0)
    ort, ort_int8 = res("model.onnx", "onnxruntime", "fp32", 5.0), res("model_int8.onnx", "onnxruntime", "int8", 1.0)
    ov, ov_int8 = res("model.xml", "openvino", "fp32", 3.0), res("model_int8.xml", "openvino", "int8", 6.0)
    warn_slow_int8([ort, ort_int8, ov, ov_int8])
    assert ort_int8.warnings == [] and len(ov_int8.warnings) == 1
    assert "fastest passing artifact here: model.xml (3.00 ms, openvino cpu/f32)" in ov_int8.warnings[0]
    ov.median_ms = 7.0  # FP32 IR slower still: the ORT FP32 ONNX is the one to ship
    ov_int8.warnings.clear()
    warn_slow_int8([ort, ort_int8, ov, ov_int8])
    assert ov_int8.warnings == []  # INT8 (6 ms) is faster than OpenVINO FP32 (7 ms): nothing to say


def test_precision_names():
    assert ov_engine.normalize_precision("FP32") == "f32" and ov_engine.normalize_precision("bfloat16") == "bf16"
    with pytest.raises(LowformerError, match="unknown precision"):
        ov_engine.normalize_precision("int4")
    from lowformer.engines.runtimes import run_specs

    assert [s.precision for s in run_specs("openvino", (), ("f32", "bf16"))] == ["f32", "bf16"]
    assert [s.runtime for s in run_specs("onnx", ("onnxruntime", "openvino"), ())] == ["onnxruntime", "openvino"]
    assert run_specs("torchscript", ("openvino",), ("bf16",))[0].runtime is None


@needs_openvino
def test_cli_export_json_is_pure_with_nncf(tmp_path, images):
    if not _nncf_available():
        pytest.skip("nncf is not installed")
    r = run_cli("export", TINY, "--image-size", str(SIZE), "--to", "openvino", "--int8", "--target", "openvino",
                "--quantizer", "nncf", "--calib-data", str(images), "--calib-size", "8", "--out", str(tmp_path / "o"),
                "--weight-bits", "7", "--json")
    assert r.exit_code == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)  # NNCF's own log lines and progress bars never reach stdout
    arts = {a["path"]: a for a in doc["artifacts"]}
    assert set(arts) == {"model.onnx", "model.xml", "model_fp16.xml", "model_int8.xml"}  # no Q/DQ ONNX
    int8 = arts["model_int8.xml"]
    assert int8["int8"]["quantizer"] == "nncf" and int8["int8"]["fake_quantize_nodes"] > 0
    # --weight-bits 7 is NNCF's overflow fix on every layer: int8 weight constants within +-64
    assert int8["int8"]["weight_bits"] == 7 and int8["int8"]["overflow_fix"] == "enable"
    assert int8["int8"]["weight_bits_reason"] == "--weight-bits 7"
    assert _max_abs_int8_constant(tmp_path / "o" / "model_int8.xml") <= 64
    assert int8["calibration"]["count"] == 8 and len(int8["calibration"]["files"]) == 8
    assert int8["parity"]["passed"] and os.path.isfile(tmp_path / "o" / "model_int8.bin")


# --- blocks kept at f32 under a bf16 hint, and explain at the precision validated ------------------


def _runtime_precisions(xml: Path, hint: str) -> dict:
    """ONNX node -> the precision OpenVINO's CPU plugin ran the layer made from it in (its runtime model)."""
    out = {}
    compiled = ov_engine.core().compile_model(ov_engine.read_model(str(xml)), "CPU",
                                              {"INFERENCE_PRECISION_HINT": hint})
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in ("Convolution", "Eltwise", "FullyConnected"):
            for name in rt["originalLayersNames"].astype(str).split(","):
                out[name] = rt["runtimePrecision"].astype(str)
    return out


@needs_openvino
def test_keep_f32_marks_the_named_blocks_in_the_ir(tmp_path, ov_export):
    from lowformer.export.pipeline import export_model

    result = export_model(TINY, to=("openvino",), image_size=SIZE, out=str(tmp_path / "keep"), keep_f32=["stem"])
    assert not result.failed
    entries = {a.path: a for a in _manifest(tmp_path / "keep").artifacts}
    for name in ("model.xml", "model_fp16.xml"):
        kept = entries[name].fact("keep_f32")
        assert kept["blocks"] == ["stem"] and 0 < kept["ops"] <= entries[name].fact("kept_f32_ops")
    assert entries["model.onnx"].fact("keep_f32") is None
    if _has("BF16"):  # the mark's effect: the stem runs f32 where the same model's unmarked IR runs it bf16
        stem = "/conv_stem/Conv/WithoutBiases"
        kept = _runtime_precisions(tmp_path / "keep" / "model.xml", "bf16")
        assert kept[stem] == "f32" and "bf16" in kept.values(), kept
        assert _runtime_precisions(ov_export / "model.xml", "bf16")[stem] == "bf16"


@needs_openvino
def test_keep_f32_refusals_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "k"
    r = run_cli("export", TINY, "--image-size", str(SIZE), "--to", "openvino", "--keep-f32", "stem,nope",
                "--out", str(out))
    assert_ends_in_error(r, "--keep-f32 'nope' matches no module")  # after the ONNX it matches against
    assert not (out / "manifest.json").exists() and not list(out.glob("*.xml"))
    r = run_cli("export", TINY, "--image-size", str(SIZE), "--keep-f32", "stem", "--out", str(out))
    assert_one_line_error(r, "--keep-f32 is an option of OpenVINO artifacts: add --to openvino")


@needs_bf16
def test_explain_runs_at_the_precision_validate_scored(ov_folder, images):
    from lowformer.explain import explain

    result = explain([str(ov_folder / "model.onnx"), str(ov_folder / "model.xml")], images, workers=0,
                     runtimes=("openvino",), precisions=("f32", "bf16"))
    by = {a.name: a for a in result.artifacts}
    assert set(by) == {"model.onnx (openvino/f32)", "model.onnx (openvino/bf16)", "model.xml",
                       "model.xml (openvino/bf16)"}, list(by)
    for name in ("model.onnx", "model.xml"):
        f32 = by[name if name.endswith(".xml") else f"{name} (openvino/f32)"]
        bf16 = by[f"{name} (openvino/bf16)"]
        assert (f32.precision, bf16.precision, bf16.inference_precision) == ("fp32", "bf16", "bf16")
        assert bf16.tolerance["sqnr_db"] == 25.0  # the bf16 floor, not fp32's
        # bf16 keeps 8 mantissa bits: its logits sit tens of dB below the f32 run's
        assert bf16.blocks[-1]["sqnr_db"] < f32.blocks[-1]["sqnr_db"] - 20, (bf16.blocks[-1], f32.blocks[-1])
    m = _manifest(ov_folder)
    assert set(m.entry("model.onnx").fact("explain_runs")) == {"openvino/f32", "openvino/bf16"}
    assert m.entry("model.xml").fact("explain")["precision"] == "fp32"
    assert set(m.entry("model.xml").fact("explain_runs")) == {"openvino/bf16"}


@needs_openvino
def test_explain_refuses_a_precision_no_run_uses_before_any_work(ov_folder, images):
    r = run_cli("validate", str(ov_folder / "model.onnx"), "--data", str(images), "--precision", "bf16", "--explain")
    assert_one_line_error(r, "precision bf16 is a setting of the OpenVINO runtime")
