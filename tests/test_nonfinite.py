"""Issue 33 item 1: NaN/Inf never passes. Every comparison (export parity, validate, validate --explain,
INT8 sensitivity, bench's sanity check) fails on a non-finite logit and names where it appeared; the
manifest is strict JSON; a model whose reference output is non-finite is refused before any export."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_ends_in_error, run_cli

SIZE = "64"


def _poisoned_checkpoint(path: Path, value: float) -> Path:
    from lowformer.models.factory import create_model

    sd = create_model("b0", None).state_dict()
    sd["stem.0.conv.weight"].view(-1)[0] = value
    torch.save(sd, path)
    return path


def _poison_onnx(path: Path) -> None:
    """One NaN in the first convolution weight of an exported ONNX (the stem's)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if len(i.dims) == 4)
    w = numpy_helper.to_array(init).copy()
    w.reshape(-1)[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))


def _poison_artifact(folder: Path) -> None:
    """model.onnx gives NaN; its manifest entry updated to the new bytes (as if exported so)."""
    from lowformer import artifacts
    from lowformer.core.files import sha256_file

    onnx_path = folder / "model.onnx"
    _poison_onnx(onnx_path)

    def apply(m):
        e = m.entry("model.onnx")
        e.sha256, e.size = sha256_file(onnx_path), onnx_path.stat().st_size
    artifacts.update(folder, apply)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from lowformer.data.synthetic import generate_images

    return generate_images(tmp_path_factory.mktemp("imgs") / "val", count=16, size=64)


@pytest.fixture(scope="module")
def clean_export(tmp_path_factory) -> Path:
    from lowformer.export.pipeline import export_model

    out = tmp_path_factory.mktemp("clean") / "b0"
    result = export_model("b0", to=("onnx",), image_size=64, out=str(out))
    assert result.exit_code == 0
    return out


@pytest.fixture
def folder(clean_export, tmp_path) -> Path:
    dst = tmp_path / "b0"
    shutil.copytree(clean_export, dst)
    return dst


def _strict(path: Path):
    from lowformer.core.files import loads_strict

    return loads_strict(path.read_text())


# --------------------------------------------------------------------------- the shared check


def test_nonfinite_names_where_kind_and_count():
    from lowformer.compare import nonfinite

    x = np.ones((4, 10), np.float32)
    assert nonfinite(x, "the artifact m.onnx") is None
    x[1, 2], x[3, 0] = np.nan, -np.inf
    assert nonfinite(x, "the artifact m.onnx") == "the artifact m.onnx gave non-finite logits (NaN, -Inf) on 2 of 4 inputs"


# --------------------------------------------------------------------------- strict JSON


def test_write_json_refuses_nan_naming_the_key(tmp_path):
    from lowformer.core.errors import LowformerError
    from lowformer.core.files import write_json

    with pytest.raises(LowformerError, match=r"artifacts\[0\]\.parity\.cosine is not a finite number"):
        write_json(tmp_path / "m.json", {"artifacts": [{"parity": {"cosine": float("nan")}}]})
    assert not (tmp_path / "m.json").exists()


def test_manifest_with_bare_nan_token_is_refused_in_one_line(folder, images):
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text.replace('"top1_agreement": 1.0', '"top1_agreement": NaN', 1))
    assert "NaN" in (folder / "manifest.json").read_text()
    r = run_cli("validate", str(folder), "--data", str(images))
    assert_ends_in_error(r, "manifest", "NaN")


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_export_refuses_a_nonfinite_reference_before_writing(tmp_path, value):
    ckpt = _poisoned_checkpoint(tmp_path / "bad.pt", value)
    out = tmp_path / "out"
    r = run_cli("export", "b0", "--checkpoint", str(ckpt), "--to", "onnx", "--image-size", SIZE, "--out", str(out))
    assert r.exit_code == 1
    assert_ends_in_error(r, "the reference model", "non-finite logits", "stem.0.conv.weight", "before any export")
    assert "cosine 1.000000" not in r.output + r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_export_fails_parity_of_a_nonfinite_artifact_and_says_so(tmp_path, monkeypatch):
    from lowformer.export import pipeline

    real = pipeline.export_onnx

    def poisoned(model, path, *a, **k):
        facts = real(model, path, *a, **k)
        _poison_onnx(Path(path))
        return facts
    monkeypatch.setattr(pipeline, "export_onnx", poisoned)
    out = tmp_path / "out"
    r = run_cli("export", "b0", "--to", "onnx", "--image-size", SIZE, "--out", str(out))
    assert r.exit_code == 1
    assert_ends_in_error(r, "the artifact model.onnx gave non-finite logits (NaN) on 4 of 4 parity inputs")
    parity = _strict(out / "manifest.json")["artifacts"][0]["parity"]  # strict JSON: nulls and the reason
    assert parity["passed"] is False and parity["cosine"] is None and parity["rel_l2"] is None
    assert "non-finite" in parity["failure"]


# --------------------------------------------------------------------------- validate (and --explain)


def test_validate_fails_a_nonfinite_artifact_and_records_strict_json(folder, images):
    _poison_artifact(folder)
    r = run_cli("validate", str(folder), "--data", str(images))
    assert r.exit_code == 1
    assert "the artifact model.onnx gave non-finite logits (NaN) on 16 of 16 images" in r.output + r.stderr
    v = _strict(folder / "manifest.json")["artifacts"][0]["validation"]
    assert v["passed"] is False and v["cosine"] is None and v["agreement"] is None
    assert any("non-finite" in f for f in v["failures"])


def test_validate_refuses_a_nonfinite_reference(folder, images, tmp_path):
    ckpt = _poisoned_checkpoint(tmp_path / "bad.pt", float("nan"))
    r = run_cli("validate", str(folder), "--data", str(images), "--reference", "b0", "--checkpoint", str(ckpt))
    assert r.exit_code == 1
    assert_ends_in_error(r, "the reference", "non-finite logits (NaN) on 16 of 16 images")
    assert "validation" not in _strict(folder / "manifest.json")["artifacts"][0]


def test_explain_names_the_first_block_with_nonfinite_values(folder, images):
    _poison_artifact(folder)
    r = run_cli("validate", str(folder), "--data", str(images), "--explain", "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout, parse_constant=lambda t: pytest.fail(f"bare {t} in the JSON"))
    ex = out["explain"]["artifacts"][0]
    assert ex["first_nonfinite"] == {"block": ex["blocks"][0]["block"], "side": "artifact", "images": 16}
    assert ex["first_diverging"] == ex["first_nonfinite"]["block"]
    assert ex["blocks"][0]["cosine"] is None
    recorded = _strict(folder / "manifest.json")["artifacts"][0]
    assert recorded["explain"]["first_nonfinite"]["side"] == "artifact"


# --------------------------------------------------------------------------- sensitivity, bench


def test_sensitivity_scores_a_nonfinite_variant_as_a_failure():
    from lowformer.calibrate.sensitivity import EvalData, harm_order

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 10)).astype(np.float32)
    data = EvalData(np.zeros((8, 3, 4, 4), np.float32), None, ref, None)
    bad = ref.copy()
    bad[2, 3] = np.inf
    m = data.score(bad)
    assert "the INT8 variant gave non-finite logits (+Inf) on 1 of 8 held-out images" == m["failure"]
    assert m["drop"] >= 100 and np.isfinite(m["cosine"])
    good = data.score(ref + 0.01)
    rows = [{"block": "a", **good}, {"block": "b", **m}]
    assert harm_order(rows, "quantize-one")[0] == "b"


def test_sensitivity_refuses_a_nonfinite_fp32_reference(folder, monkeypatch):
    from types import SimpleNamespace

    import lowformer.calibrate.sensitivity as sens
    from lowformer.core.errors import LowformerError

    _poison_onnx(folder / "model.onnx")
    monkeypatch.setattr(sens, "load_images", lambda samples, pre: np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(LowformerError, match="the FP32 reference model.onnx gave non-finite logits"):
        sens.EvalData.build(folder / "model.onnx", SimpleNamespace(samples=[1, 2], labelled=False, imagenet=False), None)


def test_bench_refuses_to_time_a_nonfinite_model(tmp_path):
    ckpt = _poisoned_checkpoint(tmp_path / "bad.pt", float("nan"))
    r = run_cli("bench", "b0", "--checkpoint", str(ckpt), "--image-size", SIZE, "--iterations", "2",
                "--warmup", "0", "--no-record")
    assert r.exit_code == 1
    assert_ends_in_error(r, "non-finite outputs (NaN)")
