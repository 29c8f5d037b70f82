"""Quantization-aware distillation (`--qat-steps`): the Q/DQ graph as a trainable module computes what
ONNX Runtime computes, training moves the INT8 model toward the FP32 teacher and writes the same
graph again, runs resume, validate measures the gain, and bad input is one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import export_mini_b1, assert_ends_in_error, assert_one_line_error, manifest_dict, run_cli, write_smooth_images
from onnx import numpy_helper

from lowformer.calibrate.config import CalibrationConfig
from lowformer.calibrate.distill import DistillConfig, distill, teacher_logits
from lowformer.calibrate.qdq import prepare_model
from lowformer.calibrate.qdq_torch import QDQGraph
from lowformer.calibrate.quantize import quantize_onnx
from lowformer.calibrate.sensitivity import run_onnx
from lowformer.compare import compare_logits
from lowformer.data.imagenet import load_images
from lowformer.calibrate.data import select_calibration
from lowformer.data.preprocess import Preprocessing

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_mini_b1(tmp_path_factory.mktemp("tiny"), SIZE)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_smooth_images(tmp_path_factory.mktemp("calib"), 40)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One calibration of the mini model for every test (the histograms do not depend on the target)."""
    return tmp_path_factory.mktemp("cache")


def _ptq(tiny, images, dst: Path, target: str, cache: Path, **qat):
    src, pre = tiny
    config = CalibrationConfig.build(calib_data=str(images), calib_size=16, target=target, method="minmax", qat=qat)
    return quantize_onnx(src, dst, pre, config, "mini_b1", cache_dir=cache)


def _reference_math(path: Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime without fusions: Q/DQ computed as written (TensorRT's reference arithmetic)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _graph(tiny, qdq: Path, tmp_path: Path) -> QDQGraph:
    prepared = tmp_path / "prepared.onnx"
    prepare_model(tiny[0], prepared)
    return QDQGraph(onnx.load(str(prepared)), onnx.load(str(qdq)))


@pytest.mark.parametrize("target", ["cpu", "tensorrt", pytest.param("openvino", marks=pytest.mark.heavy)])
def test_the_trainable_graph_computes_what_onnxruntime_computes(tiny, images, cache_dir, tmp_path, target):
    dst = tmp_path / "int8.onnx"
    _ptq(tiny, images, dst, target, cache_dir)
    graph = _graph(tiny, dst, tmp_path)
    assert graph.weights_quantized > 10 and graph.activations_quantized > 10
    # Every weight is fake-quantized exactly as ONNX Runtime quantized it (its rule, recomputed from FP32).
    model = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    x = load_images(select_calibration(str(images), 8).samples, tiny[1])
    with torch.no_grad():
        values = graph.values(torch.from_numpy(x))
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0], np.zeros(0, np.int32)).dtype == np.int8:
            q, scale = inits[node.input[0]].astype(np.float64), inits[node.input[1]]
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[dict((a.name, a.i) for a in node.attribute).get("axis", 1)] = -1
            want = q * scale.reshape(shape)
            np.testing.assert_allclose(values[node.output[0]].numpy(), want, rtol=0, atol=1e-6 * np.abs(want).max())
    # The logits: the same up to float rounding at quantization boundaries.
    cmp = compare_logits(_reference_math(dst, x), values[graph.output_name].numpy())
    assert cmp.cosine > 0.999 and cmp.top1_agreement >= 7 / 8, cmp


def test_distillation_trains_the_same_graph_toward_the_teacher(images, effnet_lite0_checkpoint, tmp_path):
    """Real EfficientNet-Lite0 weights at 96 px: post-training INT8 is visibly off its FP32 logits on the
    distillation images, and 30 steps bring the written Q/DQ model (as ONNX Runtime runs it) closer."""
    from lowformer.export.pipeline import export_model

    out = tmp_path / "lite0"
    result = export_model("timm:tf_efficientnet_lite0", int8=True, image_size=96, checkpoint=effnet_lite0_checkpoint,
                          out=str(out), calib=dict(calib_data=str(images), calib_size=16, method="minmax",
                                                   target="tensorrt", qat=dict(qat_steps=30, qat_batch_size=8)))
    # On 4 random parity inputs both INT8 models fail the cosine check here (0.89: 16 smooth images
    # calibrated them); the post-training one is a baseline and never fails the export itself.
    assert result.errors == [] and "model_int8_ptq.onnx" not in result.failed
    dst, ptq = out / "model_int8.onnx", out / "model_int8_ptq.onnx"
    qat = json.loads((out / "manifest.json").read_text())
    qat = next(a for a in qat["artifacts"] if a["path"] == dst.name)["int8"]["qat"]
    assert qat["steps"] == 30 and qat["images"] == 16 and len(qat["loss_curve"]) == 30
    assert qat["graph_cosine"] > 0.999 and qat["teacher"]["outputs"] == 1000 and qat["seconds"] > 0

    # The same graph: node for node, the same activation scales; other int8 weights.
    a, b = onnx.load(str(ptq)), onnx.load(str(dst))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    ia = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    act_scales = [n.input[1] for n in a.graph.node if n.op_type == "QuantizeLinear"]
    assert act_scales and all(np.array_equal(ia[s], ib[s]) for s in act_scales)
    weights = [k for k in ia if k.endswith("_quantized") and ia[k].dtype == np.int8]
    assert sum(not np.array_equal(ia[k], ib[k]) for k in weights) > len(weights) // 2

    # Closer to the FP32 teacher on the distillation images, as ONNX Runtime runs the written files.
    pre = Preprocessing.from_dict(json.loads((out / "manifest.json").read_text())["preprocessing"])
    x = load_images(select_calibration(str(images), 16).samples, pre)
    teacher = torch.from_numpy(run_onnx(out / "model.onnx", x)).log_softmax(-1)

    def kl(path):
        s = torch.from_numpy(_reference_math(path, x)).log_softmax(-1)
        return float(torch.nn.functional.kl_div(s, teacher, log_target=True, reduction="batchmean"))

    assert kl(dst) < 0.5 * kl(ptq), (kl(dst), kl(ptq))  # measured: 0.035 against 0.167


class _StopAt:
    """A progress sink that interrupts the run after `n` steps (as Ctrl-C would)."""

    def __init__(self, n: int):
        self.n, self.done = n, 0

    def task(self, description, total=None, completed=0):
        import contextlib

        sink = self

        class _Task:
            def advance(self, n=1, status=None, description=None):
                sink.done += n
                if description is None and total and sink.done >= sink.n and "distilling" in task_name:
                    raise KeyboardInterrupt

        task_name = description
        return contextlib.nullcontext(_Task())


def test_an_interrupted_distillation_resumes_where_it_was_saved(tiny, images, cache_dir, tmp_path):
    dst = tmp_path / "int8.onnx"
    _ptq(tiny, images, dst, "tensorrt", cache_dir)
    x = load_images(select_calibration(str(images), 16).samples, tiny[1])
    t = teacher_logits(tiny[0], x)
    config = DistillConfig(qat_steps=10, qat_lr=1e-3, qat_batch_size=4)

    whole = _graph(tiny, dst, tmp_path)
    distill(whole, x, t, config)
    state = tmp_path / "state.pt"
    part = _graph(tiny, dst, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        distill(part, x, t, config, state_file=state, state_key="k", progress=_StopAt(7))
    assert state.is_file()  # saved at step 5
    resumed = _graph(tiny, dst, tmp_path)
    facts = distill(resumed, x, t, config, state_file=state, state_key="k")
    assert facts["resumed_from_step"] == 5 and not state.exists()
    for name, value in whole.trained_initializers().items():
        np.testing.assert_allclose(resumed.trained_initializers()[name], value, rtol=1e-5, atol=1e-7)
    # A state saved for other options is not resumed.
    other = _graph(tiny, dst, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        distill(other, x, t, config, state_file=state, state_key="k", progress=_StopAt(7))
    assert distill(_graph(tiny, dst, tmp_path), x, t, config, state_file=state,
                   state_key="other")["resumed_from_step"] is None


@pytest.mark.heavy  # the whole chain (export with QAT, validate), ~10 s: make test's budget
def test_export_records_both_models_and_validate_measures_the_gain(images, tmp_path):
    from lowformer.export.pipeline import export_model
    from lowformer.validate import validate

    out = tmp_path / "eff"
    result = export_model("timm:tf_efficientnet_lite0", int8=True, image_size=SIZE, out=str(out),
                          calib=dict(calib_data=str(images), calib_size=16, method="minmax", target="tensorrt",
                                     qat=dict(qat_steps=3, qat_batch_size=8)))
    assert result.exit_code == 0 and not result.errors
    entries = {a["path"]: a for a in manifest_dict(out)["artifacts"]}
    assert entries["model_int8.onnx"]["int8"]["qat"]["post_training"] == "model_int8_ptq.onnx"
    assert entries["model_int8_ptq.onnx"]["int8"]["post_training_of"] == "model_int8.onnx"
    assert "qat" not in entries["model_int8_ptq.onnx"]["int8"]
    report = validate([str(out)], images, workers=0)  # recorded: the report shows the gain
    assert report.data["held_out_calibration_images"] == 16
    (gain,) = report.distillation
    assert "model_int8.onnx" in gain["artifact"] and "model_int8_ptq.onnx" in gain["post_training"]
    lo, hi = gain["top1_gain_ci"]
    assert lo <= gain["top1_gain"] <= hi and 0 <= gain["mcnemar_p"] <= 1
    assert report.to_dict()["distillation"] == report.distillation
    baseline = next(a for a in report.artifacts if "model_int8_ptq.onnx" in a.name)
    assert baseline.gate["applied"] is False and baseline.passed is None and not baseline.failures
    recorded = {a["path"]: a for a in manifest_dict(out)["artifacts"]}["model_int8.onnx"]["int8"]["qat"]
    assert recorded["validated_gain"]["top1_gain"] == gain["top1_gain"] and recorded["validated_gain"]["images"] == 24
    from lowformer.report import write_html_report

    html = write_html_report([out], tmp_path / "report.html").read_text()
    row = html[html.index('id="distillation-table"'):]
    assert "model_int8_ptq.onnx" in row and f"{gain['top1_gain']:+.2f} pt" in row

    # Exported again without distillation: the old baseline goes, file and entry.
    again = export_model("timm:tf_efficientnet_lite0", int8=True, image_size=SIZE, out=str(out), fp16=True,
                         calib=dict(calib_data=str(images), calib_size=16, method="percentile", target="tensorrt"))
    assert not again.errors and not (out / "model_int8_ptq.onnx").exists()
    assert "model_int8_ptq.onnx" not in {a["path"] for a in manifest_dict(out)["artifacts"]}


def test_distilling_on_another_folder_holds_those_images_out_of_validation(tiny, images, cache_dir, tmp_path):
    from lowformer.evaluate.data import calibration_images
    from lowformer.artifacts import ArtifactEntry
    from lowformer.data.imagenet import any_images

    extra = write_smooth_images(tmp_path / "unlabelled", 12, seed=3)
    dst = tmp_path / "int8.onnx"
    facts = _ptq(tiny, images, dst, "tensorrt", cache_dir, qat_steps=2, qat_batch_size=4, qat_data=str(extra))
    seen = facts["int8"]["qat"]["distillation_images"]
    assert seen["count"] == 12 and Path(seen["folder"]) == extra.resolve()
    # validate on that folder holds those images out, as it does the calibration images
    entry = ArtifactEntry(dst.name, "onnx", "int8", facts=facts)
    samples = any_images(str(extra), "data").samples
    assert len(calibration_images([(dst, entry, None)], extra, samples)) == 12


def test_qat_bad_input_is_one_line(tiny, images, tmp_path):
    assert_one_line_error(run_cli("export", "timm:tf_efficientnet_lite0", "--qat-steps", "5"), "--int8")
    args = ("export", "timm:tf_efficientnet_lite0", "--image-size", str(SIZE), "--int8", "--calib-data", str(images),
            "--calib-size", "16", "--out", str(tmp_path / "x"))
    assert_ends_in_error(run_cli(*args, "--qat-steps", "2", "--qat-batch-size", "32"), "fewer than")
    assert_one_line_error(run_cli(*args, "--qat-steps", "2", "--qat-data", str(tmp_path / "nope")), "no such folder")
    # A teacher of other classes: the mini LowFormer has 10 outputs, EfficientNet-Lite0 1000.
    assert_ends_in_error(run_cli(*args, "--qat-steps", "2", "--qat-teacher", str(tiny[0])), "10 outputs")
    assert_one_line_error(run_cli(*args, "--to", "executorch", "--qat-steps", "2"), "ExecuTorch")


def test_a_diverging_distillation_stops_and_keeps_the_post_training_model(images, tmp_path):
    out = tmp_path / "eff"
    result = run_cli("export", "timm:tf_efficientnet_lite0", "--image-size", str(SIZE), "--int8", "--calib-data",
                     str(images), "--calib-size", "16", "--target", "tensorrt", "--out", str(out),
                     "--qat-steps", "5", "--qat-batch-size", "8", "--qat-lr", "1e30", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert len(doc["errors"]) == 1 and "stopped at step" in doc["errors"][0] and "post-training" in doc["errors"][0]
    entries = {a["path"]: a for a in manifest_dict(out)["artifacts"]}
    assert "model_int8.onnx" in entries and "model_int8_ptq.onnx" not in entries
    assert entries["model_int8.onnx"]["int8"]["qat"]["failed_at_step"] >= 1
    assert not (out / "model_int8_ptq.onnx").exists()
