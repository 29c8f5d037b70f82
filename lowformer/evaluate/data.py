"""The images of an evaluation: which ones (INT8 calibration images held out, a stratified subset),
how they are decoded (one DataLoader), and what happens to those that cannot be read."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike
from lowformer.data.preprocess import Preprocessing
from lowformer.evaluate.items import Item


def default_workers(share: int = 1) -> int:
    """Decode processes of one of `share` processes on this machine (torchrun's ranks on a node)."""
    # Leave a core to the models: decoding runs beside inference, not instead of it. A rank with one
    # core of its own decodes in its own process (a worker would only take turns with it).
    cores = max(1, (os.cpu_count() or 2) // max(1, share))
    return max(1 if share == 1 else 0, min(4, cores - 1))


def calibration_images(items: Sequence[Item], data: PathLike,
                       samples: Sequence[Any]) -> List[Any]:
    """The `samples` that calibrated (or distilled) any of the artifacts (their manifests list the
    files and the folder): an INT8 model evaluated on its own calibration images would look better
    than it is."""
    used: Set[Path] = set()
    for _, entry, _ in items:
        # the calibration images, and those a distilled INT8 model trained on (--qat-data)
        seen = [entry.calibration, (entry.int8.get("qat") or {}).get("distillation_images") or {}] if entry else []
        for calib in seen:
            if calib.get("files") and calib.get("folder"):
                # resolved absolute paths: the same image whatever folder level `data` names
                used.update((Path(calib["folder"]) / f).resolve() for f in calib["files"])
    return [s for s in samples if Path(s.path).resolve() in used] if used else []


@dataclass
class Images:
    """The images one pass runs on: the listing of the data folder (`SampleList`), the images chosen
    (`samples`, in path order; `select_images` with `limit` and `seed`), the calibration images held
    out, and the preprocessing."""

    listed: Any  # lowformer.data.imagenet.SampleList
    samples: List[Any]  # Sample(path, label)
    held_out: List[Any]
    pre: Preprocessing
    limit: Optional[int] = None
    seed: int = 0


def select_images(listed: Any, items: Sequence[Item], data: PathLike, limit: Optional[int],
                  seed: int) -> Tuple[List[Any], List[Any]]:
    """(samples, held out): the images that calibrated any of `items` removed, then a stratified,
    seeded subset of `limit` of the others (all of them without a limit)."""
    from lowformer.data.imagenet import stratified_subset

    held_out = calibration_images(items, data, listed.samples)
    return stratified_subset(listed.samples, limit, seed=seed, exclude=held_out), held_out


class Batch(NamedTuple):
    """The readable images of one decoded batch: inputs (a torch tensor, N x 3 x crop x crop), labels,
    paths and their indices in the pass's samples, in sample order."""

    x: Any
    labels: np.ndarray
    paths: List[str]
    index: np.ndarray


def batches(samples: Sequence[Any], pre: Preprocessing, batch_size: int, workers: int
            ) -> Iterator[Tuple[Any, Any, Any, List[str]]]:
    """(x, y, index, errors) per batch, in order: each image decoded once, by `workers` processes."""
    import torch

    from lowformer.data.imagenet import ImageDataset

    loader = torch.utils.data.DataLoader(ImageDataset(samples, pre), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, prefetch_factor=2 if workers else None)
    yield from loader


def readable(x, y, idx, errors: Sequence[str], samples: Sequence[Any], bad: List[Dict[str, str]],
             skip_bad_images: bool) -> Optional[Batch]:
    """The readable part of a decoded batch (None when there is none). Unreadable images go into
    `bad` ({path, error}); without `skip_bad_images` the first batch that has one ends the pass."""
    import torch

    ok = np.array([not e for e in errors], dtype=bool)
    for i in np.flatnonzero(~ok):
        bad.append({"path": str(samples[int(idx[i])].path), "error": errors[i]})
    if bad and not skip_bad_images:
        shown = "; ".join(f"{b['path']} ({b['error']})" for b in bad[:3])
        raise LowformerError(f"unreadable image{'s' if len(bad) > 1 else ''}: {shown}; "
                             f"rerun with skip_bad_images to skip and list them")
    if not ok.any():
        return None
    xb = x[torch.from_numpy(ok)] if not ok.all() else x
    index = idx.numpy()[ok]
    paths = [str(samples[int(i)].path) for i in index]
    return Batch(xb, y.numpy()[ok], paths, index)
