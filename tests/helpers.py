"""Small helpers shared by tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from lowformer.models.factory import create_from_reference_config


def load_mini(path: Path) -> Tuple[torch.nn.Module, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """A reference mini network: (model with its official-key weights loaded, inputs, logits)."""
    from lowformer.models.checkpoints import load_checkpoint

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = create_from_reference_config(meta["config"], json.loads(meta["head_widths"]), int(meta["n_classes"]))
    sd = {k[len("state_dict."):]: v.float() if v.is_floating_point() else v
          for k, v in tensors.items() if k.startswith("state_dict.")}
    load_checkpoint(model, sd)
    inputs = {k: v.float() for k, v in tensors.items() if k.startswith("input_")}
    logits = {k: v.float() for k, v in tensors.items() if k.startswith("logits_")}
    return model.eval(), inputs, logits


def run_cli(*args: str):
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from lowformer.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def assert_ends_in_error(result, *fragments: str) -> None:
    """A command that showed progress first: no traceback, and its last line is the one error line."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output + result.stderr
    last = " ".join(result.stderr.strip().splitlines()[-1:])
    assert last.startswith("error:"), result.stderr[-2000:]
    for frag in fragments:
        assert frag in last, (frag, last)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr.strip()
    assert "Traceback" not in result.output + err
    assert err.startswith("error:") and "\n" not in err, err
    for frag in fragments:
        assert frag in err, err


def manifest_dict(folder):
    """The folder's manifest.json as the JSON object it is (read and checked by the typed Manifest)."""
    from lowformer.artifacts import Manifest

    return Manifest.load(folder).to_dict()


class RecordingProgress:
    """A lowformer.core.progress.Progress that records (done, total) after every step."""

    def __init__(self):
        self.seen = []

    def task(self, description, total=None, completed=0):
        import contextlib

        owner = self

        class _Task:
            done = completed

            def advance(self, n=1, status=None, description=None):
                self.done += n
                owner.seen.append((self.done, total))

        return contextlib.nullcontext(_Task())


def write_idx(path: Path, array) -> Path:
    """`array` (uint8) as an idx file (gzipped when `path` ends in .gz): Fashion-MNIST's file format."""
    import gzip

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def write_fake_fashion_mnist(source: Path, per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """The four idx.gz files of Debian's dataset-fashion-mnist, with generated 28x28 pictures (a class's
    stripe position plus noise) and labels in shuffled order, so that `prepare_fashion_mnist(dest, source)`
    writes the same layout as from the real files. Accuracy on them means nothing."""
    import numpy as np

    from lowformer.data.fashion_mnist import CLASSES

    rng = np.random.default_rng(seed)
    source = Path(source)
    source.mkdir(parents=True, exist_ok=True)
    for (images_name, labels_name), n in ((("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"), per_class),
                                          (("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"), test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), n)).astype(np.uint8)
        images = rng.integers(0, 64, (len(labels), 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 8, 4:24] = 255
        write_idx(source / images_name, images)
        write_idx(source / labels_name, labels)
    return source


def write_smooth_images(folder: Path, n: int, classes: int = 4, seed: int = 0) -> Path:
    """Smooth random RGB images (not noise: activations then look like real ones) in class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((80, 72), Image.BICUBIC)
        d = folder / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"img{i:03d}.png")
    return folder


def export_mini_b1(folder: Path, size: int):
    """A mini LowFormer (stem, stages with attention, head) as a fused FP32 ONNX: (path, preprocessing)."""
    from conftest import FIXTURES
    from lowformer.data.preprocess import lowformer_protocol
    from lowformer.export.onnx_export import export_onnx
    from lowformer.models.fusion import fuse

    model, _, _ = load_mini(FIXTURES / "mini" / "mini_b1.safetensors")
    fuse(model)
    export_onnx(model, folder / "model.onnx", size)
    return folder / "model.onnx", lowformer_protocol(size)
