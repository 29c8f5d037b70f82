"""The demo's built-in images and (slow) the whole demo chain."""
import json

import pytest

from lowformer.data.imagenet import list_samples
from lowformer.data.synthetic import generate_images


def test_generated_images_are_deterministic_and_an_image_folder(tmp_path):
    a = generate_images(tmp_path / "a", count=8, size=64)
    b = generate_images(tmp_path / "b", count=8, size=64)
    files_a, files_b = sorted(a.rglob("*.jpg")), sorted(b.rglob("*.jpg"))
    assert len(files_a) == 8 and [f.read_bytes() for f in files_a] == [f.read_bytes() for f in files_b]
    assert len(list_samples(a)) == 8


@pytest.mark.slow
@pytest.mark.readme  # `make demo` is the README's first command: `make test-readme` runs this too
def test_demo_runs_end_to_end(tmp_path):
    from helpers import run_cli

    result = run_cli("demo", "--out", str(tmp_path), "--limit", "32", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "profile-b0.png").is_file()
    assert all(m["next_step"] and "build-engine" in m["next_step"] for m in summary["models"])
