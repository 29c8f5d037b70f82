"""Nothing passes that should not (issue #33, items 2-4): the reference checkpoint is confined and
verified like an artifact, the hash cache cannot be fooled by a same-size rewrite, and an export
keeps the records of artifacts whose bytes it did not change."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from helpers import assert_one_line_error, run_cli
from lowformer import artifacts
from lowformer.artifacts import Manifest, ValidationRecord
from lowformer.data.synthetic import generate_images
from lowformer.export.pipeline import Exporter, export_model
from lowformer.models.checkpoints import sha256_file

TINY = "timm:test_efficientnet"
SIZE = 64


def _weights(path: Path, seed: int) -> str:
    from lowformer.models.factory import create_model

    torch.manual_seed(seed)
    torch.save(create_model(TINY).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def random_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "random"
    assert not export_model(TINY, to=("onnx",), image_size=SIZE, out=str(out)).failed
    return out


@pytest.fixture()
def folder(random_export, tmp_path) -> Path:
    return Path(shutil.copytree(random_export, tmp_path / "export"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return generate_images(tmp_path_factory.mktemp("img") / "data", count=8, size=72, classes=2)


def _set_checkpoint_path(folder: Path, path: str) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["checkpoint"]["path"] = path
    (folder / "manifest.json").write_text(json.dumps(m))


def _validate(folder: Path, images: Path, *extra: str):
    # a random tiny model's logits are nearly flat: its agreement says nothing, the gate is not the point here
    return run_cli("validate", str(folder), "--data", str(images), "--workers", "0", "--no-record",
                   "--gate-agreement", "0", *extra)


# --- item 2: the reference checkpoint ----------------------------------------------------------------

def test_checkpoint_outside_the_folder_is_refused(folder, images, tmp_path):
    other = _weights(tmp_path / "other.pt", seed=1)  # other weights (another sha256), outside the folder
    _set_checkpoint_path(folder, other)
    assert_one_line_error(_validate(folder, images), "outside", "--checkpoint")
    _set_checkpoint_path(folder, "../../../../../../../../etc/passwd")
    assert_one_line_error(_validate(folder, images), "outside")


def test_checkpoint_inside_the_folder_is_verified(folder, images, tmp_path):
    _weights(folder / "random-init.pt", seed=1)  # replaced: another sha256 (and size maybe equal)
    assert_one_line_error(_validate(folder, images), "random-init.pt", "sha256")
    (folder / "random-init.pt").unlink()
    assert_one_line_error(_validate(folder, images), "random-init.pt", "missing")


def test_explicit_checkpoint_is_checked_and_said(folder, images, tmp_path):
    good = shutil.copy(folder / "random-init.pt", tmp_path / "weights.pt")
    _set_checkpoint_path(folder, "/somewhere/else/weights.pt")  # e.g. a folder from an older lowformer
    result = _validate(folder, images, "--checkpoint", str(good), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["passed"] and any("--checkpoint" in w and "weights.pt" in w for w in out["warnings"]), out["warnings"]
    other = _weights(tmp_path / "other.pt", seed=1)
    assert_one_line_error(_validate(folder, images, "--checkpoint", other), "sha256", "--reference")
    # --reference with --checkpoint: the user's choice, said in one line
    result = _validate(folder, images, "--reference", TINY, "--checkpoint", other, "--json")
    lines = [w for w in json.loads(result.stdout)["warnings"] if "--checkpoint" in w]
    assert len(lines) == 1 and "not the weights the artifacts were exported from" in lines[0], lines


def test_a_trained_checkpoint_travels_with_the_folder(tmp_path, images):
    ckpt = _weights(tmp_path / "trained.pt", seed=3)
    out = tmp_path / "out"
    assert not export_model(TINY, to=("onnx",), checkpoint=ckpt, image_size=SIZE, out=str(out)).failed
    m = Manifest.load(out)
    assert not Path(m.checkpoint["path"]).is_absolute()
    assert sha256_file(out / m.checkpoint["path"]) == m.checkpoint["sha256"] == sha256_file(ckpt)
    assert m.checkpoint["size"] == os.path.getsize(ckpt)
    os.unlink(ckpt)  # the folder is self-contained (copy it to the device)
    result = _validate(out, images)
    assert result.exit_code == 0, result.output


# --- item 3: the hash cache --------------------------------------------------------------------------

def _rewrite_in_place(path: Path) -> None:
    """Overwrite 4,000 bytes in the middle, same size, and set atime/mtime back."""
    st = path.stat()
    time.sleep(0.02)  # past the file system's clock tick
    with open(path, "r+b") as f:
        f.seek(st.st_size // 3)
        block = f.read(4000)
        f.seek(st.st_size // 3)
        f.write(bytes(255 - b for b in block))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_same_size_rewrite_with_mtime_restored_is_caught(folder, images, tmp_path):
    assert _validate(folder, images).exit_code == 0  # fills .verified.json
    assert (folder / artifacts.VERIFIED_NAME).is_file()
    _rewrite_in_place(folder / "model.onnx")
    assert_one_line_error(_validate(folder, images), "model.onnx", "sha256")
    assert_one_line_error(run_cli("report", str(folder), "--out", str(tmp_path / "r.html")), "model.onnx", "sha256")


def test_verify_full_ignores_the_cache(folder, images):
    assert _validate(folder, images, "--verify", "cache").exit_code == 0
    model = folder / "model.onnx"
    recorded = Manifest.load(folder).entry("model.onnx").sha256
    _rewrite_in_place(model)
    # a cache that lies (written by hand, or by a tool that is not lowformer): stamp of the new bytes
    st = model.stat()
    cache = json.loads((folder / artifacts.VERIFIED_NAME).read_text())
    cache["model.onnx"] = {"stat": [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino], "sha256": recorded}
    (folder / artifacts.VERIFIED_NAME).write_text(json.dumps(cache))
    assert_one_line_error(_validate(folder, images, "--verify", "full"), "model.onnx", "sha256")


def test_cache_works_on_a_read_only_folder(folder, images, monkeypatch):
    def read_only(path, data):
        raise OSError(30, "Read-only file system", str(path))

    (folder / artifacts.VERIFIED_NAME).unlink(missing_ok=True)
    monkeypatch.setattr(artifacts, "write_json", read_only)  # the cache cannot be written: hashed every time
    for _ in range(2):
        result = _validate(folder, images)
        assert result.exit_code == 0, result.output
    assert not (folder / artifacts.VERIFIED_NAME).exists()


# --- item 4: records survive an export that did not change the bytes ---------------------------------

def _concurrent_validation(monkeypatch, folder: Path, tamper_sha: bool = False) -> None:
    """While the export runs (after its artifacts are written, before its commit), another process
    records a validation and a latency on model.onnx."""
    real = Exporter.fp16_onnx

    def fp16(self):
        entry = real(self)

        def record(m: Manifest) -> None:
            e = m.entry("model.onnx")
            e.validation = ValidationRecord(date="2026-12-04", passed=True, data="imgs", images=8, top1=50.0)
            e.facts["latency"] = {"onnxruntime/b1": {"median_ms": 1.0}}
            if tamper_sha:
                e.sha256 = "0" * 64
        artifacts.update(folder, record)
        return entry

    monkeypatch.setattr(Exporter, "fp16_onnx", fp16)


def test_export_keeps_the_records_of_unchanged_artifacts(folder, monkeypatch):
    before = Manifest.load(folder).entry("model.onnx").sha256
    _concurrent_validation(monkeypatch, folder)
    assert not export_model(TINY, to=("onnx",), fp16=True, image_size=SIZE, out=str(folder)).failed
    m = Manifest.load(folder)
    e = m.entry("model.onnx")
    assert e.sha256 == before  # the export wrote the same bytes again
    assert e.validation is not None and e.validation.top1 == 50.0
    assert e.facts.get("latency") == {"onnxruntime/b1": {"median_ms": 1.0}}
    assert m.entry("model_fp16.onnx") is not None


def test_export_drops_the_records_of_changed_artifacts(folder, monkeypatch):
    _concurrent_validation(monkeypatch, folder, tamper_sha=True)  # the record is of other bytes
    assert not export_model(TINY, to=("onnx",), fp16=True, image_size=SIZE, out=str(folder)).failed
    e = Manifest.load(folder).entry("model.onnx")
    assert e.validation is None and "latency" not in e.facts


def test_a_validation_of_replaced_bytes_is_not_recorded(folder, images):
    from lowformer.validate import record_validation, validate

    result = validate([str(folder)], images, workers=0, record=False)

    def reexported(m: Manifest) -> None:  # an export landed meanwhile with other bytes
        m.entry("model.onnx").sha256 = "0" * 64
    artifacts.update(folder, reexported)
    record_validation(result)
    assert Manifest.load(folder).entry("model.onnx").validation is None


def test_a_validation_of_unchanged_bytes_is_recorded(folder, images):
    from lowformer.validate import validate

    validate([str(folder)], images, workers=0, gate_agreement=0.0)
    assert Manifest.load(folder).entry("model.onnx").validation is not None
