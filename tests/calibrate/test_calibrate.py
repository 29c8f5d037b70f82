"""INT8 calibration: image selection, the histogram cache, Q/DQ graphs per target, exclusions, sensitivity."""
from __future__ import annotations

import logging

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import export_mini_b1, assert_one_line_error, run_cli, write_smooth_images

from lowformer.core.blocks import block_of_path, blocks_in_order, node_blocks, nodes_matching
from lowformer.calibrate.data import select_calibration, split_eval_and_calibration
from lowformer.calibrate.qdq import qdq_summary
from lowformer.calibrate.config import CalibrationConfig
from lowformer.calibrate.quantize import quantize_onnx
from lowformer.calibrate.session import calibrated
from lowformer.calibrate.ranges import TensorHistogram, entropy_threshold
from lowformer.calibrate.sensitivity import EvalData, auto_exclude_blocks, block_sensitivity, run_onnx
from lowformer.compare import compare_logits
from lowformer.core.errors import LowformerError
from lowformer.core.naming import module_path_of_node
from lowformer.data.preprocess import lowformer_protocol

SIZE = 64


_write_images = write_smooth_images


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_mini_b1(tmp_path_factory.mktemp("tiny"), SIZE)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return _write_images(tmp_path_factory.mktemp("calib"), 40)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One calibration cache for the tests that are not about caching (they calibrate once)."""
    return tmp_path_factory.mktemp("cache")


def _quantize(tiny, images, dst, cache_dir=None, progress=None, **kw):
    src, preprocessing = tiny
    kw.setdefault("calib_size", 16)
    config = CalibrationConfig.build(calib_data=str(images), **kw)
    extra = {"progress": progress} if progress is not None else {}
    return quantize_onnx(src, dst, preprocessing, config, "mini_b1", cache_dir=cache_dir, **extra)


def _augmented_sessions(monkeypatch) -> list:
    """Record every ONNX Runtime session built on ORT's calibration (augmented) model."""
    import onnxruntime

    created = []
    real = onnxruntime.InferenceSession

    class Counting(real):
        def __init__(self, path_or_bytes, *args, **kwargs):
            if "augmented" in str(path_or_bytes):
                created.append(str(path_or_bytes))
            super().__init__(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Counting)
    return created


def test_second_run_reuses_the_cache_without_running_the_model(tiny, images, tmp_path, monkeypatch):
    created = _augmented_sessions(monkeypatch)
    cache_dir = tmp_path / "cache"
    first = _quantize(tiny, images, tmp_path / "a.onnx", cache_dir=cache_dir)
    assert first["calibration"]["cache_hit"] is False and len(created) == 1
    assert first["calibration"]["count"] == 16 and len(first["calibration"]["files_sha256"]) == 64
    # Another method, target and exclusion: same histograms, the model does not run.
    second = _quantize(tiny, images, tmp_path / "b.onnx", cache_dir=cache_dir, method="minmax", target="tensorrt",
                       exclude=["stages.1.*"])
    assert second["calibration"]["cache_hit"] is True and len(created) == 1
    assert second["calibration"]["cache"] == first["calibration"]["cache"]
    # Other calibration images: a new cache entry, the model runs again.
    third = _quantize(tiny, images, tmp_path / "c.onnx", cache_dir=cache_dir, calib_size=20)
    assert third["calibration"]["cache_hit"] is False and len(created) == 2
    assert len(list(cache_dir.glob("*.json"))) == 2


def test_empty_folder_is_an_error_and_few_images_warn(tiny, tmp_path, caplog):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(LowformerError, match="no images"):
        _quantize(tiny, tmp_path / "empty", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(LowformerError, match="no such folder"):
        _quantize(tiny, tmp_path / "missing", tmp_path / "x.onnx")
    few = _write_images(tmp_path / "few", 8)
    with caplog.at_level(logging.WARNING, logger="lowformer"):
        facts = _quantize(tiny, few, tmp_path / "x.onnx", cache_dir=tmp_path / "c")
    assert facts["calibration"]["count"] == 8
    logs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("8 calibration images" in line for line in logs), logs


def test_tensorrt_graph_is_symmetric_int8_with_per_channel_weights(tiny, images, cache_dir, tmp_path):
    dst = tmp_path / "trt.onnx"
    facts = _quantize(tiny, images, dst, target="tensorrt", cache_dir=cache_dir)
    q = qdq_summary(dst)
    assert q["activation_dtypes"] == ["int8"] and q["activation_zero_points"] == [0]
    assert q["weight_dtypes"] == ["int8"] and q["per_channel_weights"] > 0
    assert facts["int8"]["target"] == "tensorrt" and facts["int8"]["activation_symmetric"] is True
    model = onnx.load(str(dst))
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(producer[n.input[0]].op_type == "DequantizeLinear" for n in convs)
    # Residual Adds get Q/DQ on both inputs; bias/epsilon Adds (a constant operand) none.
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    residual = [n for n in adds if all(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert residual, "no residual Add was quantized"


def test_cpu_graph_has_uint8_activations_and_runs_close_to_fp32(tiny, images, cache_dir, tmp_path):
    dst = tmp_path / "cpu.onnx"
    facts = _quantize(tiny, images, dst, target="cpu", cache_dir=cache_dir)
    q = qdq_summary(dst)
    assert q["activation_dtypes"] == ["uint8"] and q["weight_dtypes"] == ["int8"] and q["per_channel_weights"] > 0
    assert facts["int8"]["activation_type"] == "QUInt8" and facts["int8"]["weight_type"] == "QInt8"
    x = np.random.default_rng(0).uniform(-1.5, 1.5, (4, 3, SIZE, SIZE)).astype(np.float32)
    cmp = compare_logits(run_onnx(tiny[0], x), run_onnx(dst, x))
    assert cmp.cosine > 0.9, cmp


def _max_abs_weight(path: Path) -> int:
    """The largest |int8| of the Q/DQ graph's quantized weights."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ws = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
          and inits[n.input[0]].dtype == np.int8]
    return int(max(np.abs(w.astype(np.int32)).max() for w in ws))


@pytest.mark.parametrize("flags, bits", [(["avx", "avx2", "fma"], 7), (["avx2", "avx512f", "avx512_vnni"], 8),
                                         (["avx2", "avx_vnni"], 8),
                                         (["avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_int8"], 8)])
def test_cpu_target_weight_bits_follow_the_isa(flags, bits, monkeypatch):
    """--weight-bits auto: 7-bit weights only where u8 x s8 kernels saturate (x86 without VNNI/AMX)."""
    import platform

    from lowformer.calibrate.qdq import target_config
    from lowformer.core import machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: list(flags))  # the CPU we are not on
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    cfg = target_config("cpu")
    assert cfg.reduce_range is (bits == 7) and cfg.describe()["weight_bits"] == bits
    assert cfg.weight_bits_reason.startswith("auto: ") and ("7-bit" in cfg.weight_bits_reason) is (bits == 7)
    assert target_config("cpu", "8").reduce_range is False and target_config("cpu", "7").reduce_range is True
    assert target_config("openvino").reduce_range is (bits == 7)  # OpenVINO's oneDNN kernels: the same rule
    assert target_config("tensorrt").reduce_range is False  # fixed by its target, whatever the CPU


def test_weight_bits_change_the_written_weights_and_bad_values_are_one_line(tiny, images, cache_dir, tmp_path):
    seven = _quantize(tiny, images, tmp_path / "w7.onnx", target="cpu", cache_dir=cache_dir, weight_bits="7")
    eight = _quantize(tiny, images, tmp_path / "w8.onnx", target="cpu", cache_dir=cache_dir, weight_bits="8")
    assert seven["int8"]["weight_bits"] == 7 and eight["int8"]["weight_bits"] == 8
    assert seven["int8"]["weight_bits_reason"] == "--weight-bits 7"
    assert _max_abs_weight(tmp_path / "w7.onnx") <= 64 < _max_abs_weight(tmp_path / "w8.onnx") <= 127
    with pytest.raises(LowformerError, match="unknown weight bits"):
        _quantize(tiny, images, tmp_path / "bad.onnx", target="cpu", cache_dir=cache_dir, weight_bits="6")
    assert not (tmp_path / "bad.onnx").exists()


def test_exclusion_by_module_glob_keeps_those_modules_float(tiny, images, cache_dir, tmp_path):
    dst = tmp_path / "ex.onnx"
    facts = _quantize(tiny, images, dst, exclude=["stages.1.*", "head"], cache_dir=cache_dir)
    model = onnx.load(str(dst))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    float_convs, int8_convs = [], []
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        path = module_path_of_node(n.name)
        weight_is_dq = n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"
        (int8_convs if weight_is_dq else float_convs).append(path)
        if path.startswith("stages.1.") or node_blocks([n.name]).get(n.name) == "head":
            assert n.input[1] in inits and not weight_is_dq, path
    assert float_convs and int8_convs
    assert facts["int8"]["excluded_nodes"] > 0 and facts["int8"]["exclude"] == ["stages.1.*", "head"]
    with pytest.raises(LowformerError, match="matches no module"):
        _quantize(tiny, images, tmp_path / "none.onnx", exclude=["stages.9.*"], cache_dir=cache_dir)


def test_blocks_follow_the_lowformer_layout(tiny):
    names = [n.name for n in onnx.load(str(tiny[0])).graph.node]
    blocks = blocks_in_order(names)
    # mini_b1: one stem conv, a conv block per stage, attention blocks in stages 2 and 3, the head
    assert blocks == ["stem.0", "stages.0.0", "stages.1.0", "stages.2.0", "stages.2.1", "stages.3.0",
                      "stages.3.1", "head"]
    assert block_of_path("stages.2.1.attn.main.1") == "stages.2.1" and block_of_path("stem.0.conv") == "stem.0"
    assert block_of_path("blocks.3.0.conv_pw") == "blocks.3.0" and block_of_path("classifier") is None
    head = nodes_matching(names, ["head"])
    outside = [n for n in names if not n.startswith(("/stem", "/input_stem", "/stages")) and n]
    assert len(head) == 8 and set(head) <= set(outside) and nodes_matching(names, []) == []


def test_calibration_and_evaluation_images_never_overlap(images):
    calib, ev = split_eval_and_calibration(str(images), 20, None, 15)
    assert len(calib) == 20 and len(ev) == 15
    assert not {s.path for s in calib.samples} & {s.path for s in ev.samples}
    again, _ = split_eval_and_calibration(str(images), 20, None, 15)
    assert again.sha256 == calib.sha256  # deterministic
    assert select_calibration(str(images), 20).sha256 != calib.sha256  # without a held-out split: other images


def test_entropy_threshold_matches_onnxruntime_without_the_zero_spike():
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    collector = HistogramCollector("entropy", False, 512, 128, 99.99, "same")
    for data in (rng.standard_normal(200_000), np.maximum(rng.laplace(0.3, 1.0, 200_000), -0.2)):
        data = data.astype(np.float32)
        with contextlib.redirect_stdout(io.StringIO()):
            collector.histogram_dict = {}
            collector.collect_value({"t": [data]})
        hist, edges, lo, hi, threshold = collector.histogram_dict["t"]
        zero = len(hist) // 2
        hist = hist.copy()
        hist[zero] = hist[zero + 1]  # what ours does first (NVIDIA's `bins[0] = bins[1]`)
        ref = collector.get_entropy_threshold((hist, edges, lo, hi, threshold), 128)
        mine = entropy_threshold(TensorHistogram.from_collector(collector.histogram_dict["t"]))
        assert np.allclose(mine, [float(ref[0]), float(ref[1])]), (mine, ref)


def test_entropy_does_not_clip_a_relu6_output_for_its_zeros():
    """Half of a ReLU6 output is exactly 0 (exact in int8): ORT's search, counting that spike as a
    quantization cost, clips the range far below 6; ours keeps it (EfficientNet-Lite0: 81.3 -> 84.2 %)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    data = np.clip(rng.normal(0.5, 1.5, 400_000), 0, 6).astype(np.float32)
    collector = HistogramCollector("entropy", False, 1024, 128, 99.99, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        collector.collect_value({"t": [data]})
    entry = collector.histogram_dict["t"]
    ort_hi = float(collector.get_entropy_threshold(entry, 128)[1])
    mine_hi = entropy_threshold(TensorHistogram.from_collector(entry))[1]
    assert mine_hi > ort_hi and mine_hi > 4.0, (mine_hi, ort_hi)


def test_sensitivity_table_and_auto_exclude(tiny, images, cache_dir):
    src, _ = tiny
    pp = lowformer_protocol(SIZE)
    calib, ev = split_eval_and_calibration(str(images), 16, None, 12)
    with calibrated(src, calib, pp, "mini_b1", cache_dir) as session:
        data = EvalData.build(src, ev, pp)
        assert data.labels is None  # class0..3 are not ImageNet classes: agreement decides
        rows = block_sensitivity(session, data, "percentile", "cpu")
        assert [r["block"] for r in rows] == blocks_in_order(session.node_names)
        assert all(0 <= r["agreement"] <= 1 and r["cosine"] > 0.5 for r in rows)
        # A gate nothing can fail keeps nothing in float; an impossible one keeps blocks, bounded.
        easy = auto_exclude_blocks(session, data, "percentile", "cpu", [], 100.0, rows=rows)
        assert easy["passed"] and easy["kept_float"] == []
        hard = auto_exclude_blocks(session, data, "percentile", "cpu", [], -1.0, rows=rows, max_steps=2)
        assert not hard["passed"] and hard["kept_float"] == hard["ranking"][:2] and len(hard["steps"]) == 2
    assert Path(session.cache.path).is_file()


def test_auto_exclude_in_quantize_onnx_holds_out_its_evaluation_images(tiny, images, cache_dir, tmp_path):
    facts = _quantize(tiny, images, tmp_path / "auto.onnx", cache_dir=cache_dir, calib_size=16, auto_exclude=True,
                      gate_top1_drop=100.0, eval_size=12)
    auto = facts["int8"]["auto_exclude"]
    assert auto["passed"] and auto["kept_float"] == [] and auto["metric"] == "disagreement"
    assert auto["eval"]["count"] == 12 and facts["calibration"]["count"] == 16


def test_export_pipeline_writes_and_records_the_int8_model(images, tmp_path):
    from helpers import manifest_dict as load_manifest
    from lowformer.export.pipeline import export_model

    result = export_model("timm:tf_efficientnet_lite0", int8=True, image_size=SIZE, out=str(tmp_path / "eff"),
                          calib=dict(calib_data=str(images), calib_size=16, method="minmax", target="tensorrt"))
    entry = next(a for a in load_manifest(tmp_path / "eff")["artifacts"] if a["precision"] == "int8")
    assert entry["path"] == "model_int8.onnx" and entry["int8"]["target"] == "tensorrt"
    assert entry["calibration"]["count"] == 16 and entry["calibration"]["files_sha256"]
    assert entry["int8"]["qdq"]["activation_zero_points"] == [0] and "cosine" in entry["parity"]
    assert not list((tmp_path / "eff").glob(".*.tmp")) and result.artifacts[-1].precision == "int8"

    # Validating on the calibration folder evaluates only the images that did not calibrate.
    from lowformer.validate import validate

    report = validate([str(tmp_path / "eff")], images, record=False, workers=0)
    assert report.data["held_out_calibration_images"] == 16 and report.data["images"] == 40 - 16
    assert any("held out 16 image(s)" in w for w in report.warnings)


def test_cpu_int8_export_times_int8_against_fp32_and_records_it(images, tmp_path):
    from helpers import manifest_dict as load_manifest
    from lowformer.export.pipeline import export_model
    from lowformer.export.speed import slower_int8_warning

    result = export_model("timm:tf_efficientnet_lite0", int8=True, image_size=SIZE, out=str(tmp_path / "eff"),
                          calib=dict(calib_data=str(images), calib_size=16, method="minmax", target="cpu"))
    entry = next(a for a in load_manifest(tmp_path / "eff")["artifacts"] if a["precision"] == "int8")
    check = entry["speed_check"]
    assert check["runtime"] == "onnxruntime" and check["batch_size"] == 1 and check["isa"]
    assert check["fp32_ms"] > 0 and check["int8_ms"] > 0
    assert abs(check["speedup"] - check["fp32_ms"] / check["int8_ms"]) < 0.01
    warned = [w for w in result.warnings if w.startswith("INT8 ran slower")]
    assert bool(warned) is (check["int8_ms"] > check["fp32_ms"])  # the line appears exactly when it is true
    # the rule for the CPU at hand, named: 7-bit on x86 without VNNI/AMX-INT8, else 8
    import platform

    from lowformer.core.machine import cpu_isa, has_int8_dot_product

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    expected = 7 if x86 and not has_int8_dot_product() else 8
    assert entry["int8"]["weight_bits"] == expected, cpu_isa()
    assert entry["int8"]["weight_bits_reason"].startswith(f"auto: this CPU ({cpu_isa()})")
    line = slower_int8_warning({**check, "int8_ms": 2.0, "fp32_ms": 1.0}, "model.onnx")
    assert line and "2.00 vs 1.00 ms" in line and "fastest passing artifact of the two is model.onnx" in line
    assert "\n" not in line
    assert "model.onnx failed its parity check too" in slower_int8_warning(
        {**check, "int8_ms": 2.0, "fp32_ms": 1.0}, "model.onnx", fp32_passed=False)
    assert slower_int8_warning({**check, "int8_ms": 1.0, "fp32_ms": 2.0}, "model.onnx") is None
    assert slower_int8_warning(None, "model.onnx") is None


def test_speed_check_that_cannot_load_an_artifact_is_skipped_not_fatal(tiny, tmp_path):
    from lowformer.export.speed import int8_speed_check, slower_int8_warning

    bad = tmp_path / "model_int8.onnx"
    bad.write_bytes(b"not an onnx model")
    check = int8_speed_check(tiny[0], bad, "cpu", calls=2)
    assert check["runtime"] == "onnxruntime" and check["skipped"] and "fp32_ms" not in check
    assert slower_int8_warning(check, "model.onnx") is None
    assert int8_speed_check(tiny[0], bad, "tensorrt") is None  # a GPU format: not timed on the CPU


def test_export_int8_without_calib_data_is_one_line():
    assert_one_line_error(run_cli("export", "timm:tf_efficientnet_lite0", "--int8"), "--calib-data")


def test_sensitivity_cli_bad_input_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("calibrate", "sensitivity", str(tmp_path), "--calib-data", str(tmp_path / "empty")),
                          "export folder")


@pytest.mark.slow
def test_effnet_lite0_int8_cpu_within_one_point_on_real_images(imagenet_val, effnet_lite0_checkpoint, tmp_path):
    """Real weights, real images: calibrate on 128 images, evaluate on 400 disjoint ones."""
    from lowformer.export.pipeline import Exporter
    from lowformer.data.preprocess import Preprocessing

    from lowformer.export.config import ExportConfig

    ex = Exporter("timm:tf_efficientnet_lite0",
                  ExportConfig(checkpoint=effnet_lite0_checkpoint, image_size=224, out=str(tmp_path / "eff")))
    src = ex.ensure_onnx()
    pp = Preprocessing.from_dict(ex.manifest.preprocessing)
    calib, ev = split_eval_and_calibration(str(imagenet_val), 128, None, 400)
    with calibrated(src, calib, pp, "effnet") as session:
        data = EvalData.build(src, ev, pp)
        assert data.fp32_top1 > 0.8
        dst = tmp_path / "int8.onnx"
        session.quantize(dst, "percentile", "cpu")
        metrics = data.score(run_onnx(dst, data.images))
    assert metrics["drop"] <= 1.0 and metrics["agreement"] >= 0.95, metrics
