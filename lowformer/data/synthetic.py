"""A small built-in image set for the demo when no real images are given.

Deterministic synthetic pictures (gradients, shapes, texture). They exercise the whole pipeline and
the parity checks (same images through two computations); accuracy on them means nothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lowformer.core.files import atomic_path, ensure_dir


def generate_images(folder: Path, count: int = 64, size: int = 256, classes: int = 8, seed: int = 0) -> Path:
    """Write `count` JPEGs into `folder/class_k/` (an ImageFolder); reuse them when already there."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    if len(list(folder.glob("class_*/*.jpg"))) == count:
        return folder
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy)[..., None]
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        arr = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (size, size, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.integers(0, size - 40, 2)
            w, h = rng.integers(20, size // 2, 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
        path = ensure_dir(folder / f"class_{i % classes}") / f"img_{i:04d}.jpg"
        with atomic_path(path) as tmp:
            img.save(tmp, format="JPEG", quality=90)
    return folder
