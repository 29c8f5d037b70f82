"""Every variant scripts, traces and exports to ONNX with eager's outputs; fusion keeps them too."""
import warnings

import numpy as np
import pytest
import torch

from lowformer import RELEASED, create_model, fuse
from lowformer.export.onnx_export import export_onnx
from lowformer.models.fusion import count_batchnorms

FAST = ["b0", "e3"]  # attention + MLP, attention only
SLOW = [v for v in RELEASED if v not in FAST]


def _rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(a))


def _check_compiles(variant, size, tmp_path):
    import onnxruntime as ort

    model = create_model(variant)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model(x)
        assert _rel(ref, torch.jit.script(model)(x)) < 1e-5
        assert _rel(ref, torch.jit.trace(model, x)(x)) < 1e-5
    path = tmp_path / f"{variant}-{size}.onnx"
    export_onnx(model, path, size, do_simplify=False)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert _rel(ref, torch.from_numpy(out)) < 1e-4


@pytest.mark.parametrize("size", [224, 200])
@pytest.mark.parametrize("variant", ["b0", pytest.param("e3", marks=pytest.mark.heavy)])  # e3: 10 s a size
def test_script_trace_onnx(variant, size, tmp_path):
    _check_compiles(variant, size, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 200])
@pytest.mark.parametrize("variant", SLOW)
def test_script_trace_onnx_all_variants(variant, size, tmp_path):
    _check_compiles(variant, size, tmp_path)


@pytest.mark.parametrize("variant", ["b1", "e1"])
def test_fuse_folds_every_batchnorm_and_keeps_outputs_and_names(variant, tmp_path):
    model = create_model(variant)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
    names_before = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    bns = count_batchnorms(model)
    report = fuse(model)
    assert report.folded == bns > 0 and count_batchnorms(model) == 0
    assert names_before == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    with torch.no_grad():
        assert _rel(ref, model(x)) <= 1e-5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert _rel(ref, torch.jit.script(model)(x)) <= 1e-5
    facts = export_onnx(model, tmp_path / "fused.onnx", 96)
    assert "BatchNormalization" not in facts["ops"]


def test_fuse_keeps_timm_batchnorm_activations():
    """timm's BatchNormAct2d folds into the conv but its activation must stay."""
    model = create_model("timm:tf_efficientnet_lite0")
    for m in model.modules():  # non-trivial statistics so that a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
        report = fuse(model)
        assert report.folded > 0
        np.testing.assert_allclose(model(x).numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
