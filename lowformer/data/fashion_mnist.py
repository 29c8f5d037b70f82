"""Debian's Fashion-MNIST (idx.gz files) as an ImageFolder of RGB PNGs: `train/` and `test/`, one
folder per class named `<label>-<name>` so that sorted folder order equals the label index.

Idempotent (a finished split carries a marker and is never rewritten) and atomic (a split is built
in a hidden temporary folder and renamed into place only when complete).

    python -m lowformer.data.fashion_mnist runs/fashion-mnist [--per-class N]

A quick end-to-end check of the training recipe on CPU: LowFormer-B0 at 32 px, 820 steps of 128
images (1.75 epochs), two 1-thread processes (faster than one 2-thread process on busy cores), the
ImageNet augmentation switched off except a mild crop; measured 86.5% top-1 on the 10,000 test
images in 23 minutes on this 2-core machine shared with other jobs:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m lowformer train b0 \
        --data runs/fashion-mnist/train --val-data runs/fashion-mnist/test --out runs/b0-fmnist \
        --epochs 2 --max-steps 820 --eval-every 2 --batch-size 64 --lr 3e-3 --image-sizes 32 \
        --eval-size 32 --workers 1 --threads 1 --mixup 0 --cutmix 0 --randaug none --drop-path 0 \
        --set 'crop_scale=[0.85,1]'
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from lowformer.core.errors import LowformerError
from lowformer.core.files import ensure_dir

DEFAULT_SOURCE = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ("0-tshirt-top", "1-trouser", "2-pullover", "3-dress", "4-coat",
           "5-sandal", "6-shirt", "7-sneaker", "8-bag", "9-ankle-boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MARKER = ".fashion-mnist.json"


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """An idx file (optionally gzipped) as a uint8 array: N x 28 x 28 images or N labels."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise LowformerError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise LowformerError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise LowformerError(f"{path} is truncated ({body.size} values for shape {dims})")
    return body.reshape(dims)


def load_split(split: str, source: Union[str, os.PathLike] = DEFAULT_SOURCE) -> Tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = _FILES[split]
    source = Path(source)
    for name in (images_name, labels_name):
        if not (source / name).is_file():
            raise LowformerError(f"Fashion-MNIST file not found: {source / name} "
                                 "(apt-get install dataset-fashion-mnist)")
    images, labels = read_idx(source / images_name), read_idx(source / labels_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise LowformerError(f"Fashion-MNIST {split} files in {source} do not match")
    return images, labels


def _selection(labels: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    """Indices kept: all, or the first `per_class` of every class in file order (a balanced subset)."""
    if per_class is None:
        return np.arange(len(labels))
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASSES))])
    return np.sort(keep)


def _is_complete(folder: Path, expected: Dict) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == expected
    except (OSError, ValueError):
        return False


def _write_split(split: str, dest: Path, source: Path, per_class: Optional[int]) -> Path:
    from PIL import Image

    final = dest / split
    images, labels = load_split(split, source)
    keep = _selection(labels, per_class)
    expected = {"split": split, "per_class": per_class, "count": int(len(keep))}
    if _is_complete(final, expected):
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}.", suffix=".tmp", dir=dest))
    try:
        for name in CLASSES:
            (tmp / name).mkdir()
        for i in keep:
            Image.fromarray(images[i]).convert("RGB").save(tmp / CLASSES[labels[i]] / f"{i:05d}.png")
        (tmp / MARKER).write_text(json.dumps(expected) + "\n")
        old = None
        if final.exists():  # an older, different or unfinished split: swap it out, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{split}.old.", dir=dest))
            os.replace(final, old / split)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_complete(final, expected):  # another process finished first with the same data
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def prepare_fashion_mnist(dest: Union[str, os.PathLike], source: Union[str, os.PathLike] = DEFAULT_SOURCE,
                          per_class: Optional[int] = None, test_per_class: Optional[int] = None) -> Path:
    """Write `dest/train` and `dest/test` (ImageFolder layout, RGB PNGs) and return `dest`.
    `per_class` / `test_per_class` keep only the first N images of each class (small test subsets)."""
    dest = ensure_dir(dest)
    for split, n in (("train", per_class), ("test", test_per_class)):
        if n is not None and n < 1:
            raise LowformerError("per-class image count must be at least 1")
        _write_split(split, dest, Path(source), n)
    return dest


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lowformer.data.fashion_mnist", description=__doc__.splitlines()[0])
    p.add_argument("dest", help="output folder (gets train/ and test/)")
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="folder with the four idx.gz files")
    p.add_argument("--per-class", type=int, default=None, help="keep only N training images per class")
    p.add_argument("--test-per-class", type=int, default=None, help="keep only N test images per class")
    args = p.parse_args(argv)
    try:
        out = prepare_fashion_mnist(args.dest, args.source, args.per_class, args.test_per_class)
    except LowformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
