"""`lowformer validate`: accuracy parity of artifacts against the PyTorch reference on real images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowformer.core.errors import LowformerError
from helpers import RecordingProgress, manifest_dict as load_manifest
from lowformer.artifacts import ArtifactEntry, Manifest
from lowformer.validate import reference_model
from lowformer.data.preprocess import Preprocessing
from lowformer.validate import Gate, near_chance, validate
from helpers import assert_one_line_error, run_cli

TINY = "timm:test_efficientnet"  # ~0.1 M params: real network, milliseconds per image at 32x32
CLASSES = ["n01440764", "n01443537", "n01484850"]  # ImageNet classes 0, 1, 2


def _export(out: Path, model: str, checkpoint=None, image_size=224, batch_size=None, to=("onnx",)) -> Path:
    from lowformer.export.pipeline import export_model

    result = export_model(model, to=to, checkpoint=checkpoint, image_size=image_size,
                          batch_size=batch_size, out=str(out))
    assert not result.failed
    return out


def _images(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(CLASSES):
        for i in range(per_class):
            (root / wnid).mkdir(parents=True, exist_ok=True)
            w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / wnid / f"{c}_{i}.JPEG")
    return root


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("tiny") / "export", TINY, image_size=32, to=("onnx", "torchscript"))


@pytest.fixture()
def tiny(tiny_export, tmp_path) -> Path:
    """A private copy of the tiny export folder (validation writes into its manifest)."""
    return Path(shutil.copytree(tiny_export, tmp_path / "export"))


@pytest.fixture()
def images(tmp_path) -> Path:
    return _images(tmp_path / "val")


def _independent_top1(model, paths, labels, transform) -> float:
    with torch.inference_mode():
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        pred = model(x).argmax(1).numpy()
    return 100.0 * float((pred == np.asarray(labels)).mean())


# --- small synthetic runs -------------------------------------------------------------------------


def test_tiny_artifacts_match_reference_and_are_recorded(tiny, images, tmp_path):
    progress = RecordingProgress()
    report = tmp_path / "out" / "report.json"
    result = validate([str(tiny)], images, batch_size=5, workers=1, report=report, progress=progress)
    seen = progress.seen
    assert result.passed and result.warnings == []  # random-init weights: no near-chance warning
    assert sorted(a.name for a in result.artifacts) == ["model.onnx", "model.ts"]
    for art in result.artifacts:
        assert art.images == result.reference.images == 12
        assert art.agreement == 1.0 and art.top1_delta == 0.0 and art.flipped == []
        assert art.cosine > 0.99999 and art.max_abs < 1e-3
        assert art.gate == {"max_top1_drop": None, "min_agreement": 0.999}
    assert seen[-1] == (12, 12) and len(seen) == 3

    manifest = load_manifest(tiny)
    for entry in manifest["artifacts"]:
        v = entry["validation"]
        assert v["passed"] and v["images"] == 12 and v["agreement"] == 1.0
        assert v["label_source"].startswith("ImageNet-1k wnid order")
        assert v["data"] == str(images.resolve())
    saved = json.loads(report.read_text())
    assert saved["passed"] and {a["name"]: a["top1"] for a in saved["artifacts"]} == \
        {a.name: a.top1 for a in result.artifacts}
    assert saved["data"]["images"] == 12 and saved["data"]["bad_images"] == []


def test_top1_counts_exactly_the_images_labelled_with_the_models_own_prediction(tiny, images, tmp_path):
    # Predictions made outside lowformer (model + torchvision, one image at a time) become the labels
    # of 7 images; the other 5 get another class. Any preprocessing or label mix-up changes 7/12.
    manifest = Manifest.load(tiny)
    model = reference_model(manifest, tiny)
    tf = Preprocessing.from_dict(manifest.preprocessing).transform()
    paths = sorted(images.rglob("*.JPEG"))
    with torch.inference_mode():
        preds = [int(model(tf(Image.open(p).convert("RGB"))[None]).argmax()) for p in paths]
    lines = [f"{p.parent.name}/{p.name} {pred if i < 7 else (pred + 1) % 1000}"
             for i, (p, pred) in enumerate(zip(paths, preds))]
    (tmp_path / "labels.txt").write_text("\n".join(lines))
    result = validate([str(tiny / "model.onnx")], images, labels=tmp_path / "labels.txt", batch_size=4,
                      workers=0, record=False)
    assert result.reference.top1 == pytest.approx(100 * 7 / 12)
    assert result.artifacts[0].top1 == pytest.approx(100 * 7 / 12)
    assert "class indices" in result.data["label_source"]


def test_fixed_batch_artifact_runs_in_chunks(tmp_path, images):
    fixed = _export(tmp_path / "fixed", TINY, image_size=32, batch_size=2)
    assert load_manifest(fixed)["input"]["shape"][0] == 2
    result = validate([str(fixed / "model.onnx")], images, batch_size=5, workers=0)  # 5 = 2 + 2 + 1 padded
    assert result.passed and result.artifacts[0].images == 12 and result.artifacts[0].agreement == 1.0


def _add_permuted_artifact(folder: Path) -> str:
    """A second fp32 ONNX whose classifier rows are rolled: it never predicts the reference's class."""
    manifest = Manifest.load(folder)
    model = reference_model(manifest, folder)
    with torch.no_grad():
        head = model.get_classifier()
        head.weight.copy_(head.weight.roll(1, 0))
        head.bias.copy_(head.bias.roll(1, 0))
    size = manifest.input_shape[-1]
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(folder / "model_bad.onnx"), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    manifest.upsert(ArtifactEntry("model_bad.onnx", "onnx", "fp32"))
    manifest.save(folder)
    return str(folder / "model_bad.onnx")


def test_gate_fails_when_predictions_flip(tiny, images):
    bad = _add_permuted_artifact(tiny)
    result = validate([str(tiny)], images, batch_size=6, workers=0)
    by_name = {a.name: a for a in result.artifacts}
    assert by_name["model.onnx"].passed and by_name["model.ts"].passed
    flipped = by_name["model_bad.onnx"]
    assert not flipped.passed and not result.passed
    assert flipped.agreement == 0.0 and len(flipped.flipped) == 12
    assert "agreement" in flipped.failures[0]
    assert {f["path"] for f in flipped.flipped} == {str(p) for p in images.rglob("*.JPEG")}
    entries = {a["path"]: a["validation"] for a in load_manifest(tiny)["artifacts"]}
    assert entries["model_bad.onnx"]["passed"] is False and entries["model.onnx"]["passed"] is True
    # The gate is the user's to set.
    assert validate([bad], images, workers=0, gate_agreement=0.0, record=False).passed


def test_unreadable_image_fails_unless_skipped(tiny, images):
    (images / CLASSES[0] / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(LowformerError, match="broken.JPEG.*skip_bad_images"):
        validate([str(tiny)], images, workers=0, record=False)
    result = validate([str(tiny / "model.onnx")], images, workers=1, skip_bad_images=True, record=False)
    assert result.passed and result.artifacts[0].images == 12
    assert [Path(b["path"]).name for b in result.data["bad_images"]] == ["broken.JPEG"]
    assert any("unreadable" in w for w in result.warnings)


def test_grayscale_and_flat_folder_with_label_file(tiny, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(6):
        img = Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8))
        (img.convert("L") if i % 2 else img).save(flat / f"im{i}.jpg")
        lines.append(f"im{i}.jpg {CLASSES[i % 3]}")
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")
    result = validate([str(tiny / "model.onnx")], flat, labels=tmp_path / "labels.txt", workers=0)
    assert result.passed and result.reference.images == 6 and result.data["layout"] == "flat+labels"
    recorded = {a["path"]: a.get("validation") for a in load_manifest(tiny)["artifacts"]}
    assert recorded["model.onnx"]["images"] == 6 and recorded["model.ts"] is None


def test_limit_is_a_stratified_subset(tiny, images):
    result = validate([str(tiny / "model.ts")], images, limit=6, workers=0, record=False)
    assert result.reference.images == 6 and result.data["limit"] == 6


def test_bare_artifact_needs_a_reference(tiny, images, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tiny / "model.onnx", lone / "model.onnx")
    with pytest.raises(LowformerError, match="--reference"):
        validate([str(lone / "model.onnx")], images, workers=0)
    result = validate([str(lone / "model.onnx")], images, workers=0, reference=TINY,
                      checkpoint=str(tiny / "random-init.pt"), crop_ratio=32 / 33, interpolation="bicubic",
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert result.passed and result.preprocessing["crop"] == 32 and result.preprocessing["resize"] == 33
    assert result.warnings == []  # 12 images: too few to call the reference near chance


def test_near_chance_with_trained_weights_warns(tmp_path):
    from lowformer.models.factory import create_model

    ckpt = tmp_path / "weights.pt"
    torch.save(create_model(TINY).state_dict(), ckpt)  # "trained" as far as the manifest knows
    folder = _export(tmp_path / "export", TINY, checkpoint=str(ckpt), image_size=32)
    result = validate([str(folder)], _images(tmp_path / "val", per_class=7), workers=0, record=False)
    assert result.reference.top1 < 20
    assert any("class order" in w for w in result.warnings)


def test_default_gates_per_precision():
    assert Gate.for_precision("fp32").failures(-5.0, 0.9995) == []
    assert Gate.for_precision("fp32").failures(0.0, 0.998)
    assert Gate.for_precision("fp16").failures(-0.2, 0.995) == []
    assert len(Gate.for_precision("fp16").failures(-0.3, 0.99)) == 2
    assert Gate.for_precision("int8").failures(-1.0, 0.5) == []
    assert Gate.for_precision("int8").failures(-1.1, 1.0)
    assert Gate.for_precision("int8", max_top1_drop=2.0).failures(-1.5, 1.0) == []
    assert Gate.for_precision("int8", min_agreement=0.99).failures(0.0, 0.98)


def test_near_chance_rule():
    assert near_chance(0.0, 1000, 1300) and near_chance(1.0, 1000, 1300)
    assert not near_chance(70.0, 1000, 200) and not near_chance(5.0, 1000, 10)
    assert near_chance(11.0, 10, 1000) and not near_chance(60.0, 10, 1000)


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_bad_data_path_is_one_line(tiny, tmp_path):
    result = run_cli("validate", str(tiny), "--data", str(tmp_path / "no-such-folder"))
    assert_one_line_error(result, "no such data folder")


def test_cli_bad_mean_is_one_line(tiny, images):
    assert_one_line_error(run_cli("validate", str(tiny), "--data", str(images), "--mean", "0.5,0.5"), "--mean")


def test_cli_json_and_exit_codes(tiny, images, tmp_path):
    ok = run_cli("validate", str(tiny), "--data", str(images), "--workers", "0", "--json",
                 "--report", str(tmp_path / "r.json"))
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["passed"] and doc["artifacts"][0]["agreement"] == 1.0
    assert json.loads((tmp_path / "r.json").read_text())["artifacts"][0]["top1"] == doc["artifacts"][0]["top1"]

    _add_permuted_artifact(tiny)
    failed = run_cli("validate", str(tiny), "--data", str(images), "--workers", "0")
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "model_bad.onnx" in failed.stderr and "agreement" in failed.stderr


# --- real ImageNet weights on real ImageNet images --------------------------------------------------


@pytest.fixture(scope="module")
def lite0_export(tmp_path_factory, effnet_lite0_checkpoint) -> Path:
    return _export(tmp_path_factory.mktemp("lite0") / "export", "timm:tf_efficientnet_lite0",
                   checkpoint=effnet_lite0_checkpoint)


def _timm_torchvision_top1(checkpoint: str, paths) -> float:
    """An evaluation that shares no code with lowformer: timm's model, transform and class list."""
    import timm
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    transform = create_transform(**resolve_data_config({}, model=model))
    wnids = ImageNetInfo().label_names()
    labels = [wnids.index(Path(p).parent.name) for p in paths]
    correct = 0
    for i in range(0, len(paths), 25):
        correct += _independent_top1(model, paths[i:i + 25], labels[i:i + 25], transform) * len(paths[i:i + 25])
    return correct / len(paths)


def _check_lite0(lite0_export, imagenet_val, checkpoint, limit):
    result = validate([str(lite0_export)], imagenet_val, limit=limit, batch_size=25, workers=1,
                      record=False)
    n = result.reference.images
    assert n == (limit or 1300)
    assert result.reference.top1 > 70, result.reference.top1  # ~87% on this subset: labels are right
    onnx = result.artifacts[0]
    assert onnx.agreement >= 0.999 and onnx.passed, onnx
    from lowformer.data.imagenet import list_samples, stratified_subset

    paths = [s.path for s in stratified_subset(list_samples(imagenet_val).samples, limit)]
    assert abs(result.reference.top1 - _timm_torchvision_top1(checkpoint, paths)) <= 0.1


# imagenet_val first: without the images the test skips (saying where it looked) before the export.
@pytest.mark.heavy
@pytest.mark.data
def test_lite0_reference_matches_timm_and_onnx_agrees(imagenet_val, lite0_export, effnet_lite0_checkpoint):
    _check_lite0(lite0_export, imagenet_val, effnet_lite0_checkpoint, limit=100)


@pytest.mark.slow
@pytest.mark.data
def test_lite0_full_1300(imagenet_val, lite0_export, effnet_lite0_checkpoint):
    _check_lite0(lite0_export, imagenet_val, effnet_lite0_checkpoint, limit=None)


@pytest.mark.slow
@pytest.mark.data
def test_label_order_mistake_is_flagged(imagenet_val, lite0_export, tmp_path):
    from lowformer.data.imagenet import list_samples, stratified_subset

    picked = stratified_subset(list_samples(imagenet_val).samples, 40)
    # Off by one, as with a 1-based label file: every label names the wrong class.
    (tmp_path / "shifted.txt").write_text("".join(f"{s.path.parent.name}/{s.path.name} {(s.label + 1) % 1000}\n"
                                                  for s in picked))
    result = validate([str(lite0_export)], imagenet_val, labels=tmp_path / "shifted.txt", workers=0,
                      record=False)
    assert result.reference.top1 < 5 and any("class order" in w for w in result.warnings)


def test_calibration_images_are_those_of_the_same_folder_only(tmp_path):
    """Held out: the images an artifact's manifest says calibrated it, when validation reads that folder."""
    from lowformer.data.imagenet import Sample
    from lowformer.validate import calibration_images

    data = tmp_path / "val"
    samples = [Sample(data / "a" / f"{i}.png", 0) for i in range(4)]
    entry = ArtifactEntry("m.onnx", "onnx", "int8", facts={"calibration": {"folder": str(data),
                                                                              "files": ["a/1.png", "a/3.png"]}})
    other = ArtifactEntry("m.onnx", "onnx", "int8", facts={"calibration": {"folder": str(tmp_path / "train"),
                                                                              "files": ["a/0.png"]}})
    data.mkdir()
    assert calibration_images([("m.onnx", entry, {})], data, samples) == [samples[1], samples[3]]
    assert calibration_images([("m.onnx", other, {}), ("x.onnx", None, None)], data, samples) == []
    assert calibration_images([("m.onnx", entry, {})], str(data) + "/", samples) == [samples[1], samples[3]]


@pytest.mark.heavy  # two validate processes, ~6 s: make test's budget
def test_two_concurrent_validate_runs_both_record_their_results(tiny, images):
    """Two `lowformer validate` processes writing into one export folder: neither erases the other."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "lowformer", "validate", "--data", str(images), "--workers", "0"]
    procs = [subprocess.Popen(cmd + [str(tiny / name)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for name in ("model.onnx", "model.ts")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    recorded = {a["path"]: a.get("validation") for a in load_manifest(tiny)["artifacts"]}
    assert recorded["model.onnx"] and recorded["model.ts"], recorded


def test_interval_and_mcnemar_match_an_independent_computation():
    """A hand-built 2x2 table: 100 images, both right 80, only the reference 7, only the artifact 2, both wrong 11."""
    from math import comb

    from lowformer.compare import drop_decision, mcnemar_exact, paired_bootstrap_delta

    ref = np.array([1] * 80 + [1] * 7 + [0] * 2 + [0] * 11, dtype=bool)
    art = np.array([1] * 80 + [0] * 7 + [1] * 2 + [0] * 11, dtype=bool)
    # exact McNemar by hand: two-sided binomial tail of 2 successes in 9 at p = 1/2
    by_hand = min(1.0, 2 * sum(comb(9, k) for k in range(0, 3)) / 2 ** 9)
    assert abs(mcnemar_exact(7, 2) - by_hand) < 1e-12 and mcnemar_exact(0, 0) == 1.0
    lo, hi = paired_bootstrap_delta(ref, art, n_boot=4000)
    # the delta is -5 pt; its paired standard error is sqrt(b + c - (b - c)^2 / n) / n = 2.9 pt
    se = (9 - 25 / 100) ** 0.5 / 100 * 100
    assert lo < -5 < hi and abs((hi - lo) / 2 - 1.96 * se) < 0.6, (lo, hi, se)
    assert "contains the 1 pt gate" in drop_decision((-1.1, 0.0), 1.0)
    assert "the gate holds" in drop_decision((-0.4, 0.3), 1.0) and "is real" in drop_decision((-3, -1.5), 1.0)
