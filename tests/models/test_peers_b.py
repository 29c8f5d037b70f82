"""Peer backbones FFNet, EdgeViT and FAT (lowformer.models.peers) against their official code and papers.

The fixtures (tests/fixtures/peers/<model>.json) were recorded once by running the authors' code
(outside this repository) at the commit named in each file's "source": the state-dict manifest, the
parameter count, FlopCounterMode MACs and, for the benchmarked sizes, the logits of a seeded random model.
"""
from __future__ import annotations

import argparse
import io
import json
import math
from typing import Dict, Tuple

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import reparameterize_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lowformer.models.peers  # noqa: F401  (registers the peers with timm)
from conftest import FIXTURES
from lowformer.models.peers import edgevit, fat, ffnet

PEERS = FIXTURES / "peers"
MODULES = {"edgevit": edgevit, "ffnet": ffnet, "fat": fat}
BENCHMARKED = ["edgevit_xs", "ffnet_1", "fat_b0"]  # the sizes the LowFormer paper compares with
ALL = ["edgevit_xxs", "edgevit_xs", "edgevit_s", "ffnet_1", "ffnet_2", "ffnet_3", "ffnet_4",
       "fat_b0", "fat_b1", "fat_b2", "fat_b3"]
# Building or counting these takes several seconds on two cores.
HEAVY = {"ffnet_2", "ffnet_3", "ffnet_4", "fat_b3", "edgevit_s"}

# Where a paper's printed figure and the official code disagree by more than 1%, the relative gap allowed
# (the code wins: its state dict is what checkpoints have). See PUBLISHED in each model file.
KNOWN_GAPS: Dict[Tuple[str, str], float] = {
    ("edgevit_xs", "params_m"): 0.011,  # 6.770M in the code vs 6.7 printed (+1.04%)
    ("edgevit_s", "params_m"): 0.19,  # 13.11M in the code (depths 1-2-5-3) vs 11.1 printed
    ("ffnet_1", "gmacs"): 0.03,  # 2.985 GMACs (fused, 256) in the code vs 2.9 printed (+2.9%)
}


def _heavy(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _family(name: str):
    return MODULES[name.split("_")[0]]


def _fixture(name: str) -> dict:
    return json.loads((PEERS / f"{name}.json").read_text())


def _build(name: str) -> nn.Module:
    return timm.create_model(name).eval()


def _seeded(model: nn.Module) -> torch.Tensor:
    """Load the fixture recipe's random weights into `model`; return its input (see "reference.recipe")."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            t = torch.randn(v.shape, generator=g) * 0.1
            if k.endswith("running_var"):
                t = t.abs() + 0.5
            if k.endswith("layer_scale"):
                t = t + 1
            state[k] = t
        else:
            state[k] = v
    model.load_state_dict(state)
    return torch.randn(1, 3, 224, 224, generator=g)


def _macs(model: nn.Module, image_size: int) -> Tuple[int, Dict[str, int]]:
    """MACs as this project counts them (lowformer.models.complexity.count_macs: FlopCounterMode // 2),
    with the per-operator split."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    by_op = {str(op).split(".")[1]: n // 2 for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() // 2, by_op


def _close_to_paper(name: str, key: str, measured: float) -> None:
    """Within 1%, or within the printed precision (one decimal: +-0.05), or within a documented gap."""
    published = _family(name).PUBLISHED[name][key]
    rel = abs(measured - published) / published
    allowed = KNOWN_GAPS.get((name, key), 0.01)
    assert rel <= allowed or abs(measured - published) <= 0.05 + 1e-9, (name, key, measured, published)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# --- registration and preprocessing -------------------------------------------------------------------

def test_names_are_registered_and_new_to_timm():
    listed = set(timm.list_models())
    for name in ALL:
        assert name in listed
        # timm's own architectures are all re-exported by timm.models: none of ours may shadow one.
        assert not hasattr(timm.models, name), f"{name} collides with a timm model"
        assert timm.models.get_arch_name(name) == name


@pytest.mark.parametrize("name,size,crop_pct", [("edgevit_xs", 224, 0.875), ("fat_b0", 224, 0.875),
                                                ("ffnet_1", 256, 0.9), ("ffnet_3", 256, 0.95)])
def test_pretrained_cfg_is_the_official_eval_transform(name, size, crop_pct):
    cfg = timm.get_pretrained_cfg(name)
    assert cfg.input_size == (3, size, size) and cfg.crop_pct == crop_pct
    assert cfg.interpolation == "bicubic"
    assert cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN and cfg.std == timm.data.IMAGENET_DEFAULT_STD
    if name in BENCHMARKED:
        model = _build(name)
        assert model.pretrained_cfg["input_size"] == cfg.input_size
        assert isinstance(model.get_submodule(cfg.first_conv), nn.Conv2d) and model.get_classifier() is model.head


# --- faithfulness to the official code -------------------------------------------------------------------

@pytest.mark.parametrize("name", _heavy(ALL))
def test_state_dict_equals_the_official_manifest(name):
    fixture = _fixture(name)
    model = _build(name)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == fixture["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == fixture["params"]


@pytest.mark.parametrize("name", BENCHMARKED)
def test_forward_equals_the_official_code(name):
    """Seeded random weights (BN statistics and layer scales included) give the official code's logits."""
    reference = _fixture(name)["reference"]
    model = _build(name)
    x = _seeded(model)
    with torch.no_grad():
        logits = model(x)[0]
    np.testing.assert_allclose(logits.numpy(), np.array(reference["logits"], dtype=np.float32),
                               rtol=1e-4, atol=1e-5)


def test_ffnet_official_checkpoint_format_loads(tmp_path):
    """timm train.py checkpoints: {"state_dict", "args": Namespace, ...}, possibly with a DDP prefix."""
    source = _build("ffnet_1")
    _seeded(source)
    path = tmp_path / "ffnet_1.pth.tar"
    torch.save({"epoch": 1, "arch": "ffnet_1", "args": argparse.Namespace(model="ffnet_1"),
                "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = _build("ffnet_1")
    target.load_pretrained(str(path))
    for k, v in source.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k


# --- params and MACs vs the papers -------------------------------------------------------------------------

@pytest.mark.parametrize("name", _heavy(ALL))
def test_params_match_the_paper(name):
    model = _build(name)
    if name.startswith("ffnet"):
        model = reparameterize_model(model)  # FFNet's table counts the fused (inference) network
    _close_to_paper(name, "params_m", sum(p.numel() for p in model.parameters()) / 1e6)


@pytest.mark.parametrize("name", [n if n in BENCHMARKED else pytest.param(n, marks=pytest.mark.slow) for n in ALL])
def test_macs_match_the_official_code_and_the_paper(name):
    model = _build(name)
    counts = {int(res): _macs(model, int(res)) for res in _fixture(name)["macs_flopcounter"]}
    assert {str(r): c[0] for r, c in counts.items()} == _fixture(name)["macs_flopcounter"]
    if name.startswith("edgevit"):  # fvcore, attention matmuls included: same as ours
        comparable = counts[224][0]
    elif name.startswith("fat"):  # the paper leaves out FASA's two matmuls (its only bmm ops)
        comparable = counts[224][0] - counts[224][1].get("bmm", 0)
    else:  # FFNet: fused network at the published resolution
        comparable = _macs(reparameterize_model(model), int(ffnet.PUBLISHED[name]["resolution"]))[0]
    _close_to_paper(name, "gmacs", comparable / 1e9)


# --- export ------------------------------------------------------------------------------------------------

def _export_checks(name: str, image_size: int = 224) -> None:
    model = _build(name)
    _seeded(model)
    x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(model, x, check_trace=False)  # compared below; the check re-traces (slow)
        assert _rel_err(scripted(x).numpy(), ref.numpy()) < 1e-5
        assert _rel_err(traced(x).numpy(), ref.numpy()) < 1e-5
    import onnxruntime as ort

    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], do_constant_folding=True)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    assert _rel_err(out, ref.numpy()) < 1e-4


@pytest.mark.parametrize("name", BENCHMARKED)
def test_script_trace_and_onnx_match_pytorch(name):
    _export_checks(name, image_size=128)  # same graph as at 224 (every shape is read off tensors), 3x cheaper


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_script_trace_and_onnx_match_pytorch_at_224(name):
    _export_checks(name, image_size=224)


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKED)
def test_project_onnx_exporter_handles_peers(name, tmp_path):
    """The project's writer (GroupNorm / ConvTranspose rewrites, onnxsim, checker, dynamic batch)."""
    import onnxruntime as ort
    from lowformer.export.onnx_export import export_onnx

    model = _build(name)
    _seeded(model)
    info = export_onnx(model, tmp_path / "m.onnx", image_size=224)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x).numpy()
    out = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    assert info["dynamic_batch"] and _rel_err(out, ref) < 1e-4


# --- export-friendly rewrites are the same function ---------------------------------------------------

def _randomize_norms(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(n, generator=g))


def _fasa_paper(m: fat.FASA, x: torch.Tensor, window: int, heads: int) -> torch.Tensor:
    """FASA as the paper writes it, in plain PyTorch: per-head softmax(Q K^T / sqrt(d)) V against keys of the
    ceil(h / window)-sized refined downsampling, local L = dwconv(Q), out = 1x1((L*sig(G)) * (G*sig(L)))."""
    b, c, h, w = x.shape
    d = c // heads
    q = m.q(x)
    pooled = m.pool(x)
    assert pooled.shape[-2:] == (math.ceil(h / window), math.ceil(w / window))
    kv = m.kv(pooled)
    k, v = kv[:, :c], kv[:, c:]
    heads_out = []
    for i in range(heads):
        sl = slice(i * d, (i + 1) * d)
        qi, ki, vi = (t[:, sl].flatten(2).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(d), dim=-1)
        heads_out.append((attn @ vi).transpose(1, 2).reshape(b, d, h, w))
    glob = torch.cat(heads_out, 1)
    ks = m.local_mixer.kernel_size[0]
    local = F.conv2d(q, m.local_mixer.weight, m.local_mixer.bias, padding=ks // 2, groups=c)
    return m.mixer((local * torch.sigmoid(glob)) * (glob * torch.sigmoid(local)))


@pytest.mark.parametrize("window", [1, 2, 4, 8])
def test_fat_attention_equals_the_paper_formula(window):
    torch.manual_seed(0)
    m = fat.FASA(dim=24, kernel_size=5, num_heads=4, window_size=window).eval()
    _randomize_norms(m)
    x = torch.randn(2, 24, 15, 13)  # not multiples of the window: the ceil of the official code
    with torch.no_grad():
        torch.testing.assert_close(m(x), _fasa_paper(m, x, window, 4), rtol=1e-4, atol=1e-5)


def test_fat_trace_is_not_specialised_to_its_example_size():
    model = _build("fat_b0")
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 128, 128), check_trace=False)
        x = torch.randn(1, 3, 96, 96)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["ffnet_1", pytest.param("ffnet_2", marks=pytest.mark.slow)])
def test_ffnet_reparameterized_equals_training_form(name):
    model = _build(name)
    _randomize_norms(model)
    fused = reparameterize_model(model)
    assert not any(isinstance(m, (ffnet.ConvNorm, ffnet.RepDwConv, ffnet.NormConvSkip)) for m in fused.modules())
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)


def test_edgevit_runs_at_other_resolutions():
    """The official patch embedding asserts 224; the model itself only needs sides divisible by 32."""
    model = _build("edgevit_xxs")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
        assert model.forward_features(torch.randn(1, 3, 160, 160)).shape == (1, 288, 5, 5)
