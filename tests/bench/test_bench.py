"""Benchmarks on tiny models and artifacts: sane numbers, documented JSON, several processes."""
from __future__ import annotations

import json
import os
import warnings

import pytest

from helpers import assert_one_line_error, run_cli
from lowformer.bench import BenchResult, bench, int8_peak_gops, matmul_peak_gflops
from lowformer.core.machine import machine_info
from lowformer.core.timing import TimingStats

TINY = "timm:test_efficientnet"  # a 0.36 M-parameter timm model
SIZE = 64
RESULT_KEYS = {"target", "kind", "model", "backend", "format", "precision", "provider", "path", "image_size",
               "batch_size", "jobs", "threads", "median_ms", "mean_ms", "p10_ms", "p90_ms", "min_ms", "max_ms",
               "images_per_s", "macs_per_image", "gflops", "per_job", "warnings"}
REPORT_KEYS = {"schema", "mode", "batch_size", "iterations", "duration_s", "warmup", "jobs", "threads", "device",
               "image_size", "machine", "results"}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A tiny model exported with a dynamic batch axis (no manifest beside it)."""
    from lowformer.export.onnx_export import export_onnx
    from lowformer.models.factory import create_model

    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(create_model(TINY), path, SIZE)
    return path


def _sane(r: BenchResult, batch: int) -> None:
    assert r.batch_size == batch
    assert 0 < r.min_ms <= r.median_ms <= r.max_ms and r.min_ms <= r.p90_ms <= r.max_ms
    assert r.images_per_s == pytest.approx(batch * r.jobs * 1000.0 / r.mean_ms)
    assert r.median_ms == pytest.approx(sum(j["median_ms"] for j in r.per_job) / len(r.per_job))


def test_timing_stats():
    s = TimingStats.from_ms([4.0, 1.0, 3.0, 2.0, 10.0])
    assert (s.n, s.median_ms, s.mean_ms, s.min_ms, s.max_ms) == (5, 3.0, 4.0, 1.0, 10.0)
    assert s.p90_ms == pytest.approx(7.6)


def test_throughput_of_an_artifact(tiny_onnx):
    report = bench([str(tiny_onnx)], batch_size=4, iterations=5, warmup=1, threads=1)
    (r,) = report.results
    _sane(r, 4)
    assert (r.kind, r.backend, r.format, r.precision, r.jobs) == ("artifact", "onnxruntime", "onnx", "fp32", 1)
    assert r.macs_per_image is None and r.gflops is None  # no manifest: the model is unknown
    d = report.to_dict()
    assert set(d) == REPORT_KEYS and set(d["results"][0]) == RESULT_KEYS
    assert d["mode"] == "throughput" and json.loads(json.dumps(d)) == d


def test_latency_of_a_model_counts_macs():
    report = bench([TINY], latency=True, batch_size=64, iterations=5, warmup=1, image_size=SIZE, threads=1)
    (r,) = report.results
    _sane(r, 1)  # latency mode is batch 1 whatever --batch-size says
    assert (r.kind, r.backend, r.format) == ("model", "pytorch", "eager")
    assert r.macs_per_image and r.gflops == pytest.approx(r.macs_per_image * 2 * r.images_per_s / 1e9)


def test_optit_benchmarks_optimized_torchscript():
    report = bench([TINY], latency=True, iterations=3, warmup=1, image_size=SIZE, optit=True, threads=1)
    (r,) = report.results
    assert (r.backend, r.format) == ("torchscript", "torchscript") and "optit" in r.target
    _sane(r, 1)


@pytest.mark.heavy  # two worker jobs, ~7 s: make test's budget
def test_two_jobs_report_the_mean_of_their_medians(tiny_onnx):
    report = bench([str(tiny_onnx)], latency=True, iterations=5, warmup=1, jobs=2)
    (r,) = report.results
    assert r.jobs == 2 and len(r.per_job) == 2
    assert report.threads == max(1, (os.cpu_count() or 1) // 2)  # the cores are shared out between the jobs
    _sane(r, 1)


def test_cli_json_is_pure(tiny_onnx):
    res = run_cli("bench", str(tiny_onnx), "--latency", "--iterations", "3", "--warmup", "1", "--threads", "1",
                  "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == REPORT_KEYS and doc["results"][0]["median_ms"] > 0


def test_cli_table_on_stderr(tiny_onnx):
    res = run_cli("bench", str(tiny_onnx), "--batch-size", "2", "--iterations", "2", "--warmup", "0")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "" and "images/s" in res.stderr


def test_cli_bad_model_is_one_line():
    assert_one_line_error(run_cli("bench", "b9", "--latency"), "unknown model")
    assert_one_line_error(run_cli("bench", "missing/model.onnx"), "no such artifact")


def test_machine_and_peaks():
    m = machine_info()
    assert m["cores"] >= 1 and m["cpu"] and "torch" in m["versions"] and "onnxruntime" in m["versions"]
    assert matmul_peak_gflops(256, repeats=2) > 0
    peaks = int8_peak_gops(256, repeats=2)
    assert peaks.get("ort_matmulinteger", 0) > 0


def test_reliability_warnings_from_recorded_samples():
    """Deterministic: recorded per-call times, no timing in the test itself."""
    from lowformer.core.timing import reliability_warnings

    tight = TimingStats.from_ms([10.0, 10.1, 10.2, 9.9, 10.0, 10.3, 10.1, 10.0, 9.8, 10.2, 10.1, 10.0])
    noisy = TimingStats.from_ms([10.0] * 8 + [30.0, 32.0, 35.0, 40.0])
    assert reliability_warnings(tight, [0.5, 0.5, 0.5], 2) == []
    assert any("unsteady" in w for w in reliability_warnings(noisy, [0.5, 0.5, 0.5], 2))
    busy = reliability_warnings(tight, [3.4, 2.0, 1.0], 2)
    assert len(busy) == 1 and "load average 3.4 on 2 cores" in busy[0]
    assert any("only 3 timed calls" in w for w in reliability_warnings(TimingStats.from_ms([1, 1, 1]), None, 2))
    assert tight.p10_ms < tight.median_ms < tight.p90_ms and abs(noisy.spread - noisy.p90_ms / 10.0) < 1e-9


def test_cpu_defaults_time_by_duration_with_progress(tiny_onnx):
    from helpers import RecordingProgress

    from lowformer.bench.run import ROUNDS

    progress = RecordingProgress()
    report = bench([str(tiny_onnx)], latency=True, duration=0.3, progress=progress)
    r = report.results[0]
    assert report.iterations == 0 and report.duration_s == 0.3 and r.per_job[0]["n"] >= 10
    # one step per round of timed calls, all of them, none beyond
    assert progress.seen[-1] == (ROUNDS, ROUNDS) and (ROUNDS + 1, ROUNDS) not in progress.seen


def test_targets_are_timed_in_interleaved_rounds(tiny_onnx, monkeypatch, tmp_path):
    """Two targets through the harness (each in its own worker process): rounds alternating between them."""
    import lowformer.bench.run as run
    from helpers import RecordingProgress

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:   64000000 kB\n")  # room for both workers at once
    monkeypatch.setattr(run, "MEMINFO", str(meminfo))
    order = []
    real = run.interleaved

    def spy(jobs, *a, on_round=None, **k):
        def seen(key, bs, r, samples):
            order.append(key)
            on_round(key, bs, r, samples)
        return real(jobs, *a, on_round=seen, **k)
    monkeypatch.setattr(run, "interleaved", spy)
    progress = RecordingProgress()
    report = bench([str(tiny_onnx), TINY], latency=True, iterations=4, warmup=1, image_size=SIZE, threads=1,
                   progress=progress)
    onnx, eager = report.results
    assert (onnx.backend, eager.backend) == ("onnxruntime", "pytorch")
    assert onnx.per_job[0]["n"] == eager.per_job[0]["n"] == 4  # exactly the calls asked for
    assert order == ["0", "1", "1", "0", "0", "1", "1", "0"]  # 4 rounds of one call, the first rotating
    assert progress.seen[-1] == (8, 8)


def test_as_many_targets_are_held_at_once_as_memory_allows(monkeypatch, tmp_path):
    import lowformer.bench.run as run

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:    2000000 kB\n")  # 2.05 GB: two worker processes of 800 MB
    monkeypatch.setattr(run, "MEMINFO", str(meminfo))
    assert (run._group_size(1, "cpu"), run._group_size(2, "cpu"), run._group_size(1, "cuda")) == (2, 1, 1)
    monkeypatch.setattr(run, "MEMINFO", str(tmp_path / "absent"))
    assert run._group_size(1, "cpu") > 1000  # unknown memory (not Linux): every target at once
