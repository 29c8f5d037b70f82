"""The typed manifest: round trip, old manifests, one-line errors, and updates that never lose entries."""
from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest

from lowformer import artifacts
from lowformer.artifacts import ArtifactEntry, Manifest, ParityRecord
from lowformer.core.errors import LowformerError

OLD_MANIFEST = {  # as written by lowformer 0.1 before the typed manifest (schema 1)
    "schema": 1, "model": {"name": "b0", "timm_name": "lowformer_b0", "display": "LowFormer-B0", "num_classes": 1000},
    "checkpoint": {"path": "random-init.pt", "sha256": "random-init", "source": "random-init"},
    "input": {"name": "input", "output": "logits", "shape": [None, 3, 64, 64], "dtype": "float32"},
    "preprocessing": {"crop": 64, "resize": 68}, "created": "2026-12-01T10:00:00+00:00", "tools": {"torch": "2.14.1"},
    "artifacts": [{"path": "model.onnx", "format": "onnx", "precision": "fp32", "sha256": "ab" * 32, "opset": 17,
                   "ops": {"Conv": 3}, "parity": {"max_abs": 1e-6, "rel_l2": 1e-7, "cosine": 1.0,
                                                  "top1_agreement": 1.0, "n": 4, "thresholds": {"max_rel_l2": 1e-4},
                                                  "inputs": "random", "passed": True}}],
    "pending": ["lowformer build-engine model.onnx"],
}


def _new(name: str = "tiny") -> Manifest:
    return Manifest.new({"name": name, "num_classes": 10}, {"sha256": "x"}, {"shape": [None, 3, 8, 8]}, {})


def test_old_manifest_loads_and_writes_back_the_same_json(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(OLD_MANIFEST))
    m = Manifest.load(tmp_path)
    entry = m.entry("model.onnx")
    assert isinstance(entry.parity, ParityRecord) and entry.parity.passed and entry.fact("opset") == 17
    assert m.model_name == "b0" and m.num_classes == 1000 and m.random_weights and m.input_shape[-1] == 64
    assert m.to_dict() == OLD_MANIFEST


@pytest.mark.parametrize("broken, message", [
    ({"artifacts": None}, "'artifacts' must be a list"),
    ({"artifacts": {"a": 1}}, "'artifacts' must be a list"),
    ({"artifacts": [{"format": "onnx"}]}, "has no 'path'"),
    ({"artifacts": [{"path": "m.onnx"}]}, "has no 'format'"),
    ({"model": {"name": "b0", "num_classes": "abc"}}, "num_classes 'abc' is not a number"),
    ({"schema": 99}, "schema 99 is not supported"),
])
def test_malformed_manifests_are_one_line_errors(tmp_path, broken, message):
    (tmp_path / "manifest.json").write_text(json.dumps({**OLD_MANIFEST, **broken}))
    with pytest.raises(LowformerError, match=message):
        Manifest.load(tmp_path)


def _slow_writer(folder: str, index: int) -> None:
    def add(m: Manifest) -> None:
        time.sleep(0.05)  # a wide read-modify-write window: without the lock, writers overwrite each other
        m.upsert(ArtifactEntry(f"model_{index}.onnx", "onnx"))
    artifacts.update(folder, add)


@pytest.mark.heavy
def test_concurrent_updates_keep_every_entry(tmp_path):
    _new().save(tmp_path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_slow_writer, args=(str(tmp_path), i)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(a.path for a in Manifest.load(tmp_path).artifacts) == [f"model_{i}.onnx" for i in range(6)]


def test_update_of_a_locked_folder_times_out_in_one_line(tmp_path):
    _new().save(tmp_path)
    with artifacts.folder_lock(tmp_path):
        with pytest.raises(LowformerError, match="locked by another lowformer process"):
            artifacts.update(tmp_path, lambda m: None, timeout=0.2)
