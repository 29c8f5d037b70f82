"""ONNX -> TensorRT support check (lowformer/engines/tensorrt/support.py): runs on every machine.

Real exports of LowFormer-B0 (random weights, 64 px) in FP16 and INT8 for both targets, and hand-built
graphs for what our exports never contain (unsupported ops, broken Q/DQ).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import REPO
from helpers import assert_one_line_error, run_cli
from lowformer.core.errors import LowformerError
from lowformer.engines.tensorrt import support
from lowformer.engines.tensorrt.support import check_onnx_for_tensorrt, require_tensorrt_support

SIZE = 64
CPU_LINE = ("model_int8.onnx is an INT8 graph for --target cpu (uint8 activations, zero points != 0), which "
            "TensorRT cannot build (it needs symmetric int8): re-export it with "
            "`lowformer export MODEL --int8 --target tensorrt --calib-data DIR`")


def _images(folder: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = folder / f"class{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)).resize((80, 72)).save(d / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{'tensorrt': folder with model.onnx, model_fp16.onnx, model_int8.onnx; 'cpu': folder with a cpu INT8}."""
    from lowformer.export.pipeline import export_model

    root = tmp_path_factory.mktemp("trt-support")
    images = _images(root / "images")
    out = {}
    for target in ("tensorrt", "cpu"):
        out[target] = root / target
        export_model("b0", to=("onnx",), fp16=target == "tensorrt", int8=True, image_size=SIZE, out=str(out[target]),
                     calib={"calib_data": str(images), "calib_size": 16, "target": target})
    return out


def _int32_dq_inputs(path: Path) -> list:
    """Inputs of the graph's DequantizeLinear nodes that are int32 initializers (quantized biases)."""
    g = onnx.load(str(path)).graph
    int32 = {i.name for i in g.initializer if i.data_type == TensorProto.INT32}
    return [n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]


def _bias_to_int32_dq(src: Path, dst: Path) -> tuple:
    """The graph with each float Conv/Gemm bias quantized to an int32 DequantizeLinear (as QuantizeBias=True
    gives, named after the tensor as the quantizer names it); (path, number of biases quantized)."""
    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    nodes, count = [], 0
    for n in g.node:
        bias = inits.get(n.input[2]) if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 else None
        if bias is not None and bias.data_type == TensorProto.FLOAT:
            b = numpy_helper.to_array(bias)
            scale = np.full(b.shape, 1e-4, np.float32)
            q = np.round(b / scale).astype(np.int32)
            g.initializer.extend([numpy_helper.from_array(q, bias.name + "_quantized"),
                                  numpy_helper.from_array(scale, bias.name + "_quantized_scale"),
                                  numpy_helper.from_array(np.zeros(b.shape, np.int32), bias.name + "_quantized_zero")])
            nodes.append(helper.make_node("DequantizeLinear", [bias.name + "_quantized", bias.name + "_quantized_scale",
                                                               bias.name + "_quantized_zero"],
                                          [bias.name + "_dq"], name=bias.name + "_DequantizeLinear", axis=0))
            n.input[2] = bias.name + "_dq"
            count += 1
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, str(dst))
    return dst, count


@pytest.mark.heavy  # three real exports of B0 (~20 s)
def test_fp32_and_fp16_exports_pass(exports):
    for name in ("model.onnx", "model_fp16.onnx"):
        for major in (None, 10, 11):
            assert check_onnx_for_tensorrt(exports["tensorrt"] / name, major) == [], (name, major)
        require_tensorrt_support(exports["tensorrt"] / name)


@pytest.mark.heavy  # three real exports of B0 (~20 s)
def test_tensorrt_target_int8_passes(exports, tmp_path):
    from lowformer.calibrate.qdq import TARGET_CONFIGS

    path = exports["tensorrt"] / "model_int8.onnx"
    assert not support.is_cpu_target_int8(path)
    # The tensorrt target keeps biases float: TensorRT rejects int32 bias DequantizeLinear nodes (onnx-tensorrt#850).
    assert TARGET_CONFIGS["tensorrt"].extra_options["QuantizeBias"] is False
    assert _int32_dq_inputs(path) == []
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")  # + weights
    # The graph passes for both majors: per-channel int8 weights, per-tensor symmetric int8 activations,
    # constant scales.
    for major in (None, 10, 11):
        assert check_onnx_for_tensorrt(path, major) == [], major
    require_tensorrt_support(path)
    # The same graph with quantized biases is refused, each bias named with the module it feeds.
    bad, count = _bias_to_int32_dq(path, tmp_path / "int32-bias.onnx")
    problems = check_onnx_for_tensorrt(bad, 10)
    assert count > 0 and len(problems) == count, problems
    assert all("_DequantizeLinear (DequantizeLinear, module " in p and "dequantizes an int32 bias" in p
               for p in problems), problems
    assert any("module stages." in p for p in problems)  # named after the node that consumes the bias


@pytest.mark.heavy  # three real exports of B0 (~20 s)
def test_cpu_target_int8_is_refused_in_one_line(exports):
    path = exports["cpu"] / "model_int8.onnx"
    assert support.is_cpu_target_int8(path)
    problems = check_onnx_for_tensorrt(path, 10)
    assert any("zero point" in p and "is not 0" in p for p in problems)
    assert any("UINT8 Q/DQ" in p for p in problems)
    with pytest.raises(LowformerError) as e:
        require_tensorrt_support(path)
    assert str(e.value) == CPU_LINE


@pytest.mark.heavy  # three real exports of B0 (~20 s)
def test_build_engine_refuses_before_asking_for_tensorrt(exports, monkeypatch):
    from lowformer.engines.tensorrt import build as build_mod
    from lowformer.engines.tensorrt import build_engine

    asked = []
    monkeypatch.setattr(build_mod, "tensorrt_status", lambda: asked.append(1) or (False, "no TensorRT"))
    with pytest.raises(LowformerError) as e:  # exit 1, not NeedsTargetDevice (exit 3)
        build_engine(exports["cpu"] / "model_int8.onnx", int8=True)
    assert str(e.value) == CPU_LINE and not asked
    r = run_cli("build-engine", str(exports["cpu"] / "model_int8.onnx"), "--int8")
    assert r.exit_code == 1
    assert_one_line_error(r, "--target tensorrt")


# --------------------------------------------------------------------------- hand-built graphs

def _model(nodes, inits=(), inputs=None, opset=17):
    inputs = inputs or [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT,
                                                                             None)], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_ops_are_named_with_node_op_and_module():
    nodes = [
        helper.make_node("Unique", ["input"], ["u"], name="/stages/stages.1/stages.1.0/attn/Unique"),
        helper.make_node("Col2Im", ["input", "shape", "block"], ["c"], name="/head/Col2Im"),
        helper.make_node("StringNormalizer", ["s"], ["n"], name="StringNormalizer_7"),
        helper.make_node("Relu", ["input"], ["out"], name="/stages/stages.1/stages.1.0/act/Relu"),
    ]
    inits = [numpy_helper.from_array(np.array([4, 4], np.int64), "shape"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "block")]
    problems = check_onnx_for_tensorrt(_model(nodes, inits), 10)
    assert problems == [
        "node /stages/stages.1/stages.1.0/attn/Unique (Unique, module stages.1.0.attn): not supported by TensorRT 10",
        "node /head/Col2Im (Col2Im, module head): not supported by TensorRT 10",
        "node StringNormalizer_7 (StringNormalizer, module (top level)): not supported by TensorRT 10",
    ]
    with pytest.raises(LowformerError) as e:
        require_tensorrt_support(_model(nodes, inits))
    assert "\n" not in str(e.value) and str(e.value).startswith("the ONNX cannot be built with TensorRT: node /stages")
    assert "(Unique, module stages.1.0.attn): not supported by TensorRT 10/11" in str(e.value)


def _q(name, x, scale, zp, out, **attrs):
    return helper.make_node("QuantizeLinear", [x, scale] + ([zp] if zp else []), [out], name=name, **attrs)


def _dq(name, x, scale, zp, out, **attrs):
    return helper.make_node("DequantizeLinear", [x, scale] + ([zp] if zp else []), [out], name=name, **attrs)


def test_qdq_rules():
    s = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    z0 = numpy_helper.from_array(np.array(0, np.int8), "z0")
    z3 = numpy_helper.from_array(np.array(3, np.int8), "z3")
    neg = numpy_helper.from_array(np.array(-0.1, np.float32), "neg")
    s8 = numpy_helper.from_array(np.full([8], 0.05, np.float32), "s8")
    z8 = numpy_helper.from_array(np.zeros([8], np.int8), "z8")
    s3 = numpy_helper.from_array(np.full([3], 0.05, np.float32), "s3")
    z3v = numpy_helper.from_array(np.zeros([3], np.int8), "z3v")
    w = numpy_helper.from_array(np.ones([8, 3, 3, 3], np.int8), "w")
    nodes = [
        _q("/a/QuantizeLinear", "input", "s", "z0", "q0"),  # fine: per-tensor, constant, zero point 0
        _dq("/a/DequantizeLinear", "q0", "s", "z0", "dq0"),
        _q("/b/QuantizeLinear", "dq0", "s", "z3", "q1"),  # non-zero zero point
        helper.make_node("ReduceMax", ["dq0"], ["dyn"], name="/c/ReduceMax", keepdims=0),
        _q("/c/QuantizeLinear", "dq0", "dyn", "z0", "q2"),  # scale computed at run time
        _q("/d/QuantizeLinear", "dq0", "neg", "z0", "q3"),  # negative scale
        _q("/e/QuantizeLinear", "dq0", "s3", "z3v", "q4", axis=1),  # per-channel activation
        _dq("/f/DequantizeLinear", "w", "s8", "z8", "wf", axis=0),  # fine: per-channel weight
        _dq("/g/DequantizeLinear", "w", "s3", "z3v", "wg", axis=0),  # 3 scales for 8 channels
        _q("/h/QuantizeLinear", "dq0", "s", "", "q5"),  # no zero point: ONNX's uint8 default
        helper.make_node("Identity", ["dq0"], ["out"], name="/z/Identity"),
    ]
    problems = check_onnx_for_tensorrt(_model(nodes, [s, z0, z3, neg, s8, z8, s3, z3v, w]), 10)
    by_node = {}
    for p in problems:
        by_node.setdefault(p.split(" ")[1], []).append(p)
    assert set(by_node) == {"/b/QuantizeLinear", "/c/QuantizeLinear", "/d/QuantizeLinear", "/e/QuantizeLinear",
                            "/g/DequantizeLinear", "/h/QuantizeLinear"}, problems
    assert by_node["/b/QuantizeLinear"] == [
        "node /b/QuantizeLinear (QuantizeLinear, module b): zero point z3 is not 0; TensorRT 10 supports symmetric "
        "quantization only (zero points 0)"]
    assert "scale dyn is computed at run time; TensorRT 10 needs a build-time constant scale" in \
        by_node["/c/QuantizeLinear"][0]
    assert "has values <= 0" in by_node["/d/QuantizeLinear"][0]
    assert "quantizes an activation per channel (3 scales)" in by_node["/e/QuantizeLinear"][0]
    assert "has 3 scales for axis 0 of a [8, 3, 3, 3] weight" in by_node["/g/DequantizeLinear"][0]
    assert "is a UINT8 Q/DQ" in by_node["/h/QuantizeLinear"][0]


def test_documented_restrictions_and_opset():
    nodes = [
        helper.make_node("MaxPool", ["input"], ["p"], name="/pool/MaxPool", kernel_shape=[2, 2], dilations=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["r"], name="/up/Resize", mode="cubic"),
        helper.make_node("ReduceMax", ["r"], ["axes_dyn"], name="/x/ReduceMax", keepdims=0),
        helper.make_node("Cast", ["axes_dyn"], ["axes_i"], name="/x/Cast", to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["r", "axes_i"], ["u"], name="/x/Unsqueeze"),
        helper.make_node("Relu", ["u"], ["out"], name="/x/Relu", domain="com.example"),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    problems = check_onnx_for_tensorrt(_model(nodes, [scales], opset=22), 10)
    assert problems == [
        "the graph uses ONNX opset 22; onnx-tensorrt documents opsets 9-20 for TensorRT 10: export with --opset 17",
        "node /pool/MaxPool (MaxPool, module pool): dilations=[2, 2] is not supported by TensorRT 10 (must be empty "
        "or all ones)",
        "node /up/Resize (Resize, module up): mode='cubic' is not supported by TensorRT 10 (supported: nearest, linear)",
        "node /x/Unsqueeze (Unsqueeze, module x): `axes` (input 1) must be a constant for TensorRT 10",
        "node /x/Relu (Relu, module x): op of domain 'com.example' is not an ONNX op TensorRT 10 parses (it needs a "
        "TensorRT plugin)",
    ]


def test_ops_table_records_its_source():
    data = support.ops_data()
    src = data["source"]
    assert src["repository"] == "onnx/onnx-tensorrt" and src["path"] == "docs/operators.md"
    assert len(src["commit"]) == 40 and src["ref"]
    assert set(data["majors"]) == {"10", "11"} and "note" in data["majors"]["11"]
    table = data["tables"]["10"]
    assert {"Unique", "Col2Im", "StringNormalizer"} <= set(table["unsupported"])
    assert {"Conv", "HardSwish", "LayerNormalization", "QuantizeLinear", "DequantizeLinear"} <= set(table["supported"])
    assert data["qdq"]["zero_point_zero"] and data["qdq"]["scale_constant"]


# --------------------------------------------------------------------------- every benchmark model (slow)

def _benchmark_models():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import run as bench_run

    return bench_run.LOWFORMERS + bench_run.peer_models()


@pytest.mark.slow
@pytest.mark.parametrize("model", _benchmark_models())
def test_benchmark_models_pass_in_fp16_and_tensorrt_int8(model, tmp_path):
    """FP16 and tensorrt-target INT8 at 224 px, with the shipped tensorrt target configuration (not patched:
    a quantized bias or any other graph TensorRT refuses fails here)."""
    from lowformer.export.pipeline import export_model

    images = _images(tmp_path / "images", 8)
    out = tmp_path / "export"
    export_model(model, to=("onnx",), fp16=True, int8=True, image_size=int(os.environ.get("TRT_CHECK_SIZE", 224)),
                 out=str(out), calib={"calib_data": str(images), "calib_size": 8, "target": "tensorrt"})
    int8 = out / "model_int8.onnx"
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, model  # really an INT8 (Q/DQ) graph
    assert _int32_dq_inputs(int8) == [], model  # biases stay float
    for name in ("model_fp16.onnx", "model_int8.onnx"):
        assert check_onnx_for_tensorrt(out / name) == [], name
