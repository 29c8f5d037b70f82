"""lowformer.evaluate: `validate --explain` is one pass (issue #30): each image decoded once, both
consumers fed the same batches, and the same figures as a validation and an explanation run apart."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from helpers import manifest_dict
from lowformer.core.errors import LowformerError
from lowformer.data.imagenet import ImageDataset
from lowformer.data.synthetic import generate_images
from lowformer.evaluate import Deferred, run_pass
from lowformer.explain import prepare_explain
from lowformer.validate import validate

TINY = "timm:test_efficientnet"
ARGS = dict(workers=0, batch_size=8)  # workers=0: every decode happens in this process, where it is counted


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return generate_images(tmp_path_factory.mktemp("images") / "val", count=24, size=48, classes=4)


@pytest.fixture(scope="module")
def export(tmp_path_factory, images) -> Path:
    """FP32 ONNX, TorchScript (validated, not explainable) and an INT8 ONNX calibrated on 8 of the images."""
    from lowformer.export.pipeline import export_model

    out = tmp_path_factory.mktemp("tiny") / "export"
    result = export_model(TINY, to=("onnx", "torchscript"), image_size=32, out=str(out), int8=True,
                          calib={"calib_data": str(images), "calib_size": 8})
    assert set(result.failed) <= {"model_int8.onnx"}, result.failed  # random weights: INT8 may miss parity
    return out


@pytest.fixture()
def folder(export, tmp_path) -> Path:
    return Path(shutil.copytree(export, tmp_path / "export"))


@pytest.fixture()
def decodes(monkeypatch):
    """Every image ImageDataset decodes, in order."""
    seen = []
    original = ImageDataset.__getitem__

    def counting(self, i):
        seen.append(str(self.samples[i].path))
        return original(self, i)

    monkeypatch.setattr(ImageDataset, "__getitem__", counting)
    return seen


def _without_times(d):
    """A result's dict without what differs between two runs of the same computation (clock, date)."""
    if isinstance(d, dict):
        return {k: _without_times(v) for k, v in d.items()
                if k not in ("date", "seconds", "images_per_second", "machine")}
    if isinstance(d, list):
        return [_without_times(v) for v in d]
    return d


def test_validate_explain_decodes_each_image_once(folder, images, decodes):
    plan = prepare_explain([str(folder)], images, **ARGS)
    result = validate([str(folder)], images, record=False, explain_plan=plan, **ARGS)
    ex = result.explained()
    # 24 images, the 8 that calibrated the INT8 artifact held out: 16, each decoded once (two passes: 32)
    assert len(decodes) == 16 and set(Counter(decodes).values()) == {1}, Counter(decodes)
    assert result.data["images"] == ex.data["images"] == 16
    assert result.data["held_out_calibration_images"] == ex.data["held_out_calibration_images"] == 8
    assert sorted(a.name for a in result.artifacts) == ["model.onnx", "model.ts", "model_int8.onnx"]
    assert sorted(a.name for a in ex.artifacts) == ["model.onnx", "model_int8.onnx"]  # TorchScript: refused
    assert all(a.images == 16 for a in result.artifacts + ex.artifacts)
    assert result.to_dict()["explain"] == ex.to_dict()


def test_one_pass_gives_the_figures_of_two(folder, images):
    """The same numbers, to the last bit, as validate and explain run one after the other (the same
    batch size, as the CLI gives both)."""
    arts = [str(folder)]
    apart_v = validate(arts, images, record=False, **ARGS)
    apart_e = prepare_explain(arts, images, **ARGS).run(record=False)
    one = validate(arts, images, record=False, explain_plan=prepare_explain(arts, images, **ARGS), **ARGS)
    assert _without_times(one.to_dict()) == {**_without_times(apart_v.to_dict()),
                                             "explain": _without_times(apart_e.to_dict())}
    assert one.explained().warnings == apart_e.warnings and one.warnings == apart_v.warnings


def test_record_and_report_hold_both(folder, images, tmp_path):
    report = tmp_path / "report.json"
    plan = prepare_explain([str(folder)], images, **ARGS)
    result = validate([str(folder)], images, report=report, explain_plan=plan, **ARGS)
    saved = json.loads(report.read_text())
    assert saved["explain"]["artifacts"][0]["name"] == result.explained().artifacts[0].name
    entries = {e["path"]: e for e in manifest_dict(folder)["artifacts"]}
    assert entries["model.onnx"]["validation"]["images"] == entries["model.onnx"]["explain"]["images"] == 16
    assert "explain" not in entries["model.ts"]


def test_a_failing_explanation_keeps_the_validation(folder, images, decodes):
    plan = prepare_explain([str(folder / "model.onnx")], images, **ARGS)
    opened = plan.planned[0].open

    class Failing:
        def __init__(self):
            self.inner, self.calls, self.closed = opened(), 0, False

        def run(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("the runtime gave up")
            return self.inner.run(x)

        def original_logits(self, x):
            return self.inner.original_logits(x)

        def close(self):
            self.closed = True
            self.inner.close()

    runners = []
    plan.planned[0].open = lambda: runners.append(Failing()) or runners[-1]
    result = validate([str(folder / "model.onnx")], images, record=False, explain_plan=plan, **ARGS)
    assert result.artifacts[0].images == 24 and result.artifacts[0].error is None  # validated to the end
    assert len(decodes) == 24 and runners[0].calls == 2 and runners[0].closed  # fed nothing after it failed
    assert "explain" not in result.to_dict()
    with pytest.raises(RuntimeError, match="gave up"):
        result.explained()


def test_unreadable_images_once_for_both(folder, images, tmp_path, decodes):
    data = Path(shutil.copytree(images, tmp_path / "val"))
    bad = data / "class_0" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    plan = prepare_explain([str(folder / "model.onnx")], data, skip_bad_images=True, **ARGS)
    result = validate([str(folder / "model.onnx")], data, record=False, explain_plan=plan, skip_bad_images=True,
                      **ARGS)
    ex = result.explained()
    assert result.data["bad_images"] == ex.data["bad_images"] and len(ex.data["bad_images"]) == 1
    assert result.data["images"] == ex.data["images"] == 24  # model.onnx alone: no calibration images held out
    assert len(decodes) == 25 and set(Counter(decodes).values()) == {1}
    plan = prepare_explain([str(folder / "model.onnx")], data, **ARGS)
    with pytest.raises(LowformerError, match="broken.jpg.*skip_bad_images"):
        validate([str(folder / "model.onnx")], data, record=False, explain_plan=plan, **ARGS)


# --- the pass itself, with stand-in consumers -----------------------------------------------------------


class _Recorder:
    def __init__(self, log, name, fail_at=None):
        self.log, self.name, self.fail_at, self.n = log, name, fail_at, 0

    def open(self):
        self.log.append((self.name, "open"))

    def consume(self, batch):
        self.n += 1
        if self.n == self.fail_at:
            raise ValueError(f"{self.name} failed")
        self.log.append((self.name, len(batch.labels), tuple(batch.x.shape)))

    def status(self):
        return f"{self.name} {self.n}"

    def close(self):
        self.log.append((self.name, "close"))


def _listed(images):
    from lowformer.data.imagenet import list_samples
    from lowformer.data.preprocess import Preprocessing

    return list_samples(images).samples[:10], Preprocessing(crop=16, resize=18)


def test_run_pass_feeds_every_consumer_the_same_batches(images):
    samples, pre = _listed(images)
    log = []
    bad = run_pass(samples, pre, 4, 0, [_Recorder(log, "a"), _Recorder(log, "b")])
    assert bad == []
    assert log == [("a", "open"), ("b", "open"),
                   ("a", 4, (4, 3, 16, 16)), ("b", 4, (4, 3, 16, 16)),
                   ("a", 4, (4, 3, 16, 16)), ("b", 4, (4, 3, 16, 16)),
                   ("a", 2, (2, 3, 16, 16)), ("b", 2, (2, 3, 16, 16)),
                   ("b", "close"), ("a", "close")]


def test_a_failing_consumer_ends_the_pass_unless_deferred(images):
    samples, pre = _listed(images)
    log = []
    with pytest.raises(ValueError, match="b failed"):
        run_pass(samples, pre, 4, 0, [_Recorder(log, "a"), _Recorder(log, "b", fail_at=2)])
    assert log[-2:] == [("b", "close"), ("a", "close")] and ("a", 4, (4, 3, 16, 16)) in log
    log.clear()
    deferred = Deferred(_Recorder(log, "b", fail_at=2))
    run_pass(samples, pre, 4, 0, [_Recorder(log, "a"), deferred])
    assert isinstance(deferred.error, ValueError) and deferred.status() is None
    assert [e for e in log if e[0] == "a" and isinstance(e[1], int)] == [("a", 4, (4, 3, 16, 16))] * 2 + \
        [("a", 2, (2, 3, 16, 16))]
    assert [e for e in log if e[0] == "b" and isinstance(e[1], int)] == [("b", 4, (4, 3, 16, 16))]
    assert log[-2:] == [("b", "close"), ("a", "close")]
