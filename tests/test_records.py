"""Typed manifest records (what explain, profile, bench and validate in other runtimes record) and the
trust rule of recording: a measurement goes only onto an entry that records the bytes measured."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from lowformer import artifacts
from lowformer.artifacts import (ArtifactEntry, ExplainRecord, LatencyRecord, Manifest, Measurement, ProfileRecord,
                                 ValidationRecord)
from lowformer.core.files import sha256_file

SIZE = 64
CHANGED = "changed while it was measured: not recorded"

# Records as the recorders wrote them before they were typed (keys in their order): they must read and
# write back byte for byte.
LATENCY = {"date": "2026-01-02T03:04:05+00:00", "median_ms": 1.5, "p10_ms": 1.4, "p90_ms": 1.7, "mean_ms": 1.55,
           "images_per_s": 666.6, "isa": "AVX2", "cpu": "Some CPU", "threads": None, "jobs": 1, "batch": 1,
           "backend": "onnxruntime", "precision": "fp32", "provider": "cpu", "device": "cpu",
           "load_average": [0.5, 0.4, 0.3], "warnings": ["only 5 timed calls"]}
PROFILE = {"date": "2026-01-02T03:04:05+00:00", "backend": "onnxruntime", "precision": "fp32", "batch": 1,
           "device": "cpu", "isa": "AVX2", "cpu": "Some CPU", "threads": 1, "iterations": 3, "coverage": 0.98,
           "total_ms": 2.0, "latency_median_ms": 2.1,
           "blocks": [{"key": "stem", "ms": 0.5, "share": 0.25}, {"key": "stages.0.0", "ms": 1.5, "share": 0.75}],
           "stages": [{"key": "stem", "ms": 0.5, "share": 0.25}, {"key": "stages.0", "ms": 1.5, "share": 0.75}],
           "warnings": []}
EXPLAIN = {"date": "2026-01-02T03:04:05+00:00", "images": 8, "boundaries_kept": True,
           "tolerance": {"sqnr_db": 20.0, "metric": "sqnr_db", "per_precision": {"fp32": 40.0}},
           "blocks": [{"block": "stem", "cosine": 0.99, "rel_l2": 0.01, "sqnr_db": 41.0, "max_abs": 0.1,
                       "added_db": 0.0}],
           "first_diverging": None, "flip_blocks": {}, "flips": [], "flipped": 0, "matched": 1, "total": 1,
           "unmatched": [], "suggested_exclude": [], "suggestion": {"blocks": []}, "top1": 50.0,
           "reference_top1": 50.0, "logits_max_abs_vs_artifact": 0.0, "name": "model.onnx",
           "path": "/x/model.onnx", "backend": "onnxruntime", "precision": "fp32", "runtime": None,
           "inference_precision": None, "first_nonfinite": None}


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("cls, raw", [(LatencyRecord, LATENCY), (ProfileRecord, PROFILE), (ExplainRecord, EXPLAIN)])
def test_records_round_trip_byte_for_byte(cls, raw):
    rec = cls.from_dict(raw)
    assert json.dumps(rec.to_dict()) == json.dumps(raw)  # same keys, same order, same values
    assert cls.from_dict(rec.to_dict()) == rec
    gpu = {**raw, "gpu": "NVIDIA H200"} if cls is not ExplainRecord else raw
    assert json.dumps(cls.from_dict(gpu).to_dict()) == json.dumps(gpu)  # written only when measured on a GPU


@pytest.mark.parametrize("cls, raw", [(LatencyRecord, LATENCY), (ProfileRecord, PROFILE), (ExplainRecord, EXPLAIN)])
def test_older_and_newer_records_load(cls, raw):
    old = {k: v for i, (k, v) in enumerate(raw.items()) if i % 2 == 0}  # half the keys missing
    rec = cls.from_dict(old)
    assert cls.from_dict(rec.to_dict()) == rec
    assert {k: rec.to_dict()[k] for k in old} == old
    newer = {**raw, "from_a_later_lowformer": {"x": 1}}  # unknown keys are kept, after the known ones
    assert json.dumps(cls.from_dict(newer).to_dict()) == json.dumps(newer)
    with pytest.raises(artifacts.LowformerError, match=cls.WHAT):
        cls.from_dict(["not", "a", "record"])


def test_partial_latency_defaults():
    rec = LatencyRecord.from_dict({"median_ms": 1.0})
    assert (rec.median_ms, rec.jobs, rec.isa, rec.warnings, rec.gpu) == (1.0, 1, None, [], None)


def _manifest_dict() -> dict:
    validation = ValidationRecord(date="2026-01-02", passed=True, data="imgs", images=8, top1=50.0).to_dict()
    return {"schema": 1, "model": {"name": "b0"}, "checkpoint": {}, "input": {}, "preprocessing": {},
            "created": "2026-01-01", "tools": {},
            "artifacts": [{"path": "model.onnx", "format": "onnx", "precision": "fp32", "sha256": "a" * 64,
                           "opset": 17, "profile": {"onnxruntime/fp32/b1": PROFILE, "bad": 3},
                           "latency": {"onnxruntime/fp32/b1": LATENCY}, "explain": EXPLAIN,
                           "explain_runs": {"openvino/bf16": EXPLAIN},
                           "validations": {"openvino/bf16": validation}, "size": 12}]}


def test_entry_accessors_read_typed_records_and_the_manifest_stays_byte_equal():
    raw = _manifest_dict()
    m = Manifest.from_dict(json.loads(json.dumps(raw)))
    assert json.dumps(m.to_dict()) == json.dumps(raw)
    e = m.entry("model.onnx")
    assert e.latencies() == {"onnxruntime/fp32/b1": LatencyRecord.from_dict(LATENCY)}
    assert list(e.profiles()) == ["onnxruntime/fp32/b1"]  # a value that is no record is skipped
    assert e.profiles()["onnxruntime/fp32/b1"].blocks[1]["key"] == "stages.0.0"
    assert e.explanation().charted_blocks()[0]["block"] == "stem" and e.explanation().sqnr_floor == 20.0
    assert set(e.explain_runs()) == {"openvino/bf16"}
    assert e.validation_runs()["openvino/bf16"].images == 8
    bare = ArtifactEntry(path="x.onnx", format="onnx")
    assert (bare.explanation(), bare.explain_runs(), bare.profiles(), bare.latencies(), bare.validation_runs()) \
        == (None, {}, {}, {}, {})


def test_setters_write_what_the_recorders_wrote():
    e = ArtifactEntry(path="model.onnx", format="onnx", facts={"opset": 17})
    e.set_latency("onnxruntime/fp32/b1", LatencyRecord.from_dict(LATENCY))
    e.set_profile("onnxruntime/fp32/b1", ProfileRecord.from_dict(PROFILE))
    e.set_explanation(ExplainRecord.from_dict(EXPLAIN))
    e.set_explanation(ExplainRecord.from_dict(EXPLAIN), "openvino/bf16")
    e.set_validation_run("openvino/bf16", ValidationRecord(date="d", passed=True, data="imgs", images=8))
    e.set_latency("onnxruntime/fp32/b2", LatencyRecord.from_dict(LATENCY))
    assert list(e.facts) == ["opset", "latency", "profile", "explain", "explain_runs", "validations"]
    assert list(e.facts["latency"]) == ["onnxruntime/fp32/b1", "onnxruntime/fp32/b2"]
    assert json.dumps(e.facts["latency"]["onnxruntime/fp32/b1"]) == json.dumps(LATENCY)
    assert e.facts["explain"] == e.facts["explain_runs"]["openvino/bf16"] == EXPLAIN
    assert e.facts["validations"]["openvino/bf16"]["images"] == 8


# --------------------------------------------------------------------------- the trust rule, without a model


@pytest.fixture
def small_folder(tmp_path) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"the bytes measured")
    entry = ArtifactEntry(path="model.onnx", format="onnx", sha256=sha256_file(tmp_path / "model.onnx"))
    Manifest(model={"name": "b0"}, checkpoint={}, input={}, preprocessing={}, artifacts=[entry]).save(tmp_path)
    return tmp_path


def test_record_runs_records_onto_the_bytes_measured_only(small_folder, caplog):
    path = small_folder / "model.onnx"
    sha = sha256_file(path)
    rec = LatencyRecord.from_dict(LATENCY)
    with caplog.at_level(logging.WARNING, logger="lowformer.artifacts"):
        assert artifacts.record_runs([Measurement(path, "b" * 64, "k/stale", rec)], "latency") == 0
        assert artifacts.record_runs([Measurement(path, None, "k/none", rec)], "latency") == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(str(path) in m and CHANGED in m for m in lines)
    assert "latency" not in Manifest.load(small_folder).entry("model.onnx").facts
    assert artifacts.record_runs([Measurement(path, sha, "k/b1", rec)], "latency") == 1
    assert Manifest.load(small_folder).entry("model.onnx").latencies() == {"k/b1": rec}


def test_explanation_of_replaced_bytes_is_not_recorded(small_folder, caplog):
    from lowformer.explain import ArtifactExplanation, ExplainResult, record_explanation

    path = small_folder / "model.onnx"
    manifest = Manifest.load(small_folder)
    measured = manifest.entry("model.onnx")
    ex = ArtifactExplanation(name="model.onnx", path=str(path), backend="onnxruntime", precision="fp32", images=8)
    result = ExplainResult(data={}, artifacts=[ex], warnings=[], seconds=0.0, date="d",
                           items=[((path, measured, manifest), ex)])

    def replace(m: Manifest) -> None:
        m.entry("model.onnx").sha256 = "c" * 64  # re-exported meanwhile
    artifacts.update(small_folder, replace)
    with caplog.at_level(logging.WARNING, logger="lowformer.artifacts"):
        record_explanation(result)
    assert any(CHANGED in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    assert Manifest.load(small_folder).entry("model.onnx").explanation() is None

    artifacts.update(small_folder, lambda m: setattr(m.entry("model.onnx"), "sha256", measured.sha256))
    record_explanation(result)
    assert Manifest.load(small_folder).entry("model.onnx").explanation() == ex.to_record()


# --------------------------------------------------------------------------- profile and bench, end to end


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A random LowFormer-B0 at 64 px exported to ONNX (copied per test)."""
    from lowformer.export.pipeline import export_model

    out = tmp_path_factory.mktemp("records") / "b0"
    export_model("b0", to=("onnx",), image_size=SIZE, out=str(out))
    return out


@pytest.fixture
def folder(exported, tmp_path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "b0"))


def _reexport_with_other_weights(folder: Path) -> None:
    import torch

    from lowformer.export.pipeline import export_model

    weights = torch.load(folder / "random-init.pt", map_location="cpu")
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    torch.save(other, folder.parent / "other.pt")
    export_model("b0", to=("onnx",), image_size=SIZE, out=str(folder), checkpoint=str(folder.parent / "other.pt"))


def _change_sha_under_the_lock(folder: Path) -> None:
    def change(m: Manifest) -> None:
        m.entry("model.onnx").sha256 = "d" * 64
    artifacts.update(folder, change)


def _profiles(folder: Path):
    from lowformer.profiling import profile

    return profile([str(folder)], iterations=2, warmup=0, image_size=SIZE, threads=1, record=False)


def _bench(folder: Path):
    from lowformer.bench import bench

    return bench([str(folder)], latency=True, iterations=2, warmup=0, image_size=SIZE, threads=1, record=False)


def test_unchanged_artifact_is_recorded(folder, caplog):
    from lowformer.bench.run import record_latencies
    from lowformer.profiling.api import record_profiles

    sha = Manifest.load(folder).entry("model.onnx").sha256
    reports, bench_report = _profiles(folder), _bench(folder)
    assert [r.sha256 for r in reports] == [sha] and [r.sha256 for r in bench_report.results] == [sha]
    assert "sha256" not in bench_report.to_dict()["results"][0]  # the bench JSON is as documented
    with caplog.at_level(logging.WARNING, logger="lowformer.artifacts"):
        assert record_profiles(reports) == 1 and record_latencies(bench_report) == 1
    assert not [r for r in caplog.records if CHANGED in r.getMessage()]
    entry = Manifest.load(folder).entry("model.onnx")
    assert set(entry.profiles()) == set(entry.latencies()) == {"onnxruntime/fp32/b1"}
    assert entry.latencies()["onnxruntime/fp32/b1"].median_ms == bench_report.results[0].median_ms
    assert entry.profiles()["onnxruntime/fp32/b1"].blocks


@pytest.mark.parametrize("change", [_reexport_with_other_weights, _change_sha_under_the_lock],
                         ids=["re-exported", "sha256-changed"])
def test_profile_of_replaced_bytes_is_not_recorded(folder, change, caplog):
    from lowformer.profiling.api import record_profiles

    reports = _profiles(folder)
    before = Manifest.load(folder).entry("model.onnx").sha256
    change(folder)
    assert Manifest.load(folder).entry("model.onnx").sha256 != before
    with caplog.at_level(logging.WARNING, logger="lowformer.artifacts"):
        assert record_profiles(reports) == 0
    lines = [r.getMessage() for r in caplog.records if CHANGED in r.getMessage()]
    assert len(lines) == 1 and "model.onnx" in lines[0], lines
    assert Manifest.load(folder).entry("model.onnx").profiles() == {}


@pytest.mark.heavy  # two re-exports and benches, ~15 s: make test's budget; the profile of replaced bytes runs there
@pytest.mark.parametrize("change", [_reexport_with_other_weights, _change_sha_under_the_lock],
                         ids=["re-exported", "sha256-changed"])
def test_bench_of_replaced_bytes_is_not_recorded(folder, change, caplog):
    from lowformer.bench.run import record_latencies

    report = _bench(folder)
    change(folder)
    with caplog.at_level(logging.WARNING, logger="lowformer.artifacts"):
        assert record_latencies(report) == 0
    lines = [r.getMessage() for r in caplog.records if CHANGED in r.getMessage()]
    assert len(lines) == 1 and "model.onnx" in lines[0], lines
    assert Manifest.load(folder).entry("model.onnx").latencies() == {}
