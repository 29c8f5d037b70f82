"""Every example of the manual (README.md and the docs pages: conftest.DOCS) that needs no GPU runs as written, in that order, in a sandbox folder that
holds small stand-ins for what the examples name (`evalmodel.pt`, `imagenet/val`, `train/`, ...).

The GPU examples (`--to trt`, `build-engine`, `--device cuda`) must stop cleanly here: exit code 3
with the next step, or a one-line error. Long jobs get a bound appended (`BOUNDS`), nothing else is
changed. A README example this file does not know how to run fails the test, so the README cannot
grow an example that nobody runs.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import docs_text

pytestmark = pytest.mark.readme

# Appended to the examples whose defaults run for hours; click takes the last value of an option.
BOUNDS = {
    "lowformer train": ["--max-steps", "2"],
    "-m lowformer.data.fashion_mnist": ["--per-class", "13", "--test-per-class", "10"],
}
# Not run here, and why.
NOT_RUN = {
    "make demo": "the same chain as `lowformer demo`, below",
    "make test": "this is the test suite",
    "lowformer demo": "tests/test_demo.py::test_demo_runs_end_to_end (also marked readme) runs it",
    "pip install": "installs packages",
}
# Syntax lines of the command table: placeholder -> a value from the sandbox.
PLACEHOLDERS = {"P": "evalmodel.pt", "DIR": "imagenet/train-subset"}
GPU_MARKERS = ("--to trt", "build-engine", "--device cuda", ".engine")


# --------------------------------------------------------------------------- reading the README


def _clean(command: str) -> str:
    command = command.replace("\\\n", " ").replace("\\|", "|")
    command = re.sub(r"\s+", " ", command.split(" # ")[0]).strip()
    return command[2:] if command.startswith("$ ") else command


def readme_examples(text: str) -> List[Tuple[str, str]]:
    """(kind, text) in README order: 'shell' command lines, 'python' blocks."""
    found: List[Tuple[int, str, str]] = []
    for m in re.finditer(r"```(\w*)\n(.*?)```", text, flags=re.S):
        lang, body = m.group(1), m.group(2)
        if lang == "python":
            found.append((m.start(), "python", body))
            continue
        if lang not in ("", "bash"):
            continue
        for line in re.split(r"(?<!\\)\n", body):
            line = _clean(line.split("#")[0] if line.lstrip().startswith("#") else line)
            if line and re.match(r"^(\w+=\S+ )*(lowformer|make|pip|python|torchrun) ", line + " "):
                found.append((m.start(), "shell", line))
    prose = re.sub(r"```.*?```", lambda m: " " * len(m.group(0)), text, flags=re.S)
    for m in re.finditer(r"`((?:python -m )?lowformer[ .][^`]+)`", prose):
        line = _clean(m.group(1))
        if re.search(r"\b[A-Z_]+\.\.\.", line):  # `validate ARTIFACT_OR_MANIFEST... --data DIR` is syntax
            continue
        if len(line.split()) > 2 or line == "lowformer demo":  # a bare `lowformer validate` is prose
            found.append((m.start(), "shell", line))
    ordered, seen = [], set()
    for _, kind, body in sorted(found, key=lambda f: f[0]):
        if body not in seen:
            seen.add(body)
            ordered.append((kind, body))
    return ordered


def concrete(line: str, effnet_checkpoint: str) -> str:
    """The table's syntax made runnable: optional parts included, first choice taken, placeholders
    replaced; `--checkpoint ...` / `--data ...` in prose name the EfficientNet weights / ImageNet."""
    line = re.sub(r"\[(--[^\]]*)\]", r"\1", line)
    line = re.sub(r"(\w+)\|\w+", r"\1", line)
    line = line.replace("--checkpoint ...", f"--checkpoint {effnet_checkpoint}")
    line = line.replace("--data ...", "--data imagenet/val")
    return " ".join(PLACEHOLDERS.get(w, w) for w in line.split())


# --------------------------------------------------------------------------- the sandbox


def _link_images(dest: Path, classes: List[Path]) -> None:
    for cls in classes:
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        first = sorted(p for p in cls.iterdir() if p.is_file())[0]
        (dest / cls.name / first.name).symlink_to(first)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, imagenet_val, fashion_mnist, effnet_lite0_checkpoint) -> Path:
    import torch

    from lowformer.models.checkpoints import to_official_keys
    from lowformer.data.fashion_mnist import prepare_fashion_mnist
    from lowformer.models.factory import create_model

    box = tmp_path_factory.mktemp("readme")
    classes = sorted(p for p in imagenet_val.iterdir() if p.is_dir())
    _link_images(box / "imagenet" / "val", classes[:16])
    _link_images(box / "imagenet" / "train-subset", classes[16:48])
    # An official-format B1 checkpoint (random weights), as `evalmodel.pt` is in the paper's release.
    # Seeded: random weights give near-tied logits, and whether FP16 flips one of the 16 images must
    # not change from run to run.
    torch.manual_seed(0)
    torch.save({"state_dict": to_official_keys(create_model("b1").state_dict())}, box / "evalmodel.pt")
    prepare_fashion_mnist(box / "fm", fashion_mnist, per_class=13, test_per_class=2)
    (box / "train").symlink_to(box / "fm" / "train")  # the table's `train/` and `val/`
    (box / "val").symlink_to(box / "fm" / "test")
    (box / "effnet.pt").symlink_to(effnet_lite0_checkpoint)
    return box


# --------------------------------------------------------------------------- running


def _run_shell(line: str, cwd: Path) -> Tuple[int, str]:
    """The example through bash (env prefixes, torchrun and all), the venv's scripts first on PATH."""
    for key, extra in BOUNDS.items():
        if f" {key} " in f" {line} ":
            line = f"{line} {shlex.join(extra)}"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _check_gpu_example(line: str, code: int, output: str) -> None:
    assert "Traceback" not in output, f"{line}\n{output}"
    if code == 3:
        assert "next step:" in output or "target device" in output, f"{line}\n{output}"
    else:
        assert code != 0, f"{line} claimed success without a GPU:\n{output}"
        errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, f"{line}\n{output}"


@pytest.mark.slow
def test_readme_examples_run_as_written(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)  # the Python example's relative paths
    text = docs_text()
    examples = readme_examples(text)
    assert sum(kind == "shell" for kind, _ in examples) >= 20, examples
    effnet = str(sandbox / "effnet.pt")
    ran: Dict[str, int] = {}
    for kind, body in examples:
        if kind == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "readme_example"})
            ran["python block"] = 0
            continue
        if any(body.startswith(prefix) for prefix in NOT_RUN):
            continue
        line = concrete(body, effnet)
        code, output = _run_shell(line, sandbox)
        if any(marker in line for marker in GPU_MARKERS):
            _check_gpu_example(line, code, output)
        else:
            assert code == 0, f"README example failed (exit {code}): {line}\n{output[-3000:]}"
            assert "Traceback" not in output, f"{line}\n{output}"
        ran[line] = code
    # What the examples promise exists afterwards.
    assert (sandbox / "artifacts" / "b1-224" / "model_fp16.onnx").is_file()
    assert (sandbox / "artifacts" / "b1-224" / "model_int8.onnx").is_file()
    assert (sandbox / "profile.png").is_file()
    assert len(ran) >= 20, ran


def test_example_extraction_covers_the_syntax_of_the_table():
    text = ("| `lowformer models [--peers] [--json]` | x |\n| `lowformer export b1 --int8 --calib-data DIR "
            "[--target cpu\\|tensorrt]` | y |\n\n```bash\nOMP_NUM_THREADS=1 torchrun -m lowformer train b0 \\\n"
            "    --data d  # comment\n```\nsee `lowformer validate`.\n")
    lines = [body for _, body in readme_examples(text)]
    assert lines == ["lowformer models [--peers] [--json]",
                     "lowformer export b1 --int8 --calib-data DIR [--target cpu|tensorrt]",
                     "OMP_NUM_THREADS=1 torchrun -m lowformer train b0 --data d"]
    assert concrete(lines[1], "w.pt") == "lowformer export b1 --int8 --calib-data imagenet/train-subset --target cpu"
    assert concrete(lines[0], "w.pt") == "lowformer models --peers --json"
