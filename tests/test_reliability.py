"""Nothing lost, nothing trusted blindly (issue #21): each numbered finding of the adversarial run is a test."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_ends_in_error, assert_one_line_error, manifest_dict, run_cli
from lowformer.core.errors import LowformerError
from lowformer.export.pipeline import export_model

TINY = "timm:test_efficientnet"
SIZE = 32
CLASSES = ["n01440764", "n01443537", "n01484850"]


def _snapshot(folder: Path) -> dict:
    """Every visible file of a folder with its sha256 (hidden lock/cache files aside)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def _images(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(CLASSES):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / wnid / f"{c}_{i}.JPEG")
    return root


@pytest.fixture()
def trained(tmp_path) -> str:
    """A 'trained' checkpoint: fixed weights in a file, so exports of it are one consistent export."""
    from lowformer.models.factory import create_model

    torch.manual_seed(0)
    path = tmp_path / "trained.pt"
    torch.save(create_model(TINY).state_dict(), path)
    return str(path)


@pytest.fixture()
def exported(tmp_path, trained) -> Path:
    out = tmp_path / "out"
    export_model(TINY, to=("onnx",), checkpoint=trained, image_size=SIZE, out=str(out))
    return out


# 1. a failed or killed re-export leaves the folder as it was -------------------------------------------

def test_failed_reexport_leaves_the_folder_exactly_as_it_was(exported, trained, monkeypatch):
    before = _snapshot(exported)
    import lowformer.export.fp16 as fp16

    def broken(*a, **k):
        raise RuntimeError("converter crashed")
    monkeypatch.setattr(fp16, "convert_fp16", broken)
    with pytest.raises(RuntimeError):
        export_model(TINY, to=("onnx",), fp16=True, checkpoint=trained, image_size=SIZE, out=str(exported))
    assert _snapshot(exported) == before
    assert not [p for p in exported.iterdir() if p.name.startswith(".staging-")]


def test_killed_export_leaves_the_folder_and_the_next_run_cleans_up(exported, trained):
    before = _snapshot(exported)
    cmd = [sys.executable, "-m", "lowformer", "export", TINY, "--checkpoint", trained, "--image-size", str(SIZE),
           "--to", "onnx", "--to", "torchscript", "--fp16", "--out", str(exported)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill once it has staged a first file
        staged = [f for d in exported.glob(".staging-*") for f in d.iterdir() if f.is_file()]
        if staged:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the export ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert _snapshot(exported) == before
    assert list(exported.glob(".staging-*")), "a kill -9 leaves its staging folder (removed by the next run)"
    export_model(TINY, to=("onnx",), checkpoint=trained, image_size=SIZE, out=str(exported))
    assert not list(exported.glob(".staging-*")) and not list(exported.glob(".*.tmp"))


def test_random_weights_never_replace_a_trained_export(exported):
    before = _snapshot(exported)
    result = run_cli("export", TINY, "--image-size", str(SIZE), "--to", "torchscript", "--out", str(exported))
    assert_one_line_error(result, "exported from other weights")
    assert _snapshot(exported) == before


def test_random_reexport_reuses_the_folders_random_weights(tmp_path):
    out = tmp_path / "rnd"
    export_model(TINY, to=("onnx",), image_size=SIZE, out=str(out))
    first = manifest_dict(out)["checkpoint"]["sha256"]
    export_model(TINY, to=("torchscript",), image_size=SIZE, out=str(out))
    m = manifest_dict(out)
    assert m["checkpoint"]["sha256"] == first and {a["path"] for a in m["artifacts"]} == {"model.onnx", "model.ts"}
    assert not run_cli("validate", str(out), "--data", str(_images(tmp_path / "val")), "--workers", "0").exit_code


# 2. INT8 calibration images are held out whatever folder level --data names -------------------------------

def test_calibration_images_held_out_when_data_is_the_dataset_root(tmp_path):
    root = tmp_path / "dataset"
    _images(root / "val")
    out = tmp_path / "int8"
    export_model(TINY, to=("onnx",), int8=True, image_size=SIZE, out=str(out),
                 calib=dict(calib_data=str(root / "val"), calib_size=6, method="minmax", target="cpu"))
    from lowformer.validate import validate

    for data in (root, root / "val", str(root / "val") + "/"):
        report = validate([str(out / "model_int8.onnx")], data, record=False, workers=0)
        assert report.data["held_out_calibration_images"] == 6, data


# 3. concurrent writers lose nothing ----------------------------------------------------------------------

@pytest.mark.heavy  # two export processes, ~6 s: make test's budget
def test_two_concurrent_exports_into_one_folder_both_land(tmp_path, trained):
    out = tmp_path / "both"
    base = [sys.executable, "-m", "lowformer", "export", TINY, "--checkpoint", trained, "--image-size", str(SIZE),
            "--out", str(out)]
    procs = [subprocess.Popen(base + extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for extra in (["--to", "onnx", "--fp16"], ["--to", "torchscript"])]
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read()
    paths = {a["path"] for a in manifest_dict(out)["artifacts"]}
    assert {"model.onnx", "model_fp16.onnx", "model.ts"} <= paths


# 4. manifests are verified, not trusted ---------------------------------------------------------------------

def test_a_swapped_artifact_is_refused_in_one_line(exported, tmp_path):
    other = tmp_path / "other"  # the same network with other (random) weights: same size, other bytes
    export_model(TINY, to=("onnx",), image_size=SIZE, out=str(other))
    shutil.copy(other / "model.onnx", exported / "model.onnx")
    data = _images(tmp_path / "val")
    assert_one_line_error(run_cli("validate", str(exported), "--data", str(data)), "sha256 differs")
    assert_one_line_error(run_cli("bench", str(exported / "model.onnx"), "--iterations", "1"), "sha256 differs")


def test_missing_files_fail_unless_skipped(exported, tmp_path):
    shutil.copy(exported / "model.onnx", exported / "model_copy.onnx")
    m = json.loads((exported / "manifest.json").read_text())
    m["artifacts"].append({**m["artifacts"][0], "path": "model_gone.onnx"})
    (exported / "manifest.json").write_text(json.dumps(m))
    data = _images(tmp_path / "val")
    assert_one_line_error(run_cli("validate", str(exported), "--data", str(data)), "model_gone.onnx", "missing")
    result = run_cli("validate", str(exported), "--data", str(data), "--skip-missing", "--workers", "0")
    assert result.exit_code == 0 and "skipped model_gone.onnx" in result.stderr


@pytest.mark.parametrize("path", ["../other/model.onnx", "../../../etc/passwd", "/etc/passwd"])
def test_entries_outside_the_folder_are_refused(exported, tmp_path, path):
    m = json.loads((exported / "manifest.json").read_text())
    m["artifacts"][0]["path"] = path
    (exported / "manifest.json").write_text(json.dumps(m))
    data = _images(tmp_path / "val")
    assert_one_line_error(run_cli("validate", str(exported), "--data", str(data)), "outside")


# 5. every failure is one line ------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m["artifacts"][0].pop("path"), "has no 'path'"),
    (lambda m: m.__setitem__("artifacts", None), "'artifacts' must be a list"),
    (lambda m: m.__setitem__("artifacts", {"a": 1}), "'artifacts' must be a list"),
    (lambda m: m["model"].__setitem__("num_classes", "abc"), "not a number"),
])
def test_malformed_manifest_is_one_line(exported, tmp_path, edit, fragment):
    m = json.loads((exported / "manifest.json").read_text())
    edit(m)
    (exported / "manifest.json").write_text(json.dumps(m))
    data = _images(tmp_path / "val")
    assert_one_line_error(run_cli("validate", str(exported), "--data", str(data)), fragment)


def test_full_disk_is_one_line_and_validate_shows_its_table_first(exported, tmp_path, monkeypatch):
    import lowformer.artifacts as artifacts

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(exported / "manifest.json"))
    monkeypatch.setattr(artifacts, "write_json", full)
    result = run_cli("validate", str(exported), "--data", str(_images(tmp_path / "val")), "--workers", "0")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "reference" in result.stderr and "agree" in result.stderr  # the table came first
    assert result.stderr.strip().splitlines()[-1].startswith("error: No space left on device")
    assert run_cli("validate", str(exported), "--data", str(tmp_path / "val"), "--workers", "0",
                   "--no-record").exit_code == 0


def test_export_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import lowformer.export.staging as staging

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    monkeypatch.setattr(staging.os, "replace", full)
    assert_ends_in_error(run_cli("export", TINY, "--image-size", str(SIZE), "--out", str(tmp_path / "o")),
                         "No space left on device")


def test_report_into_a_folder_and_plot_into_proc_are_one_line(exported, tmp_path):
    data = _images(tmp_path / "val")
    assert_ends_in_error(run_cli("validate", str(exported), "--data", str(data), "--report", str(tmp_path)))
    assert_ends_in_error(run_cli("profile", str(exported / "model.onnx"), "--iterations", "1", "--warmup", "0",
                                 "--plot", "/proc/p.png"))


def test_unexpected_errors_are_one_line_with_debug_for_the_traceback(exported, monkeypatch):
    import lowformer.bench.run as bench_run

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(bench_run, "resolve_targets", bug)
    assert_one_line_error(run_cli("bench", str(exported), "--iterations", "1"), "ZeroDivisionError", "--debug")
    result = run_cli("--debug", "bench", str(exported), "--iterations", "1")
    assert isinstance(result.exception, ZeroDivisionError)


# 7. leftovers are removed ----------------------------------------------------------------------------------

def test_leftovers_of_dead_processes_are_removed_by_the_next_writer(exported, trained):
    dead = 999_999  # no such process
    (exported / f".model.onnx.{dead}.abc123.tmp").write_bytes(b"partial")
    (exported / f".staging-{dead}-xyz").mkdir()
    (exported / f".staging-{dead}-xyz" / "model.onnx").write_bytes(b"partial")
    (exported / f".notes.{os.getpid()}.keep.tmp").write_bytes(b"a live writer's file")
    export_model(TINY, to=("onnx",), checkpoint=trained, image_size=SIZE, out=str(exported))
    names = {p.name for p in exported.iterdir()}
    assert f".model.onnx.{dead}.abc123.tmp" not in names and f".staging-{dead}-xyz" not in names
    assert f".notes.{os.getpid()}.keep.tmp" in names


def test_calibration_temporaries_live_in_the_staging_folder(tmp_path, monkeypatch):
    import tempfile

    seen = []
    real = tempfile.TemporaryDirectory

    class Spy(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append(self.name)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", Spy)
    data = _images(tmp_path / "val")
    out = tmp_path / "q"
    export_model(TINY, to=("onnx",), int8=True, image_size=SIZE, out=str(out),
                 calib=dict(calib_data=str(data), calib_size=6, method="minmax", target="cpu"))
    assert seen and all(Path(s).resolve().is_relative_to(out.resolve()) for s in seen), seen
    assert not list(out.glob(".staging-*"))


def test_lock_timeout_is_one_line(exported, trained):
    from lowformer import artifacts

    with artifacts.folder_lock(exported):
        result = run_cli("export", TINY, "--checkpoint", trained, "--image-size", str(SIZE), "--out", str(exported),
                         "--lock-timeout", "0.2")
    assert_ends_in_error(result, "locked by another lowformer process")


def test_library_refusal_is_a_lowformer_error(exported):
    with pytest.raises(LowformerError, match="other weights"):
        export_model(TINY, to=("onnx",), image_size=SIZE, out=str(exported))


def test_export_temporaries_have_an_absolute_path(tmp_path, monkeypatch):
    """Compilers (AOTInductor's g++) run in other working folders: a relative --out must still work."""
    import tempfile

    from lowformer.export.pipeline import _temporaries_in

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out-rel").mkdir()
    with _temporaries_in(Path("out-rel") / "work"):
        assert Path(tempfile.gettempdir()).is_absolute()
        assert Path(tempfile.gettempdir()) == (tmp_path / "out-rel" / "work").resolve()
