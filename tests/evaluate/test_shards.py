"""Validation beyond one process (issue #32): `--shard K/N --records FILE` and `--merge`, and torchrun's
ranks, give the report of one process over all images (with --explain too), figure for figure; bad
shards and failing ranks are one line."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from helpers import run_cli
from lowformer.data.synthetic import generate_images
from lowformer.evaluate.shards import Shard, pass_order, shard_positions

REPO = Path(__file__).resolve().parents[2]
TINY = "timm:test_efficientnet"
RUN_ONLY = ("date", "seconds", "images_per_second")  # when and how long, not what was measured
LIMIT = 1300  # all of imagenet-val-1300 (the heavy checks; make test runs the same on generated images)
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _figures(report: Path) -> str:
    """The report's JSON without when and how long it ran: compared byte for byte."""
    d = json.loads(Path(report).read_text())
    for k in RUN_ONLY:
        d.pop(k)
    if "explain" in d:
        d["explain"].pop("date")
        d["explain"].pop("seconds")
        for a in d["explain"]["artifacts"]:
            a.pop("date")
    return json.dumps(d, indent=1)


def _ok(result) -> None:
    assert result.exit_code in (0, 1), result.output  # 1: a random-weight INT8 model may fail its gate
    assert "error:" not in result.output.replace("FAIL", ""), result.output


# --------------------------------------------------------------------------- the split itself

class _S:
    def __init__(self, label: int):
        self.label = label


def test_shards_are_whole_batches_of_every_class_alike():
    samples = [_S(c) for c in range(10) for _ in range(50)]  # full ImageNet's shape: 50 per class, in class order
    parts = [shard_positions(samples, 16, Shard(k, 3)) for k in (1, 2, 3)]
    order = pass_order(samples)
    assert sorted(p for part in parts for p in part) == list(range(500))  # every image once
    assert [p for part in parts for p in part] == order  # consecutive runs of the one-process order...
    assert len(parts[0]) % 16 == 0 and len(parts[1]) % 16 == 0  # ...cut at batch boundaries
    for part in parts:  # class-stratified: each class's share is within one image of a third
        counts = Counter(samples[p].label for p in part)
        assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert shard_positions(samples, 16, Shard()) == order


def test_shard_text_and_torchrun_environment(monkeypatch):
    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("3", "0/2", "3/2", "a/b"):
        with pytest.raises(Exception, match="K/N"):
            Shard.parse(bad)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert Shard.from_torchrun() == Shard(2, 4)


def test_a_stopped_rank_says_which(monkeypatch):
    """torchrun stops every rank (SIGTERM) once one died: whatever a rank was doing, its line names it."""
    from lowformer.commands.errors import terminate
    from lowformer.core.errors import Stopped

    with pytest.raises(Stopped) as alone:
        terminate(signal.SIGTERM, None)
    assert alone.value.code == 143 and alone.value.message == "stopped by SIGTERM"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Stopped) as rank:
        terminate(signal.SIGTERM, None)
    assert rank.value.code == 143
    assert rank.value.message == "rank 1 of 2 was stopped (exit 143): another rank failed or was killed"


# --------------------------------------------------------------------------- on real images

@pytest.fixture(scope="module")
def real_export(tmp_path_factory, imagenet_val) -> Path:
    """A tiny random-weight model's FP32 and INT8 ONNX (calibrated on 16 of the images: held out)."""
    from lowformer.export.pipeline import export_model

    out = tmp_path_factory.mktemp("shards") / "export"
    export_model(TINY, to=("onnx",), image_size=32, out=str(out), int8=True,
                 calib={"calib_data": str(imagenet_val), "calib_size": 16})
    return out


def _common(export: Path, data: Path, limit: int = LIMIT):
    return [str(export), "--data", str(data), "--limit", str(limit), "--batch-size", "16", "--workers", "0",
            "--threads", "1", "--explain"]


@pytest.fixture(scope="module")
def one_process(real_export, imagenet_val, tmp_path_factory) -> Path:
    report = tmp_path_factory.mktemp("one") / "one.json"
    _ok(run_cli("validate", *_common(real_export, imagenet_val), "--report", str(report), "--no-record"))
    return report


@pytest.mark.heavy
def test_three_shards_merged_equal_one_run_on_imagenet(real_export, imagenet_val, one_process, tmp_path):
    files = []
    for k in (1, 2, 3):
        files.append(str(tmp_path / f"shard{k}.json"))
        r = run_cli("validate", *_common(real_export, imagenet_val), "--shard", f"{k}/3", "--records", files[-1])
        assert r.exit_code == 0, r.output
        assert f"shard {k}/3:" in r.output
    merged = tmp_path / "merged.json"
    _ok(run_cli("validate", "--merge", *reversed(files), "--report", str(merged), "--no-record"))
    assert _figures(merged) == _figures(one_process)
    figures = json.loads(merged.read_text())
    assert figures["data"]["images"] == LIMIT - 16 and figures["artifacts"][1]["top1_delta_ci"] is not None


@pytest.mark.heavy
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_torchrun_two_ranks_equal_one_process_on_imagenet(real_export, imagenet_val, one_process, tmp_path):
    report = tmp_path / "ranks.json"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "lowformer", "validate",
           *_common(real_export, imagenet_val), "--report", str(report), "--no-record"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode in (0, 1), p.stderr[-3000:]
    assert (p.stdout + p.stderr).count("warning: held out 16 image(s)") == 1  # rank 0 alone speaks
    assert _figures(report) == _figures(one_process)


@pytest.mark.heavy
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_a_killed_rank_fails_the_run_without_a_report(real_export, imagenet_val, tmp_path):
    report = tmp_path / "ranks.json"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "lowformer", "validate",
           *_common(real_export, imagenet_val, 1300), "--report", str(report), "--no-record"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    victim = _wait_for_rank(p.pid, "1")
    victim.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode != 0
    assert not report.exists()
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    # stopped by torchrun, or (killed while the ranks exchange records) the gather lost it: one line either way
    assert ours and ("was stopped (exit 143): another rank failed or was killed" in ours[0]
                     or "lost the others while gathering the records" in ours[0]), err[-3000:]


def _wait_for_rank(parent: int, rank: str, busy_s: float = 2.0, timeout: float = 180.0) -> psutil.Process:
    """Rank `rank` of the torchrun `parent` once it is connected to another rank (gloo's connections: the
    group is formed, so every rank is past its start-up and has lowformer's SIGTERM handler), then
    `busy_s` CPU seconds more."""
    deadline, joined = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        for child in psutil.Process(parent).children(recursive=True):
            try:
                env = child.environ()
                if env.get("RANK") != rank:
                    continue
                if joined is None and _peers(child, int(env["MASTER_PORT"])):
                    joined = sum(child.cpu_times()[:2])
                if joined is not None and sum(child.cpu_times()[:2]) >= joined + busy_s:
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
                continue
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} did not get going")


def _peers(process: psutil.Process, store_port: int) -> list:
    """Its TCP connections to other ranks (gloo's), not to torchrun's store."""
    return [c for c in process.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED and c.raddr
            and store_port not in (c.laddr.port, c.raddr.port)]


# --------------------------------------------------------------------------- bad shards: one line each

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """16 generated images (after 8 held out) in 4 batches of 4, a tiny FP32 ONNX; shards 1-3 of 3."""
    from lowformer.export.pipeline import export_model

    root = tmp_path_factory.mktemp("small")
    images = generate_images(root / "images" / "val", count=24, size=48, classes=4)
    export_model(TINY, to=("onnx",), image_size=32, out=str(root / "export"), int8=True,
                 calib={"calib_data": str(images), "calib_size": 8})
    files = []
    for k in (1, 2, 3):
        files.append(root / f"r{k}.json")
        r = run_cli("validate", *_small_args(root, images), "--shard", f"{k}/3", "--records", str(files[-1]))
        assert r.exit_code == 0, r.output
    return root, images, files


def _small_args(root: Path, images: Path):
    return [str(root / "export"), "--data", str(images), "--batch-size", "4", "--workers", "0", "--threads", "1"]


def test_three_shards_merged_equal_one_run_and_record_the_manifest(small, tmp_path):
    root, images, files = small
    one, merged = tmp_path / "one.json", tmp_path / "merged.json"
    _ok(run_cli("validate", *_small_args(root, images), "--report", str(one), "--no-record"))
    _ok(run_cli("validate", "--merge", *map(str, reversed(files)), "--report", str(merged)))
    assert _figures(merged) == _figures(one)
    assert json.loads(merged.read_text())["artifacts"][1]["flipped"]  # INT8 of random weights: flips to compare
    entries = json.loads((root / "export" / "manifest.json").read_text())["artifacts"]
    assert [e["validation"]["images"] for e in entries] == [16, 16]  # recorded like validate


def test_explained_shards_merged_equal_one_explained_run(small, tmp_path):
    """--explain too: each shard keeps its block sums batch by batch; the merge replays them in pass order."""
    root, images, _ = small
    one, merged = tmp_path / "one.json", tmp_path / "merged.json"
    _ok(run_cli("validate", *_small_args(root, images), "--explain", "--report", str(one), "--no-record"))
    files = [str(tmp_path / f"x{k}.json") for k in (1, 2)]
    for k, f in zip((1, 2), files):
        r = run_cli("validate", *_small_args(root, images), "--explain", "--shard", f"{k}/2", "--records", f)
        assert r.exit_code == 0, r.output
    r = run_cli("validate", "--merge", *files, "--report", str(merged), "--no-record")
    _ok(r)
    assert "suggested --exclude" in r.output  # the explanation is shown as validate --explain shows it
    assert _figures(merged) == _figures(one)
    assert json.loads(merged.read_text())["explain"]["artifacts"][1]["blocks"]


@pytest.mark.heavy  # 10 s; make test's budget (the same on all of imagenet-val-1300 is heavy too)
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_torchrun_two_ranks_equal_one_process(small, tmp_path):
    root, images, _ = small
    one, ranks = tmp_path / "one.json", tmp_path / "ranks.json"
    _ok(run_cli("validate", *_small_args(root, images), "--explain", "--report", str(one), "--no-record"))
    p = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "lowformer", "validate",
                        *_small_args(root, images), "--explain", "--report", str(ranks), "--no-record"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode in (0, 1), p.stderr[-3000:]
    assert _figures(ranks) == _figures(one)


def _one_error(result, *expected: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for e in expected:
        assert e in lines[0], lines[0]


def test_missing_and_overlapping_shards_are_named(small, tmp_path):
    root, _, (r1, r2, r3) = small
    report = tmp_path / "report.json"
    _one_error(run_cli("validate", "--merge", str(r1), str(r3), "--report", str(report)), "missing shard 2/3")
    _one_error(run_cli("validate", "--merge", str(r1), str(r2), str(r2), str(r3)), "overlapping shards", "2/3")
    assert not report.exists()


def test_records_of_other_images_or_another_run_are_refused(small, tmp_path):
    root, images, (r1, r2, r3) = small
    other = tmp_path / "other.json"
    base = [str(root / "export"), "--data", str(images), "--workers", "0", "--shard", "1/3", "--records", str(other)]
    assert run_cli("validate", *base, "--batch-size", "4", "--limit", "12").exit_code == 0
    _one_error(run_cli("validate", "--merge", str(other), str(r2), str(r3)), "other images", "checksum")
    assert run_cli("validate", *base, "--batch-size", "8").exit_code == 0
    _one_error(run_cli("validate", "--merge", str(other), str(r2), str(r3)), "batch size differs")
    # other artifacts on the same images (the INT8 model alone): another manifest
    r = run_cli("validate", str(root / "export" / "model_int8.onnx"), "--data", str(images), "--workers", "0",
                "--batch-size", "4", "--shard", "1/3", "--records", str(other))
    assert r.exit_code == 0, r.output
    _one_error(run_cli("validate", "--merge", str(other), str(r2), str(r3)), "another run", "manifest checksum")


def test_changed_or_cut_records_are_refused(small, tmp_path):
    _, _, (r1, r2, r3) = small
    text = r1.read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[:len(text) // 2])
    _one_error(run_cli("validate", "--merge", str(cut), str(r2), str(r3)), "cut short")
    changed = tmp_path / "changed.json"
    d = json.loads(text)
    d["reference"]["top1"][0] = (d["reference"]["top1"][0] + 1) % 1000
    changed.write_text(json.dumps(d))
    _one_error(run_cli("validate", "--merge", str(changed), str(r2), str(r3)), "changed after it was written")


def test_usage_errors_of_the_split(small):
    root, images, (r1, _, _) = small
    r = run_cli("validate", str(root / "export"), "--data", str(images), "--shard", "1/3")
    assert r.exit_code == 2 and "--records" in r.output
    r = run_cli("validate", str(r1), "--merge", "--data", str(images))
    assert r.exit_code == 2
    r = run_cli("validate", str(root / "export"), "--data", str(images), "--shard", "2/3", "--records", "x.json",
                "--report", "r.json")
    assert r.exit_code == 2 and "merge every shard" in r.output


FAILING_RANK = """
import sys
from lowformer.core.errors import LowformerError
from lowformer.evaluate.gather import gather_records
from lowformer.evaluate.shards import Shard
from lowformer.validate import validate_shard

shard = Shard.from_torchrun()
rank, world = shard.index - 1, shard.count


def score():
    if rank == 1:
        raise LowformerError("no such folder: /data/imagenet/val (on this node)")
    return validate_shard([sys.argv[1]], sys.argv[2], f"{rank + 1}/{world}", batch_size=4, workers=0, threads=1)


try:
    gather_records(score)
except LowformerError as e:
    print(f"rank {rank}: error: {e}", flush=True)
    sys.exit(1)
print(f"rank {rank}: merged")
"""


@pytest.mark.heavy
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_a_rank_that_fails_fails_every_rank_in_one_line(small, tmp_path):
    root, images, _ = small
    script = tmp_path / "ranks.py"
    script.write_text(FAILING_RANK)
    p = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(script), str(root / "export"),
                        str(images)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode != 0 and "merged" not in p.stdout
    said = dict(re.findall(r"rank (\d): error: (.*?; no report)", p.stdout))
    # every rank that got to speak (torchrun may stop rank 0 once rank 1 has exited) says the same line
    assert said.get("1") == "rank 1 of 2 failed: no such folder: /data/imagenet/val (on this node); no report", \
        p.stdout + p.stderr[-2000:]
    assert set(said.values()) == {said["1"]}


@pytest.mark.heavy  # a torchrun of 2 ranks, ~15 s
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_a_failed_gate_under_torchrun_is_rank_0s_verdict_with_its_report(small, imagenet_val, tmp_path):
    """A gate fails (real labels; 100% agreement asked of the tiny INT8): rank 0 writes the report and exits
    1, the other rank ends with 0 once it holds the result, so torchrun never stops rank 0 mid-write; every
    error line is the gate's (none says a rank was stopped)."""
    root, _, _ = small
    report = tmp_path / "ranks.json"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "lowformer", "validate", str(root / "export"),
           "--data", str(imagenet_val), "--limit", "100", "--batch-size", "10", "--gate-agreement", "1.0",
           "--report", str(report), "--no-record"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    said = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert said and all(line.startswith("error: model_int8.onnx: top-1 agreement") for line in said), p.stderr[-3000:]
    assert json.loads(report.read_text())["passed"] is False
    # torchrun names rank 0 as the first failure (it may stop rank 1 on its way out after that)
    root_cause = p.stderr[p.stderr.index("Root Cause"):]
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: 1 ", root_cause), root_cause


def test_an_artifact_that_failed_in_one_shard_counts_only_up_to_it(small, tmp_path):
    """One process stops running an artifact at its first failure; the merge drops it from the later shards."""
    from lowformer.evaluate.records import RunRecords
    from lowformer.validate import merge_validation

    _, _, files = small
    parts = [RunRecords.read(f) for f in files]
    failed = parts[1].artifacts[1]  # shard 2: the INT8 model stopped after its first batch (4 images)
    for column in failed.columns.values():
        del column[4:]
    parts[1].errors[1] = "RuntimeError: out of memory"
    for k, part in enumerate(parts, 1):
        part.write(tmp_path / f"p{k}.json")
    result = merge_validation([tmp_path / f"p{k}.json" for k in (1, 2, 3)], record=False)
    fp32, int8 = result.artifacts
    assert fp32.images == 16 and fp32.error is None
    assert int8.images == len(parts[0].positions) + 4 and int8.error == "RuntimeError: out of memory"
    assert int8.passed is False and int8.failures == ["RuntimeError: out of memory"]
