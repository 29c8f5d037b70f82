"""Every failure is one `error:` line, in one format (issue 33, item 5): gate failures, Click's usage
errors, interrupts, unreadable images, non-image inputs; --skip-bad-images names what it skipped;
`validate --lock-timeout`; duplicate manifest entries; no empty calib-cache/ after a failed INT8."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_ends_in_error, assert_one_line_error, run_cli

TINY = "timm:test_efficientnet"  # ~0.1 M params, 1000 classes
SIZE = 64
CLASSES = ["n01440764", "n01443537", "n01484850"]  # ImageNet classes 0, 1, 2: real labels


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    from lowformer.export.pipeline import export_model

    out = tmp_path_factory.mktemp("errfmt") / "export"
    assert not export_model(TINY, to=("onnx",), image_size=SIZE, out=str(out)).failed
    return out


@pytest.fixture()
def tiny(tiny_export, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_export, tmp_path / "export"))


@pytest.fixture()
def images(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "val"
    for c, wnid in enumerate(CLASSES):
        (root / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(root / wnid / f"{c}_{i}.JPEG")
    return root


def _validate(*args: str):
    return run_cli("validate", *args, "--workers", "0")


def test_gate_failure_ends_in_an_error_line(tiny, images):
    r = _validate(str(tiny), "--data", str(images), "--gate-top1-drop", "-100")
    assert r.exit_code == 1
    assert_ends_in_error(r, "model.onnx:", "top-1 dropped")


@pytest.mark.parametrize("args, fragment", [
    (("export",), "Missing argument"),
    (("export", "b0", "--no-such-option"), "--no-such-option"),
    (("validate", "x", "--data", "y", "--batch-size", "0"), "--batch-size"),
    (("no-such-command",), "No such command"),
    (("export", "b0", "--batch-size", "2", "--dynamic-batch", "--out", "never-written"), "exclude each other"),
])
def test_usage_errors_are_one_error_line_with_exit_2(args, fragment):
    r = run_cli(*args)
    assert_one_line_error(r, fragment)
    assert r.exit_code == 2
    assert "Usage:" not in r.output and "Try " not in r.output


def test_help_and_version_still_exit_0():
    helped = run_cli("--help")
    assert helped.exit_code == 0 and "2 for a usage error" in " ".join(helped.output.split())
    assert run_cli("--version").exit_code == 0


def test_interrupt_is_an_error_line_with_exit_130(monkeypatch):
    import lowformer.models.catalog as catalog

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(catalog, "model_info", interrupted)
    r = run_cli("info", "b0")
    assert r.exit_code == 130
    assert_one_line_error(r, "interrupted")


def test_a_stop_is_an_error_line_with_exit_143(monkeypatch):
    """SIGTERM mid-command (kill, a job scheduler's stop, torchrun stopping its ranks): one line, exit 128 + 15."""
    import os
    import signal
    import time

    import lowformer.models.catalog as catalog

    def stopped(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises in this frame, long before this ends
    monkeypatch.setattr(catalog, "model_info", stopped)
    r = run_cli("info", "b0")
    assert r.exit_code == 143
    assert_one_line_error(r, "stopped by SIGTERM")


def test_unreadable_image_names_its_path_not_a_python_object(tiny, images):
    bad = images / CLASSES[0] / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    r = _validate(str(tiny), "--data", str(images))
    assert_one_line_error(r, str(bad), "--skip-bad-images")
    assert "BufferedReader" not in r.output and "<_io" not in r.output


def test_skip_bad_images_names_the_skipped_files(tiny, images):
    bad = [images / CLASSES[0] / "broken.JPEG", images / CLASSES[1] / "empty.JPEG"]
    bad[0].write_bytes(b"\xff\xd8 not really a jpeg")
    bad[1].write_bytes(b"")
    r = _validate(str(tiny), "--data", str(images), "--skip-bad-images")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "skipped 2 unreadable" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning:"), r.stderr
    assert all(str(p) in lines[0] for p in bad), lines[0]
    assert "BufferedReader" not in r.stderr


def test_non_image_input_says_its_shape(tiny, images, tmp_path):
    flat = tmp_path / "flat.onnx"
    torch.onnx.export(torch.nn.Linear(3, 1000), (torch.randn(1, 3),), str(flat), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    r = _validate(str(flat), "--data", str(images), "--reference", TINY)
    assert_one_line_error(r, "flat.onnx", "Nx3")
    assert "None" not in r.stderr


def test_validate_has_lock_timeout(tiny, images):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lowformer.artifacts import folder_lock; l = folder_lock(sys.argv[1]); "
        "l.acquire(); print('held', flush=True); time.sleep(60)"), str(tiny)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _validate(str(tiny), "--data", str(images), "--lock-timeout", "0.5")
        assert_ends_in_error(r, "locked", "--lock-timeout")
        for writer in ("export", "validate", "build-engine"):  # the README: every writer of a folder has one
            assert "--lock-timeout" in run_cli(writer, "--help").output, writer
    finally:
        holder.kill()
        holder.wait()


def test_duplicate_manifest_entry_is_validated_once_with_a_warning(tiny, images):
    m = json.loads((tiny / "manifest.json").read_text())
    m["artifacts"].append(dict(m["artifacts"][0]))
    (tiny / "manifest.json").write_text(json.dumps(m))
    r = _validate(str(tiny), "--data", str(images), "--json", "--no-record")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [a["name"] for a in doc["artifacts"]] == ["model.onnx"]
    warned = [w for w in doc["warnings"] if "model.onnx" in w and "twice" in w]
    assert len(warned) == 1 and "once" in warned[0], doc["warnings"]
    assert sum("twice" in ln for ln in r.stderr.splitlines()) == 1


def test_failed_calibration_leaves_no_empty_calib_cache(tmp_path):
    from lowformer.calibrate.cache import open_cache

    cache_dir = tmp_path / "out" / "calib-cache"
    (tmp_path / "out").mkdir()

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        open_cache(cache_dir, {"k": 1}, interrupted)
    assert not cache_dir.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_interrupted_int8_export_leaves_the_folder_as_it_was(tiny, tmp_path, monkeypatch):
    """Ctrl-C while calibrating: `error: interrupted`, exit 130, and no calib-cache/ (nor anything else) added."""
    import lowformer.calibrate.session as session
    from lowformer.data.synthetic import generate_images

    images = generate_images(tmp_path / "calib", count=8, size=72, classes=2)
    before = sorted(p.relative_to(tiny) for p in tiny.rglob("*"))

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(session, "collect_histograms", interrupted)
    r = run_cli("export", TINY, "--to", "onnx", "--int8", "--calib-data", str(images), "--calib-size", "8",
                "--image-size", str(SIZE), "--out", str(tiny))
    assert r.exit_code == 130, r.output
    assert_ends_in_error(r, "interrupted")
    assert sorted(p.relative_to(tiny) for p in tiny.rglob("*")) == before
