"""The public Python API (lowformer/__init__.py): one function per command, on a tiny model."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import lowformer
from conftest import REPO
from lowformer.data.synthetic import generate_images

TINY = "timm:test_efficientnet"


def _python_api_blocks():
    readme = (REPO / "README.md").read_text()
    after = readme.split("<!-- python-api -->", 1)[1]
    shown = re.search(r"```py\n(.*?)```", after, re.S).group(1)
    run = re.search(r"```python\n(.*?)```", (REPO / "docs/python-api.md").read_text(), re.S).group(1)
    return shown, run


def test_readme_python_example_is_the_one_the_readme_tests_run():
    shown, run = _python_api_blocks()
    assert shown == run  # docs/python-api.md's copy runs in `make test-readme`, in its place


def test_every_command_is_a_function(tmp_path):
    images = generate_images(tmp_path / "val", count=6, size=48, classes=3)
    result = lowformer.export(TINY, "onnx", image_size=32, out=str(tmp_path / "export"))
    assert result.exit_code == 0 and [a.path for a in result.artifacts] == ["model.onnx"]
    report = lowformer.validate([str(result.out)], str(images), workers=0, record=False)
    assert report.artifacts[0].agreement == 1.0
    with lowformer.load(result.out / "model.onnx") as runner:
        assert runner.run(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 1000)
    (ex,) = lowformer.explain([str(result.out)], str(images), workers=0, record=False).artifacts
    assert ex.matched == ex.total == 7 and ex.first_diverging is None
    (timed,) = lowformer.bench([str(result.out / "model.onnx")], latency=True, iterations=3, warmup=1,
                               record=False).results
    assert timed.median_ms > 0 and timed.format == "onnx"
    (prof,) = lowformer.profile([str(result.out / "model.onnx")], iterations=2, warmup=1, record=False)
    assert prof.rows and prof.coverage > 0.9
    page = lowformer.report([result.out], tmp_path / "r.html")
    assert Path(page).read_text().count("model.onnx") >= 1
