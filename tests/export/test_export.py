"""`lowformer export`: artifacts, manifest, parity, atomicity, and one-line errors."""
import json
import os

import numpy as np
import onnx
import pytest
import torch

from conftest import FIXTURES
from helpers import assert_one_line_error, load_mini, run_cli
from lowformer.engines import load
from helpers import manifest_dict as load_manifest
from lowformer.artifacts import Manifest
from lowformer.validate import reference_model
from lowformer.core.naming import module_path_of_node
from lowformer.export.onnx_export import export_onnx
from lowformer.export.pipeline import export_model
from lowformer.engines.torchscript.writer import export_torchscript
from lowformer.models.fusion import fuse

SIZE = 64  # small inputs keep these tests fast; odd feature maps appear at 64 too (64 -> 2 at stage 4)


@pytest.fixture(scope="module")
def b0_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("b0")
    result = export_model("b0", to=("onnx", "torchscript"), fp16=True, image_size=SIZE, out=str(out))
    return out, result


def test_export_writes_checked_artifacts_and_manifest(b0_export):
    out, result = b0_export
    assert result.exit_code == 0 and not result.failed
    m = load_manifest(out)
    from lowformer.core.files import sha256_file

    # random weights are kept beside the artifacts and recorded by their real sha256
    assert m["model"]["name"] == "b0" and m["checkpoint"]["source"] == "random-init"
    assert m["checkpoint"]["sha256"] == sha256_file(out / m["checkpoint"]["path"])
    assert m["input"]["shape"] == [None, 3, SIZE, SIZE]
    assert m["preprocessing"]["resize"] == 68 and m["preprocessing"]["interpolation"] == "bicubic"
    arts = {a["path"]: a for a in m["artifacts"]}
    assert set(arts) == {"model.onnx", "model_fp16.onnx", "model.ts"}
    assert arts["model.onnx"]["parity"]["rel_l2"] <= 1e-4 and arts["model.ts"]["parity"]["rel_l2"] <= 1e-4
    assert arts["model_fp16.onnx"]["parity"]["cosine"] >= 0.999
    for a in arts.values():
        assert a["parity"]["passed"] and len(a["sha256"]) == 64 and (out / a["path"]).is_file()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") or f.startswith(".staging-")]
    assert all(a["size"] == (out / a["path"]).stat().st_size for a in arts.values())


def test_onnx_graph_is_fused_named_and_fp16_keeps_norms_fp32(b0_export):
    out, _ = b0_export
    graph = onnx.load(str(out / "model.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert not [n for n in graph.node if n.op_type in ("GroupNormalization", "InstanceNormalization")]
    paths = {module_path_of_node(n.name) for n in graph.node}
    assert "stages.2.1.attn.main.1.pwise" in paths and "stem.0.conv" in paths
    fp16 = onnx.load(str(out / "model_fp16.onnx")).graph
    assert fp16.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inits = {i.name: i.data_type for i in fp16.initializer}
    conv = next(n for n in fp16.node if n.op_type == "Conv")
    assert inits[conv.input[1]] == onnx.TensorProto.FLOAT16
    # Softmax and normalisation reductions compute in FP32: their inputs are produced by Casts to float
    producers = {o: n for n in fp16.node for o in n.output}
    softmax = next(n for n in fp16.node if n.op_type == "Softmax")
    cast = producers[softmax.input[0]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT


def test_reference_model_is_rebuilt_from_the_manifest(b0_export):
    out, _ = b0_export
    m = Manifest.load(out)
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        ref = reference_model(m, out)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load(str(out / "model.onnx")).run(x), ref, rtol=1e-3, atol=1e-4)


def test_fixed_batch_and_rerun_replace_only_their_files(tmp_path):
    out = tmp_path / "e1"
    export_model("e1", to=("onnx",), image_size=SIZE, batch_size=2, out=str(out))
    assert load_manifest(out)["input"]["shape"] == [2, 3, SIZE, SIZE]
    runner = load(str(out / "model.onnx"))
    assert runner.run(np.zeros((5, 3, SIZE, SIZE), np.float32)).shape == (5, 1000)  # chunks of 2
    (out / "notes.txt").write_text("mine")
    before = (out / "model.onnx").stat().st_mtime_ns
    export_model("e1", to=("torchscript",), image_size=SIZE, batch_size=2, out=str(out))
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.onnx").stat().st_mtime_ns == before


@pytest.mark.parametrize("path", sorted((FIXTURES / "mini").glob("*.safetensors")), ids=lambda p: p.stem)
def test_mini_networks_survive_export(path, tmp_path):
    """Official-format weights -> fused ONNX and TorchScript reproduce the reference outputs (odd sizes too)."""
    model, inputs, logits = load_mini(path)
    fuse(model)
    for size in (64, 72):
        x, ref = inputs[f"input_{size}"], logits[f"logits_{size}"].numpy()
        export_onnx(model, tmp_path / f"m{size}.onnx", size)
        export_torchscript(model, tmp_path / f"m{size}.ts", x)
        for f in (f"m{size}.onnx", f"m{size}.ts"):
            out = load(str(tmp_path / f)).run(x.numpy())
            assert np.linalg.norm(out - ref) / np.linalg.norm(ref) <= 1e-4, (f, path.stem)


def test_export_to_trt_stops_at_the_onnx_with_exit_3(tmp_path):
    result = run_cli("export", "b0", "--to", "trt", "--fp16", "--image-size", str(SIZE), "--out", str(tmp_path),
                     "--json")
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)
    assert data["next_steps"] and "lowformer build-engine" in data["next_steps"][0]
    assert {a["path"] for a in load_manifest(tmp_path)["artifacts"]} == {"model.onnx", "model_fp16.onnx"}


def test_bad_inputs_are_one_line_errors(tmp_path):
    assert_one_line_error(run_cli("export", "b7"), "unknown model")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    out = tmp_path / "out"
    out.mkdir()  # an existing folder: the refused runs must leave it as it was
    assert_one_line_error(run_cli("export", "b0", "--checkpoint", str(junk), "--out", str(out)), "cannot read checkpoint")
    torch.save({"stem.0.conv.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    assert_one_line_error(run_cli("export", "b0", "--checkpoint", str(tmp_path / "wrong.pt"), "--out", str(out)),
                          "does not match")
    assert_one_line_error(run_cli("export", "b0", "--int8", "--out", str(out)), "--calib-data")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_cli("export", "b0", "--out", str(blocker / "sub")), "cannot create folder")
    # The checkpoint errors come before the export writes anything (the reference is checked, NaN/Inf
    # included, before the folder is made): the refused runs leave it empty (no artifact, no
    # manifest, no staging folder or temporary).
    assert out.is_dir()
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == []


@pytest.mark.data
def test_fp16_keeps_cosine_on_real_images_with_real_weights(imagenet_val, effnet_lite0_checkpoint, tmp_path):
    result = export_model("timm:tf_efficientnet_lite0", to=("onnx",), fp16=True,
                          checkpoint=effnet_lite0_checkpoint, out=str(tmp_path), data=str(imagenet_val))
    fp16 = next(a for a in result.artifacts if a.precision == "fp16")
    assert fp16.parity.inputs == "random+images" and fp16.parity.cosine >= 0.999


def test_fp16_conversion_survives_shared_constants_casts_and_resize(tmp_path):
    """Three graph shapes that broke the FP16 ONNX of timm peers (PVTv2, CoAtNet, EfficientFormerV2):
    one zero bias shared by a Conv and a LayerNorm, a Cast-to-float feeding Sqrt, a Resize."""
    from onnx import TensorProto, helper, numpy_helper

    from lowformer.compare import compare_logits
    from lowformer.export.fp16 import convert_fp16

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "zeros"),  # Conv bias and LayerNorm bias
             numpy_helper.from_array(np.ones(8, np.float32), "ones"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w", "zeros"], ["y"], name="conv"),
             helper.make_node("LayerNormalization", ["y", "ones", "zeros"], ["z"], axis=-1, name="norm"),
             helper.make_node("Shape", ["z"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "one", "two"], ["channels"], name="slice"),
             helper.make_node("Cast", ["channels"], ["channels_f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Sqrt", ["channels_f"], ["root"], name="sqrt"),
             helper.make_node("Div", ["z", "root"], ["scaled"], name="div"),
             helper.make_node("Resize", ["scaled", "", "scales"], ["out"], mode="nearest", name="resize")]
    graph = helper.make_graph(nodes, "peerish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "fp32.onnx")
    convert_fp16(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx")

    import onnxruntime as ort

    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    outs = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for f in ("fp32.onnx", "fp16.onnx")]
    assert compare_logits(outs[0], outs[1]).cosine > 0.9999
    conv = next(n for n in onnx.load(tmp_path / "fp16.onnx").graph.node if n.op_type == "Conv")
    assert conv.input[2] == "zeros"  # the Conv kept the (now FP16) original; the LayerNorm has a copy


@pytest.mark.parametrize("c_in,c_out,k,s,p", [(64, 128, 4, 2, 1), (128, 256, 3, 1, 1), (8, 5, 6, 2, 2), (4, 6, 3, 3, 0)])
def test_conv_transpose_becomes_an_exact_conv_and_pixel_shuffle(c_in, c_out, k, s, p):
    """LowFormer's attention upsampling (k4 s2 p1, k3 s1 p1) and other shapes the rewrite accepts."""
    from lowformer.export.prepare import ConvTransposeAsConv

    torch.manual_seed(0)
    ct = torch.nn.ConvTranspose2d(c_in, c_out, k, s, p).eval()
    assert ConvTransposeAsConv.applies(ct)
    x = torch.randn(2, c_in, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(ConvTransposeAsConv(ct)(x), ct(x), rtol=1e-5, atol=1e-5)


def test_conv_transpose_rewrite_leaves_other_shapes_alone():
    from lowformer.export.prepare import ConvTransposeAsConv

    for ct in (torch.nn.ConvTranspose2d(4, 4, 3, 2, 1), torch.nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2),
               torch.nn.ConvTranspose2d(4, 4, 4, 2, 1, output_padding=1)):
        assert not ConvTransposeAsConv.applies(ct)
