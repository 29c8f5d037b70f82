"""Per-layer profiling: real runtimes on a tiny LowFormer, names mapped back to its modules."""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from helpers import assert_one_line_error, load_mini, run_cli
from lowformer.engines import InputSpec, PyTorchRunner
from lowformer.engines.base import LayerTiming
from lowformer.profiling import ModelStructure, profile, profile_runner, report_from_trtexec
from lowformer.profiling.collect import rows_from_fused
from lowformer.profiling.names import GraphNeighbours, attribute_names, module_of_name
from lowformer.profiling.plot import plot_reports
from lowformer.profiling.structure import KINDS, UNATTRIBUTED, structure_of

SIZE = 64
TRT_FIXTURES = FIXTURES / "trt"
STAGES = {"stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"}


@pytest.fixture(scope="module")
def mini(mini_dir, tmp_path_factory):
    """The mini LowFormer-B1 (real reference weights), BN-fused, exported to ONNX and TorchScript."""
    from lowformer.export.onnx_export import export_onnx
    from lowformer.engines.torchscript.writer import export_torchscript
    from lowformer.models.fusion import fuse

    model, _, _ = load_mini(mini_dir / "mini_b1.safetensors")
    fused = copy.deepcopy(model)
    fuse(fused)
    out = tmp_path_factory.mktemp("mini-artifacts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(fused, out / "model.onnx", SIZE)
        export_torchscript(fused, out / "model.ts", torch.zeros(1, 3, SIZE, SIZE))
    return {"model": model, "fused": fused, "dir": out}


@pytest.fixture(scope="module")
def mini_int8(mini):
    """A Q/DQ INT8 copy of the mini ONNX, made by ONNX Runtime's static quantizer."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)}
                                 for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    path = mini["dir"] / "model_int8.onnx"
    quantize_static(str(mini["dir"] / "model.onnx"), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return path


def _module_paths(model) -> set:
    return {n for n, _ in model.named_modules()}


def _check_named(report, model, min_coverage=0.9, extra_stages=()):
    paths = _module_paths(model)
    assert report.coverage >= min_coverage, (report.coverage, [(r.name, r.ms) for r in report.rows if not r.module][:10])
    named = [r for r in report.rows if r.module]
    assert named and all(r.module in paths for r in named), [r.module for r in named if r.module not in paths][:5]
    assert {g.key for g in report.group("stage")} - {UNATTRIBUTED} <= STAGES | set(extra_stages)
    assert {g.key for g in report.group("kind")} <= set(KINDS)
    assert abs(sum(g.share for g in report.group("block")) - 1.0) < 1e-6
    assert report.latency["median_ms"] > 0 and report.latency["n"] == report.iterations


# --------------------------------------------------------------------------- names and structure


def test_module_of_name_reads_runtime_renames():
    s = ModelStructure()
    cases = {
        "/stages/stages.2/stages.2.1/attn/main/main.1/pwise/Conv": "stages.2.1.attn.main.1.pwise",
        "/stem/stem.0/conv/Conv_output_0_nchwc": "stem.0.conv",  # ORT NCHWc rewrite
        "/stages/stages.3/stages.3.0/main/spatial_conv/conv/Conv_token_49": "stages.3.0.main.spatial_conv.conv",
        "/stages/stages.2/stages.2.1/attn/main/main.1/MatMul/MatMulScaleFusion/": "stages.2.1.attn.main.1",
        "/stem/stem.0/act/HardSwish_output_0_QuantizeLinear": "stem.0.act",  # Q of a scoped tensor
        "classifier.weight_DequantizeLinear": "classifier",  # DQ of a weight
        "input_cast_to_/stem/stem.0/conv/Conv": "stem.0.conv",  # FP16 conversion cast
        "InsertedPrecisionFreeCast_/stages/stages.0/stages.0.0/main/point_conv/conv/Conv": "stages.0.0.main.point_conv.conv",
        "input_QuantizeLinear": "", "ReorderInput_token_59": "", "Slice_11": "",
    }
    for name, want in cases.items():
        assert module_of_name(name, s) == want, name


def test_known_structure_trims_runtime_suffixes(mini):
    s = structure_of(mini["model"])
    assert module_of_name("/stages/stages.2/stages.2.1/attn/main/main.1/MatMul/MatMulScaleFusion/", s) == \
        "stages.2.1.attn.main.1"


def test_structure_places_lowformer_modules():
    from lowformer.models.factory import create_model

    s = structure_of(create_model("b1"))
    expect = {
        "stem.0.conv": ("stem.0", "stem", "stem"),
        "stages.0.0.main.spatial_conv.conv": ("stages.0.0", "stages.0", "downsample"),
        "stages.2.0.main.point_conv": ("stages.2.0", "stages.2", "downsample"),
        "stages.2.3.attn.main.1.pwise": ("stages.2.3", "stages.2", "attention"),
        "stages.2.3.mlp.main.1": ("stages.2.3", "stages.2", "MLP"),
        "stages.2.3.local.main.spatial_conv.conv": ("stages.2.3", "stages.2", "fused MBConv"),
        "stages.3.1.local.main.depth_conv.conv": ("stages.3.1", "stages.3", "MBConv"),
        "in_conv.conv": ("in_conv", "head", "head"),
        "classifier": ("classifier", "head", "head"),
        "": (UNATTRIBUTED, UNATTRIBUTED, "other"),
    }
    for path, (block, stage, kind) in expect.items():
        p = s.place(path)
        assert (p.block, p.stage, p.kind) == (block, stage, kind), path


def test_unscoped_nodes_go_to_the_layer_they_feed():
    graph = GraphNeighbours([
        ("input_QuantizeLinear", ["input"], ["q"]),
        ("ReorderInput_token_1", ["q"], ["r"]),
        ("/stem/stem.0/conv/Conv_token_2", ["r"], ["c"]),
        ("/stem/stem.0/act/HardSwish", ["c"], ["h"]),
        ("ReorderOutput_token_3", ["h"], ["logits"]),  # feeds nothing scoped: its producer decides
    ])
    names = ["input_QuantizeLinear", "ReorderInput_token_1", "/stem/stem.0/conv/Conv_token_2",
             "HardSigmoid_9", "/stem/stem.0/act/HardSwish", "ReorderOutput_token_3"]
    placed = attribute_names(names, None, graph)
    assert placed["input_QuantizeLinear"] == ("stem.0.conv", "graph")
    assert placed["ReorderInput_token_1"] == ("stem.0.conv", "graph")
    assert placed["ReorderOutput_token_3"] == ("stem.0.act", "graph")
    # Not in the graph (expanded by the runtime): the next placed node in execution order.
    assert placed["HardSigmoid_9"] == ("stem.0.act", "order")


# --------------------------------------------------------------------------- real runtimes


def test_onnx_fp32_profile_names_lowformer_modules(mini):
    (report,) = profile([str(mini["dir"] / "model.onnx")], iterations=5, warmup=1, threads=1, model=mini["fused"])
    _check_named(report, mini["fused"])
    kinds = {g.key for g in report.group("kind")}
    assert {"attention", "MLP", "head", "downsample"} <= kinds
    assert report.profiled_run_ms and report.profiled_run_ms > 0
    assert any(r.how == "graph" for r in report.rows)  # ORT's layout reorders, placed by the graph
    d = report.to_dict()
    assert set(d["groups"]) == {"layer", "block", "stage", "kind"} and d["coverage"] == report.coverage


def test_int8_qdq_profile_keeps_attribution(mini, mini_int8):
    (report,) = profile([str(mini_int8)], iterations=5, warmup=1, threads=1, model=mini["fused"])
    _check_named(report, mini["fused"])
    qdq = [r for r in report.rows if r.op in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(r.module for r in qdq)
    assert any(r.op.startswith("QLinear") for r in report.rows)


def test_torchscript_profile_names_code_lines(mini):
    (report,) = profile([str(mini["dir"] / "model.ts")], iterations=3, warmup=1, threads=1, model=mini["fused"])
    _check_named(report, mini["fused"])
    assert all(r.how == "line" for r in report.rows if r.module)
    assert any(r.kind == "attention" for r in report.rows)


def test_torchscript_without_a_model_is_reported_unattributed(mini):
    (report,) = profile([str(mini["dir"] / "model.ts")], iterations=2, warmup=0, threads=1)
    assert report.coverage == 0.0 and report.layer_total_ms > 0
    assert any("cannot be named" in w for w in report.warnings)


def test_eager_profile_is_per_module(mini):
    runner = PyTorchRunner(mini["model"], InputSpec(shape=(None, 3, SIZE, SIZE)), threads=1)
    report = profile_runner(runner, artifact="mini", label="mini eager", iterations=3, warmup=1,
                            structure=structure_of(mini["model"]))
    # Eager containers (`stages`) have time of their own: Python glue between their children.
    _check_named(report, mini["model"], min_coverage=0.5, extra_stages={"stages"})
    assert report.backend == "pytorch" and report.format == "eager"


# --------------------------------------------------------------------------- TensorRT (recorded JSON)


def test_trtexec_profile_splits_fused_layers():
    # Committed, hand-written fixtures (fixtures/trt/README.md): a missing one is a failure, not a skip.
    prof, layers = TRT_FIXTURES / "profile.json", TRT_FIXTURES / "layer_info.json"
    report = report_from_trtexec(prof, layers)
    records = [r for r in json.loads(prof.read_text()) if "name" in r]
    count = next(r["count"] for r in json.loads(prof.read_text()) if "count" in r)
    assert report.layer_total_ms == pytest.approx(sum(r["timeMs"] for r in records) / count)
    # The inspector's file gives each layer its type and the ONNX nodes it runs: the Myelin kernel's name
    # names one node, its metadata the three it runs, so it is split like the two fused convolutions.
    assert {r.op for r in report.rows} == {"Reformat", "CaskConvolution", "kgen", "CaskGemmMatrixMultiply"}
    attn = "/stages/stages.2/stages.2.1/attn/"
    assert sorted({r.name for r in report.fused_rows()}) == sorted(
        [rec["name"] for rec in records if " + " in rec["name"] and not rec["name"].startswith("Reformatting")]
        + [attn + "MatMul_myl0_3"])
    (myelin,) = [r for r in report.rows if r.name == attn + "MatMul_myl0_3"]
    assert myelin.fused_from == [attn + "MatMul", attn + "Softmax", attn + "MatMul_1"]
    assert myelin.module == "stages.2.1.attn" and myelin.kind == "attention"
    # A fused layer's parts add back up to its time.
    for rec in records:
        parts = [r.ms for r in report.rows if r.name == rec["name"]]
        assert sum(parts) == pytest.approx(rec["timeMs"] / count)
    # The reformat in front of the stem conv belongs to the layer it feeds.
    reformat = [r for r in report.rows if r.name.startswith("Reformatting")]
    assert reformat and all(r.stage == "input_stem" and r.kind == "stem" for r in reformat)
    assert report.coverage == pytest.approx(1.0)


def test_fused_split_weights_the_convolution():
    t = LayerTiming("/stages/stages.2/stages.2.1/attn/main/main.1/pwise/Conv + /stages/stages.2/stages.2.1/attn/Add",
                    "CaskConvolution", 11.0, 1,
                    ["/stages/stages.2/stages.2.1/attn/main/main.1/pwise/Conv", "/stages/stages.2/stages.2.1/attn/Add"])
    rows = {r.module: r.ms for r in rows_from_fused([t], ModelStructure())}
    assert rows == pytest.approx({"stages.2.1.attn.main.1.pwise": 10.0, "stages.2.1.attn": 1.0})


# --------------------------------------------------------------------------- outputs


def test_chart_is_a_png_with_one_bar_per_artifact(mini, tmp_path):
    import matplotlib.image as mpimg

    reports = profile([str(mini["dir"] / "model.onnx"), str(mini["dir"] / "model.ts")], iterations=2, warmup=0,
                      threads=1, model=mini["fused"])
    for by in ("stage", "kind"):
        out = plot_reports(reports, str(tmp_path / f"chart-{by}.png"), by)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        h, w = mpimg.imread(str(out)).shape[:2]
        assert w > 800 and h > 250


def test_cli_json_stdout_is_pure_and_plot_written(mini, tmp_path):
    chart = tmp_path / "p.png"
    res = run_cli("profile", str(mini["dir"] / "model.onnx"), "--iterations", "3", "--warmup", "1", "--threads", "1",
                  "--json", "-", "--plot", str(chart), "--group-by", "stage")
    assert res.exit_code == 0, res.output + res.stderr
    doc = json.loads(res.stdout)
    (rep,) = doc["reports"]
    for key in ("artifact", "backend", "precision", "latency", "coverage", "layer_total_ms", "attributed_ms",
                "unattributed_ms", "profiled_run_ms", "groups", "rows", "warnings"):
        assert key in rep
    assert rep["coverage"] >= 0.9 and chart.is_file()
    assert "Profile summary" in res.stderr


def test_cli_rejects_missing_artifact(tmp_path):
    assert_one_line_error(run_cli("profile", str(tmp_path / "nope.onnx")), "no such artifact")


@pytest.mark.slow
def test_exported_folder_profile_end_to_end(tmp_path):
    """export_model -> `lowformer profile FOLDER`: the manifest names ONNX and TorchScript layers."""
    from lowformer.export.pipeline import export_model

    out = tmp_path / "b0"
    export_model("b0", to=("onnx", "torchscript"), image_size=SIZE, out=str(out))
    res = run_cli("profile", str(out), "--iterations", "5", "--warmup", "1", "--threads", "1", "--json", "-")
    assert res.exit_code == 0, res.stderr
    reports = {r["format"]: r for r in json.loads(res.stdout)["reports"]}
    assert reports["onnx"]["coverage"] >= 0.9
    assert reports["torchscript"]["coverage"] >= 0.9
    assert any(r["module"].startswith("stages.2.") and r["kind"] == "attention" for r in reports["onnx"]["rows"])
